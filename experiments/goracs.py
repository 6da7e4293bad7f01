r"""GORACS end to end: LM-rec samples → features → coreset per method → LoRA fine-tune → eval.

Launch (configs and budgets in ``experiments/configs/goracs.py``)::

    python -m experiments.goracs --config=goracs.py:ml1m_cpu \
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
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from experiments.configs import validate as config_check
from recrl import coreset, models, parallel, rundir
from recrl.checkpoint import Checkpointer
from recrl.coreset import lmrec
from recrl.data import (
    LMRecConfig,
    click_dataset,
    fetch,
    load_movielens,
    next_item_dataset,
    prepare_lmrec,
    ranking_candidates,
    seen_before_mask,
    synthetic_movielens,
)
from recrl.data.lmrec import take

FLAGS = flags.FLAGS
TASK_METRICS = {"next_item": ("HR@5", "HR@10", "NDCG@5", "NDCG@10"),
                "click": ("AUC", "logloss")}
TASKS = tuple(TASK_METRICS)
PRIMARY = {"next_item": "HR@10", "click": "AUC"}  # printed per run and plotted vs budget


#: the paper's λ per task (next item: n = 1024, λ = 0.1; click: n = 64, λ = 0.5)
PAPER_LAMBDA = {"next_item": 0.1, "click": 0.5}


def lam_of(cfg) -> float:
    """``select.lam``, or the paper's value for the task when it is None."""
    lam = cfg.select.get("lam")
    return PAPER_LAMBDA[task_of(cfg)] if lam is None else float(lam)


def task_of(cfg) -> str:
    """The config's task (``next_item`` when unset); a clear error for an unknown one."""
    task = cfg.get("task", "next_item")
    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return task


