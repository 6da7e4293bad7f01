r"""ProRL end to end: data → simulator → pretrained policy → RL per estimator → report.

Launch (the configs and their budgets are in ``experiments/configs/prorl.py``)::

    python -m experiments.prorl --config=prorl.py:ml1m_cpu \
        --out_dir=runs/prorl_ml1m_cpu

Every stage is cached in ``--out_dir`` and resumable: a rerun loads the trained simulator,
the pretrained policy and each RL run's last checkpoint (the RL state holds the optimiser,
the frozen SRC statistics and the step; prompt order and sampling keys are derived from
(seed, epoch, step), so a resumed run ends where an uninterrupted one does). Writes
``metrics.jsonl`` (per RL step), TensorBoard events (``tb/``), ``results.json`` and
``report.md`` with plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags, logging

from experiments import prorl_report
from experiments.configs import prorl as prorl_config
from experiments.configs import validate as config_check
from recrl import parallel, rundir
from recrl.prs import pipeline, rl
from recrl.prs import train as rl_train
from recrl.prs.pipeline import Context, genre_matrix, load_data, load_per_prompt  # noqa: F401
from recrl.prs.policy import PathPolicy

FLAGS = flags.FLAGS


def rl_config(c: Any, method: str, steps: int) -> rl.RLConfig:
    """The RL hyper-parameters of ``method`` (a methods-table name) from the launcher
    config; the warm-up is ``warmup_frac`` of the schedule's ``schedule_epochs`` (default:
    the run's epochs) of ``steps`` updates each."""
    rl_cfg = c.rl
    schedule = rl_cfg.get("schedule_epochs", 0) or rl_cfg.epochs
    return rl.RLConfig(
        method=prorl_config.method(method), group_size=rl_cfg.group_size, lr=rl_cfg.lr,
        kl_weight=rl_cfg.kl_weight, warmup_steps=int(rl_cfg.warmup_frac * steps * schedule),
        weight_decay=rl_cfg.get("weight_decay", 0.05),
        reward_weights=tuple(rl_cfg.reward_weights),
        micro_batches=rl_cfg.get("micro_batches", 1),
        sample_std=rl_cfg.get("sample_std", True),
        stats_real_items=rl_cfg.get("stats_real_items", True),
        mask_target=rl_cfg.get("mask_target", True))


def loop_config(c: Any) -> rl_train.LoopConfig:
    """The RL epoch loop's budget and diagnostics from the launcher config."""
    rl_cfg = c.rl
    return rl_train.LoopConfig(
        epochs=rl_cfg.epochs, prompts=rl_cfg.prompts,
        steps_per_epoch=rl_cfg.steps_per_epoch,
        grad_diag_batches=rl_cfg.get("grad_diag_batches", 0),
        diag_reference=prorl_config.method("psae_loo"),
        diag_every=rl_cfg.get("diag_every", 10))


def train_method(ctx: Context, policy0: PathPolicy, method: str, seed: int,
                 on_epoch_end: Callable[[int], None] | None = None) -> dict:
    """One RL run (resumable); returns its test metrics with the validation-selected params."""
    name = f"{method}_s{seed}"
    run_dir = ctx.out / "rl" / name
    if (run_dir / "result.json").exists():
        return json.loads((run_dir / "result.json").read_text())
    train, val = pipeline.split_prompts(ctx)
    loop = loop_config(ctx.cfg)
    run = rl_train.RLRun(
        name=name, run_dir=run_dir, seed=seed,
        rl_cfg=rl_config(ctx.cfg, method, loop.steps(len(train.target))), loop=loop,
        sim=ctx.sims["sasrec"], train=train, val=val, genres=ctx.genres, log=ctx.log,
        tb_dir=ctx.out / "tb" / name, mesh=ctx.mesh, extra={"method": method})
    policy, summary = rl_train.train_rl(run, policy0, on_epoch_end)
    result = {"method": method, "seed": seed, **summary,
              "test": pipeline.test_metrics(ctx, policy, seed, run_dir / "test_prompts.npz")}
    if parallel.is_writer():
        tmp = run_dir / "result.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(run_dir / "result.json")
    return result


