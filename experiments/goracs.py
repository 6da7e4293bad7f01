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
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from experiments import goracs_report
from experiments.configs import validate as config_check
from experiments.configs.goracs import METHOD_TABLE
from recrl import coreset, parallel, rundir
from recrl.coreset import features, lmrec, pipeline, selectors

FLAGS = flags.FLAGS


@dataclasses.dataclass
class _Run:
    """What the default protocol's coreset runs share."""

    cfg: Any
    out: Path
    st: pipeline.Setup
    feats: dict[str, np.ndarray]
    cost: np.ndarray
    cand: np.ndarray
    full: Any
    mesh: Any
    reused: dict = dataclasses.field(default_factory=dict)  # deterministic selections


def _features(cfg, st: pipeline.Setup) -> dict[str, np.ndarray]:
    """The default protocol's selection features (DEALRec's influence when it runs)."""
    dealrec_cfg = cfg.get("dealrec", {})
    influence = "dealrec" in cfg.methods and dealrec_cfg.get("influence", False)
    labels = ((st.texts["train"]["label"], st.texts["val"]["label"])
              if "label" in st.texts["train"] else None)
    return features.selection_features(
        st.model, st.enc, batch_size=cfg.features.batch_size, chunk=cfg.features.chunk,
        influence_damping=dealrec_cfg.get("damping", 0.01) if influence else None,
        labels=labels)


def _plan(cfg, budgets: list[int]):
    """``(method, budget, seed)`` of every coreset run: full data once (first seed)."""
    for bi, n in enumerate(budgets):
        for method in cfg.methods:
            if method == "full" and bi > 0:  # full data does not depend on the budget
                continue
            # deterministic selections still vary by seed through the fine-tuning order
            for seed in cfg.seeds[:1] if method == "full" else cfg.seeds:
                yield method, n, seed


def _selection(ctx: _Run, method: str, n: int, seed: int) -> tuple[dict, dict]:
    """The coreset and its POO (reused across seeds for deterministic selectors)."""
    if (method, n) in ctx.reused:
        return ctx.reused[(method, n)]
    entry, cfg = METHOD_TABLE[method], ctx.cfg
    sel = selectors.run_method(entry, ctx.feats, n, seed, pipeline.method_options(cfg, entry))
    quality = pipeline.coreset_quality(ctx.cost, sel["indices"], epsilon=cfg.select.epsilon,
                                       threshold=cfg.select.threshold,
                                       exact=cfg.select.exact_ot)
    if selectors.get_selector(entry.selector).deterministic:
        ctx.reused[(method, n)] = sel, quality
    return sel, quality