def load_data(cfg) -> tuple[Any, dict[str, Any], np.ndarray, Any]:
    """LM-rec data with subsampled pool / val / test, the test ranking candidates, and
    ``(targets, exclude)`` of the first ``eval.full_catalogue`` test samples for
    full-catalogue ranking (None when off).

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
    full = None
    if task_of(cfg) == "next_item" and cfg.get("eval", {}).get("full_catalogue", 0) > 0:
        k = min(cfg.eval.full_catalogue, splits["test"].target.shape[0])
        full = (splits["test"].target[:k], seen_before_mask(data, "test")[:k])
    return data, texts, cand_all[picks["test"]], full


MODEL_KINDS = ("smollm2", "tiny", "tiny_bpe")
TITLE_PROMPT = "Movie: "  # pretraining text of the CPU models: "Movie: <title>"


def build_model(cfg, corpus: list[str] | None = None):
    """``(model, encode)``: SmolLM2 + its tokenizer; or a ``tiny_config`` Llama with UTF-8
    bytes (``tiny``) or with SmolLM2's BPE restricted to the ids ``corpus`` uses
    (``tiny_bpe``, :class:`~recrl.coreset.lmrec.CompactTokenizer`)."""
    m = cfg.model
    if m.kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {m.kind!r}; known: {', '.join(MODEL_KINDS)}")
    if m.kind == "smollm2":
        path = models.smollm2_path()
        return models.load_gguf(path), models.Tokenizer.from_gguf(path).encode
    if m.kind == "tiny_bpe":
        tok = lmrec.CompactTokenizer(models.Tokenizer.from_gguf(models.smollm2_path()).encode,
                                     corpus or [TITLE_PROMPT])
        encode, vocab = tok.encode, tok.vocab_size
    else:
        encode, vocab = lmrec.ByteTokenizer().encode, 256
    model = models.create_model(models.tiny_config(
        vocab_size=vocab, dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads,
        n_kv_heads=m.n_kv_heads, head_dim=m.dim // m.n_heads, ffn_dim=m.ffn_dim), seed=0)
    return model, encode


def pretrain_on_titles(cfg, model, encode, titles: np.ndarray, cache_key: str = "",
                       mesh=None) -> list[float]:
    """Full-parameter LM training on ``"Movie: " -> title`` (disjoint from the pool).

    With ``pretrain.cache`` the trained weights are kept under
    ``$RECRL_DATA/goracs_base/<hash of config, vocabulary and titles>`` and reused by the
    next run with the same settings (the saved losses come back with them)."""
    p = cfg.pretrain
    if p.steps <= 0:
        return []
    ckpt = None
    if p.get("cache", False):
        key = hashlib.sha256(json.dumps(
            [cfg.model.to_dict(), p.to_dict(), cache_key, list(map(str, titles))],
            sort_keys=True).encode()).hexdigest()[:16]
        ckpt = Checkpointer(fetch.cache_root() / "goracs_base" / key, max_to_keep=1)
        if ckpt.latest_step() is not None:
            meta = models.restore_model(ckpt, model)
            ckpt.close()
            print(f"pretrained base restored from {ckpt.directory}", flush=True)
            return list(meta.get("losses", []))
    t = lmrec.encode_pairs(encode, [TITLE_PROMPT] * len(titles), list(titles),
                           max_prompt=8, max_answer=cfg.model.max_answer)
    losses = lmrec.finetune(model, *t, steps=p.steps, batch=p.batch, lr=p.lr,
                            lora_only=False, progress=True, desc="pretrain", mesh=mesh)
    if ckpt is not None:
        models.save_model(ckpt, p.steps, model, meta={"losses": losses[-50:]})
        ckpt.close()
    return losses


def budgets_of(cfg, pool: int) -> list[int]:
    """Sorted distinct budgets: ``budgets`` plus ``round(f · pool)`` for each of
    ``budget_fractions``, each clipped to ``[1, pool]``."""
    got = [int(b) for b in cfg.budgets] + [round(f * pool)
                                           for f in cfg.get("budget_fractions", ())]
    if not got:
        raise ValueError("no budgets: set budgets and / or budget_fractions")
    return sorted({min(max(b, 1), pool) for b in got})


#: methods whose selection does not depend on the seed (the seed still orders fine-tuning)
DETERMINISTIC = ("goracs", "el2n", "grand", "full")


def select(method: str, n: int, seed: int, feats: dict[str, np.ndarray], cfg) -> dict:
    """One coreset: indices, seconds, and GORACS's POO trace."""
    t0 = time.perf_counter()
    num, trace = feats["pool_emb"].shape[0], []
    if method == "goracs":
        s = cfg.select
        out = coreset.select(feats["pool_emb"], feats["val_emb"], feats["grad"], n,
                             lam=lam_of(cfg), max_iters=s.max_iters, cut=s.cut,
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
        d = cfg.get("dealrec", {})
        idx = coreset.dealrec(feats["grad"], n, influence=feats.get("influence"),
                              gamma=d.get("gamma", 1.0), seed=seed)
    elif method == "full":
        idx = coreset.full_data(num)
    else:
        raise ValueError(f"unknown method {method!r}")
    return {"indices": idx, "seconds": time.perf_counter() - t0, "trace": trace}


def evaluate(model, encode, cfg, texts, cand, titles, full=None) -> dict[str, float]:
    """HR/NDCG of the target (column 0) by answer log-likelihood among the candidates (and,
    with ``full = (targets, exclude)``, over the whole catalogue for the first
    ``len(targets)`` test prompts: keys ``full/HR@10`` …); for the click task AUC /
    log-loss of ``log p("Yes") − log p("No")``."""
    prompts = texts["test"]["prompt"]
    if task_of(cfg) == "click":
        t = lmrec.encode_pairs(encode, [p for p in prompts for _ in (0, 1)],
                               ["Yes", "No"] * len(prompts), max_prompt=cfg.model.max_prompt,
                               max_answer=cfg.model.max_answer)
        ll = lmrec.answer_loglik(model, *t, batch=256).reshape(-1, 2)
        return lmrec.click_metrics(ll[:, 0] - ll[:, 1], np.asarray(texts["test"]["label"]))
    kw = dict(max_prompt=cfg.model.max_prompt, max_answer=cfg.model.max_answer,
              progress=False)
    ranks = lmrec.target_ranks(lmrec.catalogue_scores(model, encode, prompts, titles, cand,
                                                      **kw))
    out: dict[str, Any] = lmrec.rank_metrics(ranks)
    out["ranks"] = ranks.tolist()  # per prompt, for paired comparisons in the report
    if full is not None:
        target, exclude = full
        scores = lmrec.catalogue_scores(model, encode, prompts[:len(target)], titles, **kw)
        out.update({f"full/{k}": v for k, v in
                    lmrec.catalogue_metrics(scores, target, exclude).items()})
    return out


def run(cfg, out_dir: str) -> dict:
    """The whole experiment; returns (and writes) the results.

    Resumable: each finished (method, budget, seed) run is kept in
    ``out_dir/runs/<method>_n<budget>_s<seed>.json`` and reused by a rerun (a config change
    that affects them stops the rerun, see ``recrl.rundir``)."""
    mesh = parallel.startup(cfg)  # jax.distributed first, then the global mesh
    out = config_check.preflight(cfg, out_dir, config_check.validate_goracs)
    if parallel.is_writer():
        rundir.guard_stages(out, cfg, config_check.GORACS_STAGES, config_check.GORACS_FREE,
                            retrain=cfg.get("retrain_changed", False))
    task = task_of(cfg)
    data, texts, cand, full = parallel.writer_first("data", lambda: load_data(cfg))
    corpus = [TITLE_PROMPT, *map(str, data.titles),
              *(t for v in texts.values() for t in (*v["prompt"], *v["answer"]))]
    model, encode = build_model(cfg, corpus)
    pre = pretrain_on_titles(cfg, model, encode, data.titles,
                             cache_key=f"{cfg.dataset}:{len(corpus)}:{hash_texts(corpus)}",
                             mesh=mesh)
    models.add_lora(model, rank=cfg.model.lora_rank, alpha=cfg.model.lora_alpha,
                    targets=("q_proj", "v_proj"), rngs=nnx.Rngs(0))
    mp, ma = cfg.model.max_prompt, cfg.model.max_answer
    enc = {k: lmrec.encode_pairs(encode, v["prompt"], v["answer"], max_prompt=mp,
                                 max_answer=ma) for k, v in texts.items()}
    t0 = time.perf_counter()
    f = cfg.features
    feats: dict[str, np.ndarray] = {}
    dl = cfg.get("dealrec", {})
    if "dealrec" in cfg.methods and dl.get("influence", False):
        vec = lmrec.grad_vectors(model, *enc["train"], batch=f.batch, chunk=f.chunk)
        grad = np.linalg.norm(vec, axis=1).astype(np.float32)
        feats["influence"] = coreset.influence_scores(vec, damping=dl.get("damping", 0.01))
        del vec
    else:
        grad = lmrec.grad_norms(model, *enc["train"], batch=f.batch, chunk=f.chunk)
    nll = -lmrec.answer_loglik(model, *enc["train"]) / np.maximum(
        enc["train"][2][:, 1:].sum(1), 1)
    feats.update({"grad": grad, "el2n": 1.0 - np.exp(-nll),  # EL2N proxy (see docs)
                  "pool_emb": lmrec.embeddings(model, *enc["train"][:2], batch=f.batch),
                  "val_emb": lmrec.embeddings(model, *enc["val"][:2], batch=f.batch)})
    if "label" in texts["train"]:  # click task: GORACS's label-enhanced variant
        feats["pool_labels"] = np.asarray(texts["train"]["label"])
        feats["val_labels"] = np.asarray(texts["val"]["label"])
    feature_seconds = time.perf_counter() - t0
    cost = np.asarray(coreset.cost_matrix(feats["pool_emb"], feats["val_emb"], grad,
                                          lam_of(cfg)))
    pool = cost.shape[0]
    t0 = time.perf_counter()
    runs = [{"method": "base", "budget": 0, "seed": 0,
             **evaluate(model, encode, cfg, texts, cand, data.titles, full)}]
    eval_seconds = time.perf_counter() - t0
    budgets = budgets_of(cfg, pool)
    # the data-parallel fine-tune splits each minibatch over the mesh: refuse up front
    ft = cfg.finetune
    parallel.check_divisible({"finetune.batch (or the smallest budget)":
                              min(ft.batch, *budgets)}, mesh)
    parallel.log_batch("fine-tune", (min(ft.batch, *budgets), mp + ma), mesh)
    key = PRIMARY[task]
    done: dict[tuple[str, int], tuple[dict, dict]] = {}  # deterministic selections, reused
    for bi, n in enumerate(budgets):
        for method in cfg.methods:
            if method == "full" and bi > 0:  # full data does not depend on the budget
                continue
            # deterministic selections still vary by seed through the fine-tuning order
            for seed in cfg.seeds[:1] if method == "full" else cfg.seeds:
                rec_path = out / "runs" / f"{method}_n{n}_s{seed}.json"
                if rec_path.exists():  # finished by an earlier (interrupted) invocation
                    runs.append(json.loads(rec_path.read_text()))
                    continue
                if (method, n) in done:
                    sel, quality = done[(method, n)]
                else:
                    sel = select(method, n, seed, feats, cfg)
                    quality = {"poo": coreset.poo_sinkhorn(
                        cost, sel["indices"], epsilon=cfg.select.epsilon,
                        threshold=cfg.select.threshold)}
                    if cfg.select.exact_ot:
                        quality["exact_poo"] = coreset.poo_exact(cost, sel["indices"])
                    if method in DETERMINISTIC:
                        done[(method, n)] = sel, quality
                idx = sel["indices"]
                m = nnx.clone(model)  # merge(split) would share (and mutate) Variables
                ft = cfg.finetune
                steps = min(ft.max_steps, max(1, ft.epochs * len(idx) // ft.batch))
                lmrec.finetune(m, *(x[idx] for x in enc["train"]), steps=steps,
                               batch=ft.batch, lr=ft.lr, seed=seed, progress=False, mesh=mesh)
                rec = {"method": method, "budget": int(n if method != "full" else len(idx)),
                       "seed": int(seed), "select_seconds": sel["seconds"], **quality,
                       "trace": sel["trace"], "steps": steps,
                       **evaluate(m, encode, cfg, texts, cand, data.titles, full)}
                if "pool_labels" in feats:
                    rec["selected_pos_rate"] = float(np.mean(feats["pool_labels"][idx]))
                    rec["val_pos_rate"] = float(np.mean(feats["val_labels"]))
                runs.append(rec)
                rec_path.parent.mkdir(exist_ok=True)
                rec_path.with_suffix(".tmp").write_text(json.dumps(rec, default=float))
                rec_path.with_suffix(".tmp").replace(rec_path)
                print(f"{method:8s} n={rec['budget']:5d} seed={seed} {key}={rec[key]:.3f}"
                      f" POO={rec['poo']:.4f} ({sel['seconds']:.1f} s)", flush=True)
                write_results(out, runs, pre, feature_seconds, eval_seconds, texts, cfg)
    results = write_results(out, runs, pre, feature_seconds, eval_seconds, texts, cfg)
    if parallel.is_writer():
        write_report(out, results)
    return results


def hash_texts(texts: list[str]) -> str:
    """A short content hash of a list of strings (keys the pretrained-base cache)."""
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]


def write_results(out: Path, runs, pre, feature_seconds, eval_seconds, texts, cfg) -> dict:
    """``results.json`` (rewritten after every run, via a temporary file: an interrupted
    run keeps what it finished)."""
    results = {"runs": runs, "pretrain_loss": list(pre[-1:]),
               "feature_seconds": feature_seconds, "eval_seconds": eval_seconds,
               "sizes": {k: len(v["prompt"]) for k, v in texts.items()},
               "config": cfg.to_dict()}
    if not parallel.is_writer():  # only process 0 writes files
        return results
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(out / "results.json")
    return results


def _fmt(vals: list[float]) -> str:
    return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if len(vals) > 1 else f"{vals[0]:.4f}"


def versus_random(runs: list[dict], key: str, num_test: int) -> list[str]:
    """Per budget: does GORACS beat random on ``key``, beyond test-set and seed noise?

    With per-prompt ranks (``HR@K`` keys) the comparison is paired: per test prompt the
    seed-mean hit of each method, the mean difference and its 95 % interval
    (``1.96 · std / √N``). Without them (older results, or other metrics) an unpaired
    interval: the seed-mean difference ± 1.96 · √(p₁(1−p₁) + p₂(1−p₂)) / √N (a conservative
    binomial bound for hit rates). "beats" / "worse" only when the interval excludes 0.
    """
    out = [f"GORACS vs random on {key} (mean over seeds; 95 % interval over the {num_test} "
           "test prompts):", ""]
    k = int(key.split("@")[1]) if key.startswith("HR@") else None
    for b in sorted({r["budget"] for r in runs if r["method"] == "goracs"}):
        g = [r for r in runs if r["method"] == "goracs" and r["budget"] == b]
        rnd = [r for r in runs if r["method"] == "random" and r["budget"] == b]
        if not rnd:
            continue
        mg, mr = np.mean([r[key] for r in g]), np.mean([r[key] for r in rnd])
        if k is not None and all("ranks" in r for r in g + rnd):
            hits = [np.mean([np.asarray(r["ranks"]) < k for r in rs], 0) for rs in (g, rnd)]
            diff = hits[0] - hits[1]
            d, half, how = diff.mean(), 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)), "paired"
        else:
            d = mg - mr
            half = 1.96 * np.sqrt(mg * (1 - mg) + mr * (1 - mr)) / np.sqrt(num_test)
            how = "unpaired"
        verdict = ("beats random" if d - half > 0 else "worse than random" if d + half < 0
                   else "no significant difference")
        out.append(f"- n = {b}: GORACS {mg:.4f} vs random {mr:.4f}: {d:+.4f} ± {half:.4f} "
                   f"({how}): **{verdict}**")
    return out


