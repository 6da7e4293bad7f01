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

from experiments import goracs_report
from experiments.configs import validate as config_check
from experiments.configs.goracs import METHOD_TABLE
from recrl import coreset, parallel, rundir
from recrl.coreset import features, lmrec, pipeline

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


def _coreset_run(ctx: _Run, method: str, n: int, seed: int) -> dict:
    """Select, fine-tune a copy of the LoRA model, evaluate; the record (kept on disk).

    The fine-tune is checkpointed in ``runs/<run>.ckpt`` (removed once the record is
    written): a killed run continues from its last save, with the same result."""
    rec_path = ctx.out / "runs" / f"{method}_n{n}_s{seed}.json"
    if rec_path.exists():  # finished by an earlier (interrupted) invocation
        return json.loads(rec_path.read_text())
    ckpt = rec_path.with_suffix(".ckpt")
    sel, quality = pipeline.select_with_quality(ctx.cfg, METHOD_TABLE, method, n, seed,
                                                ctx.feats, ctx.cost, ctx.reused)
    idx = sel["indices"]
    rec = {"method": method, "budget": int(n if method != "full" else len(idx)),
           "seed": int(seed), "select_seconds": sel["seconds"], **quality,
           "trace": sel["trace"],
           **pipeline.finetune_and_evaluate(ctx.cfg, ctx.st, idx, seed, ctx.cand, ctx.full,
                                            ctx.mesh, checkpoint_dir=ckpt)}
    if "pool_labels" in ctx.feats:
        rec["selected_pos_rate"] = float(np.mean(ctx.feats["pool_labels"][idx]))
        rec["val_pos_rate"] = float(np.mean(ctx.feats["val_labels"]))
    if parallel.is_writer():  # only process 0 writes files
        rec_path.parent.mkdir(exist_ok=True)
        goracs_report.atomic_write(rec_path, json.dumps(rec, default=float))
        shutil.rmtree(ckpt, ignore_errors=True)  # the finished run is kept instead
    key = pipeline.PRIMARY[pipeline.task_of(ctx.cfg)]
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
    parallel.writer_checks("cached-stage guard", lambda: rundir.guard_stages(
        out, cfg, config_check.GORACS_STAGES, config_check.GORACS_FREE,
        retrain=cfg.get("retrain_changed", False)))
    data, texts, cand, full = parallel.writer_first("data", lambda: pipeline.load_data(cfg))
    st = pipeline.setup(cfg, data, texts, mesh=mesh)
    t0 = time.perf_counter()
    feats = pipeline.default_features(cfg, st, mesh)
    timing = {"feature_seconds": time.perf_counter() - t0}
    cost = np.asarray(coreset.cost_matrix(feats["pool_emb"], feats["val_emb"], feats["grad"],
                                          pipeline.lam_of(cfg)))
    t0 = time.perf_counter()
    runs = [{"method": "base", "budget": 0, "seed": 0,
             **pipeline.evaluate(st.model, st.encode, cfg, texts, cand, data.titles, full,
                                 mesh)}]
    timing["eval_seconds"] = time.perf_counter() - t0
    budgets = pipeline.budgets_of(cfg, cost.shape[0])
    # the data-parallel fine-tune splits each minibatch over the mesh: refuse up front
    rows = min(cfg.finetune.batch_size, *budgets)
    parallel.check_divisible({"finetune.batch_size (or the smallest budget)": rows}, mesh)
    parallel.log_batch("fine-tune", (rows, cfg.model.max_prompt + cfg.model.max_answer), mesh)
    ctx = _Run(cfg, out, st, feats, cost, cand, full, mesh)
    for method, n, seed in pipeline.run_plan(cfg, budgets):
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
# Every process computes every stage on the run's mesh; only process 0 writes files. What
# is already done (features.npz, selections.json, runs/*) is process 0's view, sent to the
# others, so a rerun with any process count takes the same decisions on every process.


def _broadcast_bytes(data: bytes | None) -> bytes:
    """Process 0's ``data`` on every process (the others pass None)."""
    from jax.experimental import multihost_utils

    buf = np.frombuffer(data, np.uint8) if parallel.is_writer() else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(buf.size)))
    if not parallel.is_writer():
        buf = np.zeros(size, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8).tobytes()


def _shared(obj: Any) -> Any:
    """Process 0's ``obj`` (JSON-able) on every process; with one process ``obj`` itself."""
    if jax.process_count() == 1:
        return obj
    return json.loads(_broadcast_bytes(json.dumps(obj).encode() if parallel.is_writer()
                                       else None))