def _coreset_run(ctx: _Run, method: str, n: int, seed: int) -> dict:
    """Select, fine-tune a copy of the LoRA model, evaluate; the record (kept on disk)."""
    rec_path = ctx.out / "runs" / f"{method}_n{n}_s{seed}.json"
    if rec_path.exists():  # finished by an earlier (interrupted) invocation
        return json.loads(rec_path.read_text())
    cfg, st = ctx.cfg, ctx.st
    sel, quality = _selection(ctx, method, n, seed)
    idx = sel["indices"]
    model = nnx.clone(st.model)  # merge(split) would share (and mutate) Variables
    steps = pipeline.finetune_steps(cfg.finetune, len(idx))
    lmrec.finetune(model, *(x[idx] for x in st.enc["train"]), steps=steps,
                   batch_size=cfg.finetune.batch_size, lr=cfg.finetune.lr, seed=seed,
                   progress=False, mesh=ctx.mesh)
    rec = {"method": method, "budget": int(n if method != "full" else len(idx)),
           "seed": int(seed), "select_seconds": sel["seconds"], **quality,
           "trace": sel["trace"], "steps": steps,
           **pipeline.evaluate(model, st.encode, cfg, st.texts, ctx.cand, st.data.titles,
                               ctx.full)}
    if "pool_labels" in ctx.feats:
        rec["selected_pos_rate"] = float(np.mean(ctx.feats["pool_labels"][idx]))
        rec["val_pos_rate"] = float(np.mean(ctx.feats["val_labels"]))
    rec_path.parent.mkdir(exist_ok=True)
    goracs_report.atomic_write(rec_path, json.dumps(rec, default=float))
    key = pipeline.PRIMARY[pipeline.task_of(cfg)]
    print(f"{method:8s} n={rec['budget']:5d} seed={seed} {key}={rec[key]:.3f}"
          f" POO={rec['poo']:.4f} ({sel['seconds']:.1f} s)", flush=True)
    return rec


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
    data, texts, cand, full = parallel.writer_first("data", lambda: pipeline.load_data(cfg))
    st = pipeline.setup(cfg, data, texts, mesh=mesh)
    t0 = time.perf_counter()
    feats = _features(cfg, st)
    timing = {"feature_seconds": time.perf_counter() - t0}
    cost = np.asarray(coreset.cost_matrix(feats["pool_emb"], feats["val_emb"], feats["grad"],
                                          pipeline.lam_of(cfg)))
    t0 = time.perf_counter()
    runs = [{"method": "base", "budget": 0, "seed": 0,
             **pipeline.evaluate(st.model, st.encode, cfg, texts, cand, data.titles, full)}]
    timing["eval_seconds"] = time.perf_counter() - t0
    budgets = pipeline.budgets_of(cfg, cost.shape[0])
    # the data-parallel fine-tune splits each minibatch over the mesh: refuse up front
    rows = min(cfg.finetune.batch_size, *budgets)
    parallel.check_divisible({"finetune.batch_size (or the smallest budget)": rows}, mesh)
    parallel.log_batch("fine-tune", (rows, cfg.model.max_prompt + cfg.model.max_answer), mesh)
    ctx = _Run(cfg, out, st, feats, cost, cand, full, mesh)
    for method, n, seed in _plan(cfg, budgets):
        runs.append(_coreset_run(ctx, method, n, seed))
        write_results(out, runs, st.pretrain_losses, timing, texts, cfg)
    results = write_results(out, runs, st.pretrain_losses, timing, texts, cfg)
    if parallel.is_writer():
        goracs_report.write_report(out, results)
    return results


def write_results(out: Path, runs, pre, timing, texts, cfg) -> dict:
    """``results.json`` (rewritten after every run, via a temporary file: an interrupted
    run keeps what it finished)."""
    results = {"runs": runs, "pretrain_loss": list(pre[-1:]), **timing,
               "sizes": {k: len(v["prompt"]) for k, v in texts.items()},
               "config": cfg.to_dict()}
    if parallel.is_writer():  # only process 0 writes files
        goracs_report.atomic_write(out / "results.json",
                                   json.dumps(results, indent=1, default=str))
    return results


# --- decisive protocol (docs/goracs.md, "decisive_cpu") -------------------------------

def _decisive_selections(out: Path, cfg, feats, cost) -> dict[str, dict]:
    """Every subset of the decisive protocol (``selections.json``, extended as it goes)."""
    spath = out / "selections.json"
    sels = json.loads(spath.read_text()) if spath.exists() else {}
    for n in cfg.budgets:
        for method in cfg.methods:
            for seed in range(cfg.random_subsets) if method == "random" else (0,):
                name = f"{method}_n{n}" + (f"_s{seed}" if method == "random" else "")
                if name in sels:
                    continue
                entry = METHOD_TABLE[method]
                sel = selectors.run_method(entry, feats, n, seed,
                                           pipeline.method_options(cfg, entry))
                idx = np.asarray(sel["indices"])
                sels[name] = {"method": method, "budget": int(n), "seed": seed,
                              "indices": idx.tolist(), "seconds": sel["seconds"],
                              "trace": sel["trace"],
                              "exact_poo": coreset.poo_exact(cost, idx)}
                goracs_report.atomic_write(spath, json.dumps(sels))
    return sels