def write_report(out: Path, results: dict) -> str:
    """``report.md`` (mean ± std over seeds) plus ``poo_trace.png`` and ``hr_vs_budget.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, cfg = results["runs"], results["config"]
    task = task_of(cfg)
    metrics, key = TASK_METRICS[task], PRIMARY[task]
    metrics = (*metrics, *(k for k in ("full/HR@10", "full/NDCG@10") if k in runs[0]))
    pool = results["sizes"]["train"]
    what = ("click task (AUC / log-loss of log p(Yes) − log p(No))" if task == "click" else
            f"candidates per test sample: {1 + cfg['data']['num_negatives']}"
            + (f"; full/ = the whole catalogue, first {cfg['eval']['full_catalogue']} test "
               "samples, the user's earlier items excluded" if "full/HR@10" in runs[0]
               else ""))
    lines = [f"# GORACS report ({cfg['variant']}, {task})", "",
             f"Samples: {results['sizes']}; {what}; model {cfg['model']['kind']}; feature pass "
             f"{results['feature_seconds']:.1f} s; one evaluation "
             f"{results.get('eval_seconds', float('nan')):.1f} s. Mean ± std over seeds.", "",
             "| method | budget (% of pool) | seeds | " + " | ".join(metrics)
             + " | POO (Sinkhorn) | exact POO | select s |",
             "|" + "---|" * (len(metrics) + 6)]
    keys = sorted({(r["budget"], r["method"]) for r in runs})
    for budget, method in keys:
        rs = [r for r in runs if r["method"] == method and r["budget"] == budget]
        row = [method, f"{budget} ({100 * budget / pool:.3g} %)", str(len(rs))]
        row += [_fmt([r[k] for r in rs]) for k in metrics]
        for k in ("poo", "exact_poo", "select_seconds"):
            row.append(_fmt([r[k] for r in rs]) if k in rs[0] else "–")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", *versus_random(runs, key, results["sizes"]["test"]), "",
              "![POO over refinement](poo_trace.png)", "",
              f"![{key} vs budget](hr_vs_budget.png)", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    fig, ax = plt.subplots(figsize=(5, 3))
    drawn = set()
    for r in runs:  # GORACS is deterministic: one trace per budget
        if r.get("trace") and r["budget"] not in drawn:
            drawn.add(r["budget"])
            ax.plot(r["trace"], label=f"n={r['budget']}")
    ax.set_xlabel("accepted swap"), ax.set_ylabel("POO (Sinkhorn)"), ax.legend(fontsize=6)
    fig.tight_layout(), fig.savefig(out / "poo_trace.png", dpi=100), plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.3))
    for method in sorted({r["method"] for r in runs} - {"base", "full"}):
        bs = sorted({r["budget"] for r in runs if r["method"] == method})
        vals = [[r[key] for r in runs if r["method"] == method and r["budget"] == b]
                for b in bs]
        ax.errorbar(bs, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals],
                    fmt="o-", capsize=2, lw=2.5 if method == "goracs" else 1, label=method)
    for method, style in (("base", "--"), ("full", ":")):
        ref = [r[key] for r in runs if r["method"] == method]
        if ref:
            ax.axhline(np.mean(ref), color="k", ls=style, lw=1,
                       label="no fine-tuning" if method == "base" else "full data")
    ax.set_xscale("log"), ax.set_xlabel("budget"), ax.set_ylabel(key), ax.legend(fontsize=6)
    fig.tight_layout(), fig.savefig(out / "hr_vs_budget.png", dpi=100), plt.close(fig)
    return text


# --- decisive protocol (docs/goracs.md, "decisive_cpu") -------------------------------

def load_decisive_data(cfg) -> tuple[Any, dict[str, Any], np.ndarray]:
    """Per-user leave-last-out data: a seeded ``pool_size`` sample of the training windows,
    every validation-user window, every test-user window, and the test candidates."""
    from recrl.data import user_holdout_split

    d = cfg.data
    ml = (synthetic_movielens(d.get("synthetic_users", 40), 60, min_len=8, max_len=20,
                              seed=d.seed)
          if cfg.dataset == "synthetic" else load_movielens(cfg.dataset))
    data = prepare_lmrec(ml, LMRecConfig(max_history=d.max_history, num_val=0, num_test=0))
    splits = user_holdout_split(data.splits["train"], num_val_users=d.val_users, seed=d.seed)
    tr = splits["train"]
    rng = np.random.default_rng(d.seed)
    splits["train"] = take(tr, np.sort(rng.choice(len(tr.target), min(d.pool_size,
                                                                       len(tr.target)),
                                                  replace=False)))
    data = dataclasses.replace(data, splits=splits)
    texts = {k: next_item_dataset(data, k).select_columns(["prompt", "answer"]).to_dict()
             for k in splits}
    cand = ranking_candidates(data, "test", num_negatives=d.num_negatives, seed=d.seed)
    return data, texts, cand


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def decisive_features(cfg, model, base, enc, data) -> dict[str, np.ndarray]:
    """GORACS's features (ĝ, embeddings) and the baselines' scores: EL2N averaged over
    ``el2n.runs`` briefly fine-tuned models, GraNd averaged over ``grand.inits`` LoRA
    initialisations, DEALRec's surrogate influence."""
    from recrl.coreset import surrogate

    f = cfg.features
    tr = enc["train"]
    feats = {"grad": lmrec.grad_norms(model, *tr, batch=f.batch, chunk=f.chunk),
             "pool_emb": lmrec.embeddings(model, *tr[:2], batch=f.batch),
             "val_emb": lmrec.embeddings(model, *enc["val"][:2], batch=f.batch)}
    e = cfg.el2n
    scores = []
    for r in range(max(e.runs, 1)):
        m = nnx.clone(model)
        if e.runs > 0 and e.steps > 0:
            lmrec.finetune(m, *tr, steps=e.steps, batch=cfg.finetune.batch,
                           lr=cfg.finetune.lr, seed=100 + r, progress=False)
        scores.append(lmrec.el2n_scores(m, *tr, batch=f.batch))
    feats["el2n"] = np.mean(scores, 0)
    norms = []
    for k in range(cfg.grand.inits):
        m = nnx.clone(base)
        models.add_lora(m, rank=cfg.model.lora_rank, alpha=cfg.model.lora_alpha,
                        targets=("q_proj", "v_proj"), rngs=nnx.Rngs(1000 + k))
        norms.append(lmrec.lora_grad_norms(m, *tr, batch=f.batch, chunk=f.chunk))
    feats["grand"] = np.mean(norms, 0)
    s, dl = data.splits["train"], cfg.dealrec
    hmask = np.arange(s.history.shape[1])[None] < s.history_len[:, None]
    sur = surrogate.train_surrogate(s.history, hmask, s.target, len(data.titles),
                                    dim=dl.surrogate_dim, steps=dl.surrogate_steps)
    feats["influence"] = surrogate.surrogate_influence(sur, s.history, hmask, s.target,
                                                       damping=dl.damping)
    return feats


