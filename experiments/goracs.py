r"""GORACS end to end: LM-rec samples → features → coreset per method → LoRA fine-tune → eval.

Launch (configs and budgets in ``experiments/configs/goracs.py``)::

    python -m experiments.goracs --config=experiments/configs/goracs.py:ml1m_cpu \
        --out_dir=runs/goracs_ml1m_cpu

Steps: sample ``pool_size`` training-pool windows (seeded), ``val_size`` validation and
``test_size`` test windows; build the LM (SmolLM2 on an accelerator, or a ``tiny_config``
model with a byte tokenizer pretrained on the catalogue titles, which no selection sample
contains as a prompt/answer pair); add LoRA; compute per-sample gradient norms (last block
``v_proj.lora_b``) and mean-pooled embeddings; select a coreset per method, budget and seed;
fine-tune LoRA on it; rank the target among ``1 + num_negatives`` candidates by answer
log-likelihood (HR@5/10, NDCG@5/10). Writes ``results.json`` and ``report.md`` (+ plots).

``--config.task=click`` runs the click (like / dislike, rating > 3) task instead: prompts
ask whether the user will like the window's next item, the answer is "Yes" / "No", GORACS
uses its label-enhanced variant (budget split by the validation positive rate, ITRA per
label), and the test metric is AUC / log-loss of ``log p(Yes) − log p(No)``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from recrl import coreset, models
from recrl.coreset import lmrec
from recrl.data import (
    LMRecConfig,
    click_dataset,
    load_movielens,
    next_item_dataset,
    prepare_lmrec,
    ranking_candidates,
    synthetic_movielens,
)
from recrl.data.lmrec import take

FLAGS = flags.FLAGS
TASK_METRICS = {"next_item": ("HR@5", "HR@10", "NDCG@5", "NDCG@10"),
                "click": ("AUC", "logloss")}
TASKS = tuple(TASK_METRICS)
PRIMARY = {"next_item": "HR@10", "click": "AUC"}  # printed per run and plotted vs budget


def task_of(cfg) -> str:
    """The config's task (``next_item`` when unset); a clear error for an unknown one."""
    task = cfg.get("task", "next_item")
    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return task


def load_data(cfg) -> tuple[Any, dict[str, Any], np.ndarray]:
    """LM-rec data with subsampled pool / val / test and the test ranking candidates.

    For the click task the texts also carry ``label`` (1 = rating > 3)."""
    d = cfg.data
    ml = (synthetic_movielens(40, 60, min_len=8, max_len=20, seed=d.seed)
          if cfg.dataset == "synthetic" else load_movielens(cfg.dataset))
    data = prepare_lmrec(ml, LMRecConfig(max_history=d.max_history, num_val=d.num_val,
                                         num_test=d.num_test))
    rng = np.random.default_rng(d.seed)
    cand_all = ranking_candidates(data, "test", num_negatives=d.num_negatives, seed=d.seed)
    sizes = {"train": d.pool_size, "val": d.val_size, "test": d.test_size}
    splits, picks = {}, {}
    for name, size in sizes.items():
        s = data.splits[name]
        num = s.target.shape[0]
        idx = np.sort(rng.choice(num, min(size, num), replace=False))
        splits[name], picks[name] = take(s, idx), idx
    data = dataclasses.replace(data, splits=splits)
    if task_of(cfg) == "click":
        texts = {k: click_dataset(data, k).select_columns(["prompt", "answer", "label"])
                 .to_dict() for k in splits}
    else:
        texts = {k: next_item_dataset(data, k).select_columns(["prompt", "answer"]).to_dict()
                 for k in splits}
    return data, texts, cand_all[picks["test"]]