def _decisive_job(out: Path, cfg, st: pipeline.Setup, cand, name: str, idx, sel: dict):
    """Fine-tune (early stopping) on ``idx`` (None: no fine-tuning), test, write the run."""
    model, ft_cfg = nnx.clone(st.model), cfg.finetune
    info = {"best_step": 0, "steps_run": 0, "val_curve": []}
    t0 = time.perf_counter()
    if idx is not None:
        info = lmrec.finetune_early_stopping(
            model, tuple(x[np.asarray(idx)] for x in st.enc["train"]), st.enc["val"],
            max_steps=ft_cfg.max_steps, eval_every=ft_cfg.eval_every,
            patience=ft_cfg.patience, batch_size=ft_cfg.batch_size, lr=ft_cfg.lr,
            seed=ft_cfg.seed, checkpoint_dir=out / "runs" / f"{name}.ckpt")
    t1 = time.perf_counter()
    per = pipeline.decisive_evaluate(model, st.encode, cfg, st.texts, st.enc, cand,
                                     st.data.titles)
    info.update(finetune_seconds=t1 - t0, eval_seconds=time.perf_counter() - t1)
    np.savez(out / "runs" / f"{name}.npz", **per)
    rec = {"name": name, **{k: v for k, v in sel.items() if k != "indices"}, **info,
           "test_nll": float(per["nll"].mean()),
           **lmrec.rank_metrics(per["ranks"], ks=(10,))}
    goracs_report.atomic_write(out / "runs" / f"{name}.json", json.dumps(rec))
    shutil.rmtree(out / "runs" / f"{name}.ckpt", ignore_errors=True)  # the run is kept
    print(f"{name:16s} NLL={rec['test_nll']:.4f} HR@10={rec['HR@10']:.3f} "
          f"best step {info['best_step']}", flush=True)


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
    data, texts, cand = pipeline.load_decisive_data(cfg)
    st = pipeline.setup(cfg, data, texts, keep_base=True)
    fpath = out / "features.npz"
    if fpath.exists():
        feats = dict(np.load(fpath))
    else:
        feats = features.decisive_features(cfg, st.model, st.base, st.enc, data)
        np.savez(out / "features.tmp.npz", **feats)
        (out / "features.tmp.npz").replace(fpath)
    cost = np.asarray(coreset.cost_matrix(feats["pool_emb"], feats["val_emb"], feats["grad"],
                                          pipeline.lam_of(cfg)))
    sels = _decisive_selections(out, cfg, feats, cost)
    jobs = [("base", None), ("full", list(range(cost.shape[0]))),
            *((k, v["indices"]) for k, v in sels.items())]
    for name, idx in jobs:
        if not (out / "runs" / f"{name}.json").exists():
            _decisive_job(out, cfg, st, cand, name, idx, sels.get(name, {}))
    np.save(out / "test_users.npy", np.asarray(data.splits["test"].user))
    return {"report": goracs_report.decisive_report(out, cfg)}


def main(argv: list[str]) -> None:
    del argv
    cfg, out = FLAGS.config, Path(FLAGS.out_dir)
    decisive = cfg.get("protocol") == "decisive"
    if FLAGS.report_only:  # rebuild report.md and plots from a finished run
        path = out / ("test_users.npy" if decisive else "results.json")
        if not path.exists():
            raise FileNotFoundError(f"--report_only: no {path} (run the experiment first)")
        if decisive:
            goracs_report.decisive_report(out, cfg)
        else:
            goracs_report.write_report(out, json.loads(path.read_text()))
    elif decisive:
        run_decisive(cfg, FLAGS.out_dir)
    else:
        run(cfg, FLAGS.out_dir)  # start-up (distributed, mesh) happens in run()
    if parallel.is_writer():
        print((out / "report.md").read_text())


if __name__ == "__main__":
    # flags are defined here, not at import: launchers share one flag registry in a process
    config_check.define_config("config", "goracs.py:ml1m_cpu",
                               "GORACS experiment config.")
    flags.DEFINE_string("out_dir", "runs/goracs", "Output directory.")
    flags.DEFINE_bool("report_only", False,
                      "Only rebuild report.md and the plots from out_dir/results.json.")
    app.run(main)