def decisive_select(method: str, n: int, seed: int, feats, cost, cfg) -> dict:
    """One subset of the decisive protocol: indices, seconds, trace and exact POO."""
    t0 = time.perf_counter()
    num, trace, s = feats["pool_emb"].shape[0], [], cfg.select
    if method in ("goracs", "greedy"):
        out = coreset.select(feats["pool_emb"], feats["val_emb"], feats["grad"], n,
                             lam=lam_of(cfg),
                             max_iters=s.max_iters if method == "goracs" else 0,
                             cut=s.cut, max_checks=s.max_checks, epsilon=s.epsilon,
                             threshold=s.threshold)
        idx, trace = out.indices, out.trace.tolist()
    elif method == "random":
        idx = coreset.random_subset(num, n, seed)
    elif method == "kcenter":
        idx = coreset.kcenter_greedy(feats["pool_emb"], n, seed)
    elif method == "el2n":
        idx = coreset.el2n(feats["el2n"], n, seed)
    elif method == "grand":
        idx = coreset.grand(feats["grand"], n, seed)
    elif method == "ccs":
        idx = coreset.ccs(feats["el2n"], n, seed=seed)
    elif method == "dealrec":
        idx = coreset.dealrec(feats["grand"], n, influence=feats["influence"],
                              gamma=cfg.dealrec.gamma, seed=seed)
    elif method == "d2pruning":
        d2 = cfg.d2pruning
        idx = coreset.d2_pruning(feats["pool_emb"], feats["el2n"], n, k=d2.k,
                                 gamma_forward=d2.gamma_forward,
                                 gamma_reverse=d2.gamma_reverse)
    else:
        raise ValueError(f"unknown method {method!r}")
    secs = time.perf_counter() - t0
    return {"indices": np.asarray(idx).tolist(), "seconds": secs, "trace": trace,
            "exact_poo": coreset.poo_exact(cost, np.asarray(idx))}