def _start(cfg: Any, out_dir: str) -> tuple[Path, Any]:
    """Start-up, config validation, stage guards; returns ``(out, mesh)``."""
    mesh = parallel.startup(cfg)  # jax.distributed first, then the global mesh
    config_check.validate_prorl(cfg)
    parallel.check_divisible({"rl.prompts": cfg.rl.prompts,
                              "sim.batch_size": cfg.sim.get("batch_size", 128)}, mesh)
    out = config_check.preflight(cfg, out_dir, config_check.validate_prorl)
    def guard_and_record():  # process 0; every process stops if it fails
        rundir.guard_stages(out, cfg, config_check.prorl_stages(cfg), config_check.PRORL_FREE,
                            retrain=cfg.get("retrain_changed", False))
        (out / "config.json").write_text(cfg.to_json(indent=1))

    parallel.writer_checks("cached-stage guard", guard_and_record)
    return out, mesh


def _simulators(cfg: Any, out: Path, data: Any, mesh: Any) -> dict[str, Any]:
    """The SASRec reward model and the independent evaluator (trained or loaded)."""
    sims = {"sasrec": pipeline.get_simulator(out, data, "sasrec", cfg.sim, mesh=mesh)}
    eval_sim_cfg = ml_collections.ConfigDict({**cfg.sim.to_dict(), **cfg.evaluator.to_dict()})
    sims[cfg.evaluator.kind] = pipeline.get_simulator(out, data, cfg.evaluator.kind,
                                                      eval_sim_cfg, mesh=mesh)
    return sims


def run(cfg: Any, out_dir: str, on_epoch_end: Callable[[str, int], None] | None = None
        ) -> dict:
    """The whole pipeline; returns ``{"runs": [...], "baselines": {...}}``."""
    out, mesh = _start(cfg, out_dir)
    t0 = time.perf_counter()
    data = parallel.writer_first("data", lambda: pipeline.load_data(cfg))
    logging.info("data ready in %.1fs: %d train / %d val / %d test paths",
                 time.perf_counter() - t0, *(len(data.paths[s].lengths)
                                             for s in ("train", "val", "test")))
    sims = _simulators(cfg, out, data, mesh)
    with rundir.MetricsLog(out / "metrics.jsonl", enabled=parallel.is_writer()) as log:
        # coherence over every genre (the reference's metric); the mining oracle ignores Drama
        masks = data.all_genre_masks if cfg.eval.get("coherence_all_genres", True) else \
            data.genre_masks
        ctx = Context(cfg, out, data, pipeline.genre_matrix(masks), sims, mesh, log)
        policy0 = pipeline.pretrained_policy(ctx)
        base = pipeline.baselines(ctx, policy0)
        runs = []
        for seed in cfg.seeds:  # seed-major: an interrupted run has every method at some seeds
            for method in cfg.methods:
                cb = None if on_epoch_end is None else (lambda e, m=method: on_epoch_end(m, e))
                runs.append(train_method(ctx, policy0, method, seed, cb))
    return write_results(out, runs, base, cfg)


def write_results(out: Path, runs: list[dict], base: dict, cfg: Any) -> dict:
    """Writes ``results.json`` and the report (``report.md``, plots); returns the results."""
    results = {"runs": runs, "baselines": base, "config": cfg.to_dict(),
               "intervals": pipeline.user_intervals(out, runs, base, cfg)}
    if parallel.is_writer():
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        prorl_report.write_report(out, results)
    return results


def report_only(cfg: Any, out_dir: str) -> dict:
    """Report of the finished runs in ``out_dir`` (configured methods × seeds with a
    ``result.json``; e.g. while the rest is still training); trains nothing."""
    out = Path(out_dir)
    base_path = out / "baselines.json"
    if not base_path.exists():
        raise FileNotFoundError(f"{base_path} is missing: run the pipeline first")
    runs = [json.loads(p.read_text()) for seed in cfg.seeds for m in cfg.methods
            if (p := out / "rl" / f"{m}_s{seed}" / "result.json").exists()]
    if not runs:
        raise FileNotFoundError(f"no finished RL run under {out / 'rl'}")
    return write_results(out, runs, json.loads(base_path.read_text()), cfg)


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.report_only:
        report_only(FLAGS.config, FLAGS.out_dir)
    else:
        run(FLAGS.config, FLAGS.out_dir)  # start-up (distributed, mesh) happens in run()
    if parallel.is_writer():
        print((Path(FLAGS.out_dir) / "report.md").read_text())


if __name__ == "__main__":
    # flags are defined here, not at import: launchers share one flag registry in a process
    config_check.define_config("config", "prorl.py:ml1m_cpu", "ProRL experiment config.")
    flags.DEFINE_string("out_dir", "runs/prorl", "Output directory (stages cached here).")
    flags.DEFINE_bool("report_only", False,
                      "Only rewrite the report from the finished runs in --out_dir.")
    app.run(main)