def _shared_arrays(arrays: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Process 0's ``arrays`` on every process, bit for bit (dtypes kept: sent as .npz)."""
    if jax.process_count() == 1:
        return arrays
    import io

    blob = None
    if parallel.is_writer():
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        blob = buf.getvalue()
    return dict(np.load(io.BytesIO(_broadcast_bytes(blob))))


def _decisive_features(out: Path, cfg, st: pipeline.Setup, data, mesh) -> dict:
    """The features (``features.npz``: process 0 computes with the others and writes it, or
    reads it when an earlier run did); process 0's values on every process."""
    path = out / "features.npz"
    if _shared(parallel.is_writer() and path.exists()) and not parallel.is_writer():
        return _shared_arrays(None)  # process 0 reads its cache
    return _shared_arrays(features.decisive_features(
        cfg, st.model, st.base, st.enc, data, mesh=mesh,
        cache=path if parallel.is_writer() else None))


def _decisive_selections(out: Path, cfg, feats, cost) -> dict[str, dict]:
    """Every subset of the decisive protocol (``selections.json``, extended as it goes by
    process 0; every process computes the missing ones, and gets process 0's)."""
    spath = out / "selections.json"
    sels = _shared(json.loads(spath.read_text())
                   if parallel.is_writer() and spath.exists() else {})
    for n in cfg.budgets:
        for method in cfg.methods:
            for seed in range(cfg.random_subsets) if method == "random" else (0,):
                name = f"{method}_n{n}" + (f"_s{seed}" if method == "random" else "")
                if name not in sels:
                    sels[name] = {"method": method, "budget": int(n), "seed": seed,
                                  **pipeline.decisive_selection(cfg, METHOD_TABLE, method, n,
                                                                seed, feats, cost)}
                    if parallel.is_writer():
                        goracs_report.atomic_write(spath, json.dumps(sels))
    return _shared(sels)


def _decisive_job(out: Path, cfg, st: pipeline.Setup, cand, name: str, idx, sel: dict,
                  mesh) -> None:
    """Fine-tune on ``idx`` (None: none) and test, on every process (on ``mesh``; all take
    part in the checkpoint saves); process 0 writes the run and removes its checkpoint."""
    ckpt = out / "runs" / f"{name}.ckpt"
    info, per = pipeline.decisive_finetune(cfg, st, idx, cand, checkpoint_dir=ckpt,
                                           mesh=mesh)
    if not parallel.is_writer():
        return
    np.savez(out / "runs" / f"{name}.npz", **per)
    rec = {"name": name, **{k: v for k, v in sel.items() if k != "indices"}, **info,
           "test_nll": float(per["nll"].mean()),
           **lmrec.rank_metrics(per["ranks"], ks=(10,))}
    goracs_report.atomic_write(out / "runs" / f"{name}.json", json.dumps(rec))
    shutil.rmtree(ckpt, ignore_errors=True)  # the finished run is kept instead
    print(f"{name:16s} NLL={rec['test_nll']:.4f} HR@10={rec['HR@10']:.3f} "
          f"best step {info['best_step']}", flush=True)


def _decisive_prepare(cfg, out_dir: str) -> Path:
    """Config checks, the cached-stage guard and ``runs/`` (process 0 only: it writes).
    The distributed settings are free keys of the guard: a run resumes with any process or
    device count."""
    out = config_check.preflight(cfg, out_dir, config_check.validate_goracs)
    rundir.guard_stages(out, cfg, config_check.GORACS_DECISIVE_STAGES,
                        config_check.GORACS_DECISIVE_FREE,
                        retrain=cfg.get("retrain_changed", False))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    return out


def run_decisive(cfg, out_dir: str) -> dict:
    """The decisive protocol by resumable stages (each file written once; reruns skip).

    Data-parallel on the run's mesh (all processes and devices; ``num_devices`` as in every
    launcher): features, fine-tunes (Orbax checkpoints, every process taking part) and
    test evaluation; the selections run on every process. Only process 0 writes files, and
    what a rerun finds done is decided by process 0 for all; the fine-tune minibatch must
    split over the devices (refused up front otherwise). Returns ``{"report": text}``
    (None on the other processes)."""
    mesh = parallel.startup(cfg)  # jax.distributed first (if asked), then the global mesh
    parallel.check_divisible({"finetune.batch_size (or the smallest budget)":
                              min(cfg.finetune.batch_size, *cfg.budgets)}, mesh)
    parallel.writer_checks("preflight and cached-stage guard",
                           lambda: _decisive_prepare(cfg, out_dir))
    out = Path(out_dir).expanduser()
    data, texts, cand = parallel.writer_first("data",
                                              lambda: pipeline.load_decisive_data(cfg))
    st = pipeline.setup(cfg, data, texts, mesh=mesh, keep_base=True)
    feats = _decisive_features(out, cfg, st, data, mesh)
    cost = np.asarray(coreset.cost_matrix(feats["pool_emb"], feats["val_emb"], feats["grad"],
                                          pipeline.lam_of(cfg)))
    sels = _decisive_selections(out, cfg, feats, cost)
    jobs = [("base", None), ("full", list(range(cost.shape[0]))),
            *((k, v["indices"]) for k, v in sels.items())]
    done = set(_shared([name for name, _ in jobs if (out / "runs" / f"{name}.json").exists()]
                       if parallel.is_writer() else None))
    for name, idx in jobs:
        if name not in done:
            _decisive_job(out, cfg, st, cand, name, idx, sels.get(name, {}), mesh)
    if not parallel.is_writer():
        return {"report": None}
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