def decisive_evaluate(model, encode, cfg, texts, enc, cand, titles) -> dict[str, np.ndarray]:
    """Per test window: mean answer-token NLL of the target title and its rank among the
    candidates."""
    nll = lmrec.mean_answer_nll(model, *enc["test"])
    ranks = lmrec.target_ranks(lmrec.catalogue_scores(
        model, encode, texts["test"]["prompt"], titles, cand,
        max_prompt=cfg.model.max_prompt, max_answer=cfg.model.max_answer, progress=False))
    return {"nll": nll, "ranks": ranks}


def run_decisive(cfg, out_dir: str) -> dict:
    """The decisive protocol by resumable stages (each file written once; reruns skip).
    Runs in one process (its stages are not multi-process aware yet)."""
    parallel.startup(cfg)  # jax.distributed (if asked) and the device log, as every launcher
    if jax.process_count() > 1:
        raise ValueError("protocol=decisive runs in a single process; drop "
                         "--config.distributed or use the default protocol")
    out = config_check.preflight(cfg, out_dir, config_check.validate_goracs)
    rundir.guard_stages(out, cfg, config_check.GORACS_DECISIVE_STAGES,
                        config_check.GORACS_DECISIVE_FREE,
                        retrain=cfg.get("retrain_changed", False))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    data, texts, cand = load_decisive_data(cfg)
    corpus = [TITLE_PROMPT, *map(str, data.titles),
              *(t for v in texts.values() for t in (*v["prompt"], *v["answer"]))]
    model, encode = build_model(cfg, corpus)
    pretrain_on_titles(cfg, model, encode, data.titles,
                       cache_key=f"{cfg.dataset}:{len(corpus)}:{hash_texts(corpus)}")
    base = nnx.clone(model)
    models.add_lora(model, rank=cfg.model.lora_rank, alpha=cfg.model.lora_alpha,
                    targets=("q_proj", "v_proj"), rngs=nnx.Rngs(0))
    mp, ma = cfg.model.max_prompt, cfg.model.max_answer
    enc = {k: lmrec.encode_pairs(encode, v["prompt"], v["answer"], max_prompt=mp,
                                 max_answer=ma) for k, v in texts.items()}
    fpath = out / "features.npz"
    if fpath.exists():
        feats = dict(np.load(fpath))
    else:
        feats = decisive_features(cfg, model, base, enc, data)
        np.savez(out / "features.tmp.npz", **feats)
        (out / "features.tmp.npz").replace(fpath)
    cost = np.asarray(coreset.cost_matrix(feats["pool_emb"], feats["val_emb"], feats["grad"],
                                          lam_of(cfg)))
    spath = out / "selections.json"
    sels = json.loads(spath.read_text()) if spath.exists() else {}
    for n in cfg.budgets:
        for method in cfg.methods:
            for seed in range(cfg.random_subsets) if method == "random" else (0,):
                name = f"{method}_n{n}" + (f"_s{seed}" if method == "random" else "")
                if name not in sels:
                    sels[name] = {"method": method, "budget": int(n), "seed": seed,
                                  **decisive_select(method, n, seed, feats, cost, cfg)}
                    _atomic_write(spath, json.dumps(sels))
    jobs = [("base", None), ("full", list(range(cost.shape[0]))),
            *((k, v["indices"]) for k, v in sels.items())]
    ft = cfg.finetune
    for name, idx in jobs:
        jpath = out / "runs" / f"{name}.json"
        if jpath.exists():
            continue
        m = nnx.clone(model)
        info = {"best_step": 0, "steps_run": 0, "val_curve": []}
        t0 = time.perf_counter()
        if idx is not None:
            info = lmrec.finetune_early_stopping(
                m, tuple(x[np.asarray(idx)] for x in enc["train"]), enc["val"],
                max_steps=ft.max_steps, eval_every=ft.eval_every, patience=ft.patience,
                batch=ft.batch, lr=ft.lr, seed=ft.seed)
        t1 = time.perf_counter()
        ev = decisive_evaluate(m, encode, cfg, texts, enc, cand, data.titles)
        info.update(finetune_seconds=t1 - t0, eval_seconds=time.perf_counter() - t1)
        np.savez(out / "runs" / f"{name}.npz", **ev)
        rec = {"name": name, **{k: v for k, v in sels.get(name, {}).items()
                                if k != "indices"}, **info,
               "test_nll": float(ev["nll"].mean()),
               **lmrec.rank_metrics(ev["ranks"], ks=(10,))}
        _atomic_write(jpath, json.dumps(rec))
        print(f"{name:16s} NLL={rec['test_nll']:.4f} HR@10={rec['HR@10']:.3f} "
              f"best step {info['best_step']}", flush=True)
    users = np.asarray(data.splits["test"].user)
    np.save(out / "test_users.npy", users)
    text = decisive_report(out, cfg)
    return {"report": text}