def build_model(cfg):
    """``(model, encode)``: SmolLM2 + its tokenizer, or a tiny Llama + bytes, pretrained."""
    m = cfg.model
    if m.kind == "smollm2":
        path = models.smollm2_path()
        model, encode = models.load_gguf(path), models.Tokenizer.from_gguf(path).encode
    else:
        model = models.create_model(models.tiny_config(
            dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads,
            head_dim=m.dim // m.n_heads, ffn_dim=m.ffn_dim), seed=0)
        encode = lmrec.ByteTokenizer().encode
    return model, encode


def pretrain_on_titles(cfg, model, encode, titles: np.ndarray) -> list[float]:
    """Full-parameter LM training on ``"Movie: " -> title`` (disjoint from the pool)."""
    if cfg.pretrain.steps <= 0:
        return []
    t = lmrec.encode_pairs(encode, ["Movie: "] * len(titles), list(titles),
                           max_prompt=8, max_answer=cfg.model.max_answer)
    return lmrec.finetune(model, *t, steps=cfg.pretrain.steps, batch=cfg.pretrain.batch,
                          lr=cfg.pretrain.lr, lora_only=False, progress=False)


def select(method: str, n: int, seed: int, feats: dict[str, np.ndarray], cfg) -> dict:
    """One coreset: indices, seconds, and GORACS's POO trace."""
    t0 = time.perf_counter()
    num, trace = feats["pool_emb"].shape[0], []
    if method == "goracs":
        s = cfg.select
        out = coreset.select(feats["pool_emb"], feats["val_emb"], feats["grad"], n,
                             lam=s.lam, max_iters=s.max_iters, cut=s.cut,
                             max_checks=s.max_checks, epsilon=s.epsilon,
                             threshold=s.threshold, block=s.get("block", 1),
                             pool_labels=feats.get("pool_labels"),
                             val_labels=feats.get("val_labels"))
        idx, trace = out.indices, out.trace.tolist()
    elif method == "random":
        idx = coreset.random_subset(num, n, seed)
    elif method == "el2n":
        idx = coreset.el2n(feats["el2n"], n, seed)
    elif method == "grand":
        idx = coreset.grand(feats["grad"], n, seed)
    elif method == "ccs":
        idx = coreset.ccs(feats["el2n"], n, seed=seed)
    elif method == "kcenter":
        idx = coreset.kcenter_greedy(feats["pool_emb"], n, seed)
    elif method == "dealrec":
        idx = coreset.dealrec(feats["grad"], n, seed=seed)
    elif method == "full":
        idx = coreset.full_data(num)
    else:
        raise ValueError(f"unknown method {method!r}")
    return {"indices": idx, "seconds": time.perf_counter() - t0, "trace": trace}


def evaluate(model, encode, cfg, texts, cand, titles) -> dict[str, float]:
    """HR/NDCG of the target (column 0) by answer log-likelihood among the candidates; for
    the click task AUC / log-loss of ``log p("Yes") − log p("No")``."""
    prompts = texts["test"]["prompt"]
    if task_of(cfg) == "click":
        t = lmrec.encode_pairs(encode, [p for p in prompts for _ in (0, 1)],
                               ["Yes", "No"] * len(prompts), max_prompt=cfg.model.max_prompt,
                               max_answer=cfg.model.max_answer)
        ll = lmrec.answer_loglik(model, *t, batch=256).reshape(-1, 2)
        return lmrec.click_metrics(ll[:, 0] - ll[:, 1], np.asarray(texts["test"]["label"]))
    rows = [(p, titles[c]) for p, cs in zip(prompts, cand, strict=True) for c in cs]
    t = lmrec.encode_pairs(encode, [r[0] for r in rows], [r[1] for r in rows],
                           max_prompt=cfg.model.max_prompt, max_answer=cfg.model.max_answer)
    scores = lmrec.answer_loglik(model, *t, batch=256).reshape(cand.shape)
    return lmrec.ranking_metrics(scores)


def run(cfg, out_dir: str) -> dict:
    """The whole experiment; returns (and writes) the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, texts, cand = load_data(cfg)
    model, encode = build_model(cfg)
    pre = pretrain_on_titles(cfg, model, encode, data.titles)
    models.add_lora(model, rank=cfg.model.lora_rank, alpha=cfg.model.lora_alpha,
                    targets=("q_proj", "v_proj"), rngs=nnx.Rngs(0))
    mp, ma = cfg.model.max_prompt, cfg.model.max_answer
    enc = {k: lmrec.encode_pairs(encode, v["prompt"], v["answer"], max_prompt=mp,
                                 max_answer=ma) for k, v in texts.items()}
    t0 = time.perf_counter()
    f = cfg.features
    grad = lmrec.grad_norms(model, *enc["train"], batch=f.batch, chunk=f.chunk)
    nll = -lmrec.answer_loglik(model, *enc["train"]) / np.maximum(
        enc["train"][2][:, 1:].sum(1), 1)
    feats = {"grad": grad, "el2n": 1.0 - np.exp(-nll),  # EL2N proxy: 1 − p(answer)^(1/|y|)
             "pool_emb": lmrec.embeddings(model, *enc["train"][:2], batch=f.batch),
             "val_emb": lmrec.embeddings(model, *enc["val"][:2], batch=f.batch)}
    if "label" in texts["train"]:  # click task: GORACS's label-enhanced variant
        feats["pool_labels"] = np.asarray(texts["train"]["label"])
        feats["val_labels"] = np.asarray(texts["val"]["label"])
    feature_seconds = time.perf_counter() - t0
    cost = np.asarray(coreset.cost_matrix(feats["pool_emb"], feats["val_emb"], grad,
                                          cfg.select.lam))
    runs = [{"method": "base", "budget": 0, "seed": 0,
             **evaluate(model, encode, cfg, texts, cand, data.titles)}]
    for bi, n in enumerate(cfg.budgets):
        for method in cfg.methods:
            if method == "full" and bi > 0:  # full data does not depend on the budget
                continue
            # deterministic selections still vary by seed through the fine-tuning order
            for seed in cfg.seeds[:1] if method == "full" else cfg.seeds:
                sel = select(method, min(n, cost.shape[0]), seed, feats, cfg)
                idx = sel["indices"]
                m = nnx.clone(model)  # merge(split) would share (and mutate) Variables
                ft = cfg.finetune
                steps = min(ft.max_steps, max(1, ft.epochs * len(idx) // ft.batch))
                lmrec.finetune(m, *(x[idx] for x in enc["train"]), steps=steps,
                               batch=ft.batch, lr=ft.lr, seed=seed, progress=False)
                rec = {"method": method, "budget": int(n if method != "full" else len(idx)),
                       "seed": int(seed), "select_seconds": sel["seconds"],
                       "poo": coreset.poo_sinkhorn(cost, idx, epsilon=cfg.select.epsilon,
                                                   threshold=cfg.select.threshold),
                       "trace": sel["trace"], "steps": steps,
                       **evaluate(m, encode, cfg, texts, cand, data.titles)}
                if "pool_labels" in feats:
                    rec["selected_pos_rate"] = float(np.mean(feats["pool_labels"][idx]))
                    rec["val_pos_rate"] = float(np.mean(feats["val_labels"]))
                if cfg.select.exact_ot:
                    rec["exact_poo"] = coreset.poo_exact(cost, idx)
                runs.append(rec)
                key = PRIMARY[task_of(cfg)]
                print(f"{method:8s} n={rec['budget']:5d} seed={seed} {key}={rec[key]:.3f}"
                      f" POO={rec['poo']:.4f} ({sel['seconds']:.1f} s)", flush=True)
    results = {"runs": runs, "pretrain_loss": pre[-1:], "feature_seconds": feature_seconds,
               "sizes": {k: len(v["prompt"]) for k, v in texts.items()},
               "config": cfg.to_dict()}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(out, results)
    return results


def _fmt(vals: list[float]) -> str:
    return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if len(vals) > 1 else f"{vals[0]:.4f}"


def write_report(out: Path, results: dict) -> str:
    """``report.md`` (mean ± std over seeds) plus ``poo_trace.png`` and ``hr_vs_budget.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, cfg = results["runs"], results["config"]
    task = task_of(cfg)
    metrics, key = TASK_METRICS[task], PRIMARY[task]
    what = ("click task (AUC / log-loss of log p(Yes) − log p(No))" if task == "click" else
            f"candidates per test sample: {1 + cfg['data']['num_negatives']}")
    lines = [f"# GORACS report ({cfg['variant']}, {task})", "",
             f"Samples: {results['sizes']}; {what}; feature pass "
             f"{results['feature_seconds']:.1f} s.", "",
             "| method | budget | seeds | " + " | ".join(metrics)
             + " | POO (Sinkhorn) | exact POO | select s |",
             "|" + "---|" * (len(metrics) + 6)]
    keys = sorted({(r["budget"], r["method"]) for r in runs})
    for budget, method in keys:
        rs = [r for r in runs if r["method"] == method and r["budget"] == budget]
        row = [method, str(budget), str(len(rs))] + [_fmt([r[k] for r in rs]) for k in metrics]
        for k in ("poo", "exact_poo", "select_seconds"):
            row.append(_fmt([r[k] for r in rs]) if k in rs[0] else "–")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "![POO over refinement](poo_trace.png)", "",
              f"![{key} vs budget](hr_vs_budget.png)", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    fig, ax = plt.subplots(figsize=(5, 3))
    for r in runs:
        if r.get("trace"):
            ax.plot(r["trace"], label=f"n={r['budget']} seed={r['seed']}")
    ax.set_xlabel("accepted swap"), ax.set_ylabel("POO (Sinkhorn)"), ax.legend(fontsize=6)
    fig.tight_layout(), fig.savefig(out / "poo_trace.png", dpi=100), plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    for method in sorted({r["method"] for r in runs} - {"base", "full"}):
        bs = sorted({r["budget"] for r in runs if r["method"] == method})
        ax.plot(bs, [np.mean([r[key] for r in runs if r["method"] == method
                              and r["budget"] == b]) for b in bs], "o-", label=method)
    ax.set_xscale("log"), ax.set_xlabel("budget"), ax.set_ylabel(key), ax.legend(fontsize=6)
    fig.tight_layout(), fig.savefig(out / "hr_vs_budget.png", dpi=100), plt.close(fig)
    return text


def main(argv: list[str]) -> None:
    del argv
    jnp.zeros(())
    run(FLAGS.config, FLAGS.out_dir)
    print((Path(FLAGS.out_dir) / "report.md").read_text())


if __name__ == "__main__":
    # flags are defined here, not at import: launchers share one flag registry in a process
    config_flags.DEFINE_config_file("config", "experiments/configs/goracs.py:ml1m_cpu",
                                    "GORACS experiment config.")
    flags.DEFINE_string("out_dir", "runs/goracs", "Output directory.")
    app.run(main)