def _plot_nll_vs_poo(out: Path, recs: dict, cfg) -> None:
    """``nll_vs_poo.png``: mean test NLL against exact POO, one panel per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(cfg.budgets)
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.5 * len(budgets), 3.4),
                             squeeze=False)
    for ax, n in zip(axes[0], budgets, strict=True):
        rs = [r for r in recs.values() if r.get("budget") == n]
        for r in rs:
            rnd = r["method"] == "random"
            ax.scatter(r["exact_poo"], r["test_nll"], s=12 if rnd else 30,
                       c="0.6" if rnd else "C3" if r["method"] == "goracs" else "C0")
            if not rnd:
                ax.annotate(r["method"], (r["exact_poo"], r["test_nll"]), fontsize=6)
        ax.set_title(f"n = {n} (grey: random subsets)", fontsize=8)
        ax.set_xlabel("exact POO"), ax.set_ylabel("test NLL")
    fig.tight_layout(), fig.savefig(out / "nll_vs_poo.png", dpi=100), plt.close(fig)


def decisive_report(out: Path, cfg) -> str:
    """``report.md`` of the decisive protocol from the per-run files (decision rules as in
    docs/goracs.md)."""
    from recrl.coreset import evaluation

    users = np.load(out / "test_users.npy")
    recs = {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}
    per = {k: dict(np.load(out / "runs" / f"{k}.npz")) for k in recs}
    boot = dict(num=cfg.report.bootstrap, seed=0)
    lines = [f"# GORACS decisive report ({cfg.variant})", "",
             f"Test windows: {len(users)} (one per test user); primary metric: test NLL of "
             "the target title (mean answer-token NLL; lower is better); 95 % user-level "
             f"bootstrap intervals ({cfg.report.bootstrap} resamples). Fine-tuning: at most "
             f"{cfg.finetune.max_steps} steps of batch {cfg.finetune.batch}, validation loss "
             f"every {cfg.finetune.eval_every} steps, patience {cfg.finetune.patience}, the "
             "best validation point tested.", ""]
    for ref in ("base", "full"):
        if ref in recs:
            iv = evaluation.user_interval(per[ref]["nll"], users, **boot)
            lines.append(f"- {ref}: NLL {iv.mean:.4f} [{iv.lo:.4f}, {iv.hi:.4f}], "
                         f"HR@10 {recs[ref]['HR@10']:.4f}")
    for n in cfg.budgets:
        names = [k for k, r in recs.items() if r.get("budget") == n]
        if not names:
            continue
        lines += ["", f"## n = {n}", "",
                  "| subset | exact POO | test NLL [95 % CI] | HR@10 [95 % CI] | NDCG@10 | "
                  "best step |", "|---|---|---|---|---|---|"]
        for k in sorted(names, key=lambda k: recs[k]["exact_poo"]):
            r, p = recs[k], per[k]
            a = evaluation.user_interval(p["nll"], users, **boot)
            h = evaluation.user_interval((p["ranks"] < 10).astype(float), users, **boot)
            lines.append(f"| {k} | {r['exact_poo']:.5f} | {a.mean:.4f} [{a.lo:.4f}, "
                         f"{a.hi:.4f}] | {h.mean:.4f} [{h.lo:.4f}, {h.hi:.4f}] | "
                         f"{r['NDCG@10']:.4f} | {r['best_step']} |")
        poo = np.array([recs[k]["exact_poo"] for k in names])
        nll = np.array([recs[k]["test_nll"] for k in names])
        lines.append("")
        if len(names) >= 3:
            rho, pval = evaluation.spearman(poo, nll)
            yes = rho > 0 and pval < 0.05
            lines.append(f"1. Spearman(exact POO, test NLL) over {len(names)} subsets: "
                         f"ρ = {rho:+.3f}, one-sided permutation p = {pval:.4f}: **"
                         + ("POO predicts test NLL" if yes else
                            f"POO does not predict test NLL at n = {n}") + "**.")
        rnd = [k for k in names if recs[k]["method"] == "random"]
        g = f"goracs_n{n}"
        if g in recs and rnd:
            pct = evaluation.percentile(recs[g]["test_nll"],
                                        np.array([recs[k]["test_nll"] for k in rnd]))
            lines.append(f"2. GORACS's test NLL is lower than that of {100 - pct:.0f} % of "
                         f"the {len(rnd)} random subsets (percentile {pct:.0f} %).")
            for key, better_low, label in (("nll", True, "test NLL"),
                                           ("hit", False, "HR@10")):
                def vals(k, key=key):
                    return (per[k]["nll"] if key == "nll"
                            else (per[k]["ranks"] < 10).astype(float))
                diff = vals(g) - np.mean([vals(k) for k in rnd], 0)
                iv = evaluation.user_interval(diff, users, **boot)
                good = iv.hi < 0 if better_low else iv.lo > 0
                bad = iv.lo > 0 if better_low else iv.hi < 0
                verdict = ("GORACS better" if good else "GORACS worse" if bad
                           else "no difference detected")
                lines.append(f"3. {label}: GORACS − random mean = {iv.mean:+.4f} "
                             f"[{iv.lo:+.4f}, {iv.hi:+.4f}] (paired, user-level): "
                             f"**{verdict}**.")
    lines += ["", "![test NLL vs exact POO](nll_vs_poo.png)"]
    text = "\n".join(lines) + "\n"
    _atomic_write(out / "report.md", text)
    _plot_nll_vs_poo(out, recs, cfg)
    return text


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.report_only:  # rebuild report.md and plots from a finished results.json
        decisive = FLAGS.config.get("protocol") == "decisive"
        path = Path(FLAGS.out_dir) / ("test_users.npy" if decisive else "results.json")
        if not path.exists():
            raise FileNotFoundError(f"--report_only: no {path} (run the experiment first)")
        if decisive:
            decisive_report(Path(FLAGS.out_dir), FLAGS.config)
        else:
            write_report(Path(FLAGS.out_dir), json.loads(path.read_text()))
    elif FLAGS.config.get("protocol") == "decisive":
        run_decisive(FLAGS.config, FLAGS.out_dir)
    else:
        run(FLAGS.config, FLAGS.out_dir)  # start-up (distributed, mesh) happens in run()
    if parallel.is_writer():
        print((Path(FLAGS.out_dir) / "report.md").read_text())


if __name__ == "__main__":
    # flags are defined here, not at import: launchers share one flag registry in a process
    config_check.define_config("config", "goracs.py:ml1m_cpu",
                               "GORACS experiment config.")
    flags.DEFINE_string("out_dir", "runs/goracs", "Output directory.")
    flags.DEFINE_bool("report_only", False,
                      "Only rebuild report.md and the plots from out_dir/results.json.")
    app.run(main)

