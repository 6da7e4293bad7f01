r"""ProRL end to end: data → simulator → pretrained policy → RL per estimator → report.

Launch (the configs and their budgets are in ``experiments/configs/prorl.py``)::

    python -m experiments.prorl --config=experiments/configs/prorl.py:ml1m_cpu \
        --out_dir=runs/prorl_ml1m_cpu

Every stage is cached in ``--out_dir`` and resumable: a rerun loads the trained simulator,
the pretrained policy and each RL run's last checkpoint (the RL state holds the optimiser,
the frozen SRC statistics and the step; prompt order and sampling keys are derived from
(seed, epoch, step), so a resumed run ends where an uninterrupted one does). Writes
``metrics.jsonl`` (per RL step), TensorBoard events (``tb/``), ``results.json`` and
``report.md`` with plots.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from experiments import prorl_report
from recrl import parallel
from recrl.checkpoint import Checkpointer
from recrl.data import ProRLConfig, load_movielens, prepare_prorl, random_unseen_targets
from recrl.prs import evaluate as ev
from recrl.prs import rl, simulator
from recrl.prs.policy import PathPolicy, PolicyConfig
from recrl.prs.pretrain import PretrainConfig, pretrain
from recrl.prs.train_simulator import load_simulator, save_simulator, train_simulator

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Context:
    """What every stage needs: config, data, simulators, output paths, mesh."""

    cfg: Any
    out: Path
    data: Any
    genres: np.ndarray
    sims: dict[str, Any]
    mesh: Any
    log: Any  # open metrics.jsonl


def load_data(cfg: Any) -> Any:
    """MovieLens (fetched on first use) or synthetic data, preprocessed for ProRL."""
    if cfg.dataset == "synthetic":
        from recrl.data import synthetic_movielens

        ml = synthetic_movielens(num_users=150, num_items=120, seed=0)
    else:
        ml = load_movielens(cfg.dataset, download=True)
    d = cfg.data
    return prepare_prorl(ml, ProRLConfig(min_user=d.min_user, min_item=d.min_item,
                                         seed=d.seed, history=d.history, max_len=d.max_len))


def genre_matrix(masks: np.ndarray) -> np.ndarray:
    """``[I]`` uint64 genre bitmasks → ``[I, 64]`` 0/1 matrix."""
    bits = (masks.astype(np.uint64)[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    return bits.astype(np.float32)


def get_simulator(ctx_out: Path, data: Any, kind: str, scfg: Any, seed: int = 0,
                  mesh: Any = None) -> Any:
    """Loads ``out/<kind>`` or trains (data-parallel over ``mesh``) and saves it."""
    path = ctx_out / kind
    try:
        return load_simulator(path)
    except FileNotFoundError:
        pass
    cfg = simulator.SimConfig(kind=kind, num_items=data.sequences.num_items)
    model, metrics = train_simulator(
        data, cfg, epochs=scfg.epochs, batch_size=scfg.get("batch_size", 128), seed=seed,
        patience=scfg.patience, learning_rate=scfg.get("lr", 1e-3),
        max_seconds=scfg.get("max_seconds", 0.0) or None, mesh=mesh)
    save_simulator(path, model, cfg, metrics=metrics)
    logging.info("%s: %s", kind, json.dumps({k: metrics[k] for k in ("val", "test")}))
    return model


def prompts_of(paths: Any, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    h, t = np.asarray(paths.history, np.int32), np.asarray(paths.target, np.int32)
    return (h[:limit], t[:limit]) if limit else (h, t)


def pretrained_policy(ctx: Context) -> PathPolicy:
    """Loads ``out/policy_pretrained`` or pretrains on the mined train paths."""
    c = ctx.cfg
    pcfg = PolicyConfig(num_items=ctx.data.sequences.num_items, history=c.data.history,
                        max_len=c.data.max_len, **c.policy)
    policy = PathPolicy(pcfg, nnx.Rngs(0))
    ckpt = Checkpointer(ctx.out / "policy_pretrained", max_to_keep=1)
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(like=nnx.state(policy, nnx.Param))
        nnx.update(policy, state)
        return policy
    val_h, val_t = prompts_of(ctx.data.paths["val"], c.eval.val_prompts)

    def validate(p: PathPolicy) -> dict:
        m = ev.evaluate_policy(p, {"sasrec": ctx.sims["sasrec"]}, val_h, val_t, ctx.genres)
        return {"val_ioi@1": m["sasrec/ioi@1"], "val_ctr@1": m["sasrec/ctr@1"],
                "val_length@1": m["sasrec/length@1"]}

    policy, history = pretrain(policy, ctx.data.paths["train"], ctx.data.paths["val"],
                               PretrainConfig(seed=0, **c.pretrain), validate)
    ckpt.save(1, jax.device_get(nnx.state(policy, nnx.Param)), meta={"history": history})
    ckpt.close()
    return policy


def train_method(ctx: Context, policy0: PathPolicy, method: str, seed: int,
                 on_epoch_end: Callable[[int], None] | None = None) -> dict:
    """One RL run (resumable); returns its test metrics with the validation-selected params."""
    c, r = ctx.cfg, ctx.cfg.rl
    run = f"{method}_s{seed}"
    run_dir = ctx.out / "rl" / run
    if (run_dir / "result.json").exists():
        return json.loads((run_dir / "result.json").read_text())
    train_h, train_t = prompts_of(ctx.data.paths["train"])
    val_h, val_t = prompts_of(ctx.data.paths["val"], c.eval.val_prompts)
    steps = r.steps_per_epoch or len(train_t) // r.prompts
    if steps < 1 or len(train_t) < r.prompts:
        raise ValueError(f"{len(train_t)} training prompts cannot fill a batch of {r.prompts}")
    rcfg = rl.RLConfig(method=method, samples=r.samples, lr=r.lr, kl_weight=r.kl_weight,
                       warmup_steps=int(r.warmup_frac * steps * r.epochs),
                       reward_weights=tuple(r.reward_weights))
    policy = nnx.clone(policy0)
    state, graph = rl.init_state(policy, rcfg)
    sim_state = nnx.split(ctx.sims["sasrec"])
    score = lambda s, *a: simulator.score_paths((sim_state[0], s), *a)
    step_fn = rl.make_train_step(graph, score, rcfg)
    ckpt = Checkpointer(run_dir / "ckpt", max_to_keep=2)
    best_ckpt = Checkpointer(run_dir / "best", max_to_keep=1)
    meta = {"epoch": 0, "history": [], "best_val": -1e30, "best_epoch": 0}
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(like=state)
        logging.info("%s: resuming after epoch %d", run, meta["epoch"])
    state = parallel.replicate(state, ctx.mesh)
    sim_rep = parallel.replicate(sim_state[1], ctx.mesh)
    parallel.check_divisible({"rl.prompts": r.prompts}, ctx.mesh)
    parallel.log_batch(f"{run} prompts", (r.prompts, *train_h.shape[1:]), ctx.mesh)
    step_fn = jax.jit(step_fn, donate_argnums=0)  # the old train state is never read again
    tb = SummaryWriter(str(ctx.out / "tb" / run)) if parallel.is_writer() else None
    for epoch in range(meta["epoch"], r.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(train_t))
        sums: dict[str, float] = {}
        for s in tqdm(range(steps), desc=f"{run} epoch {epoch + 1}/{r.epochs}", leave=False):
            idx = order[(s * r.prompts) % len(train_t):][: r.prompts]
            if len(idx) < r.prompts:
                idx = np.concatenate([idx, order[: r.prompts - len(idx)]])
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), s)
            # each process builds only its rows of the (seed, epoch, step)-ordered batch
            hist, tgt = parallel.global_rows(
                lambda rows, idx=idx: (train_h[idx[rows]], train_t[idx[rows]]), r.prompts,
                ctx.mesh)
            state, m = step_fn(state, sim_rep, hist, tgt, key)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            if not m["finite"]:
                logging.warning("%s: skipped a batch with non-finite rewards (total %d)", run,
                                int(state.skipped))
            gstep = epoch * steps + s
            ctx.log.write(json.dumps({"run": run, "method": method, "seed": seed,
                                      "epoch": epoch + 1, "step": gstep, **m}) + "\n")
            for k, v in m.items():
                if tb is not None:
                    tb.add_scalar(f"train/{k}", v, gstep)  # (no '@' in these names)
                sums[k] = sums.get(k, 0.0) + v / steps
        if epoch == 0:
            state = rl.freeze_stats(state)
        nnx.update(policy, jax.device_get(state.params))
        val = ev.evaluate_policy(policy, {"sasrec": ctx.sims["sasrec"]}, val_h, val_t,
                                 ctx.genres)
        row = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in sums.items()},
               **{f"val_{k.split('/')[1]}": v for k, v in val.items()}}
        for k, v in row.items():
            if tb is not None:
                tb.add_scalar(f"epoch/{k.replace('@', '_at_')}", v, epoch + 1)
        meta["history"].append(row)
        if row["val_ioi@1"] > meta["best_val"]:
            meta.update(best_val=row["val_ioi@1"], best_epoch=epoch + 1)
            best_ckpt.save(epoch + 1, jax.device_get(state.params))
        meta["epoch"] = epoch + 1
        ckpt.save(epoch + 1, jax.device_get(state), meta=meta)
        logging.info("%s epoch %d: %s", run, epoch + 1,
                     {k: round(v, 4) for k, v in row.items() if k.startswith("val_")})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    if tb is not None:
        tb.close()
    best, _ = best_ckpt.restore(like=jax.device_get(state.params))
    nnx.update(policy, best)
    result = {"method": method, "seed": seed, "best_epoch": meta["best_epoch"],
              "history": meta["history"], "skipped": int(state.skipped),
              "src_mean": np.asarray(state.stats.mean).tolist(),
              "test": test_metrics(ctx, policy, seed)}
    if parallel.is_writer():
        (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    ckpt.close()
    best_ckpt.close()
    return result


def test_metrics(ctx: Context, policy: PathPolicy, seed: int) -> dict:
    """Test-split metrics (mined targets and random unseen targets), both simulators."""
    c = ctx.cfg
    th, tt = prompts_of(ctx.data.paths["test"], c.eval.max_prompts)
    out = ev.evaluate_policy(policy, ctx.sims, th, tt, ctx.genres, k=c.eval.k, seed=seed)
    unseen = random_unseen_targets(ctx.data, "test", seed=seed)
    uh, ut = prompts_of(unseen, c.eval.max_prompts)
    out.update({f"unseen/{k}": v for k, v in
                ev.evaluate_policy(policy, ctx.sims, uh, ut, ctx.genres).items()})
    return out


def baselines(ctx: Context, policy0: PathPolicy) -> dict:
    """Test metrics of the pretrained policy and of the heuristic baselines."""
    c = ctx.cfg
    path = ctx.out / "baselines.json"
    if path.exists():
        return json.loads(path.read_text())
    th, tt = prompts_of(ctx.data.paths["test"], c.eval.max_prompts)
    res = {}
    for name in c.baselines:
        t0 = time.perf_counter()
        if name == "pretrained":
            res[name] = test_metrics(ctx, policy0, 0)
        else:
            gen = ev.ipg_paths if name == "ipg" else ev.greedy_sequential_paths
            p, lengths = gen(ctx.sims["sasrec"], th, tt, c.data.max_len)
            res[name] = ev.evaluate_paths(ctx.sims, th, tt, p, lengths, ctx.genres,
                                          ctx.data.sequences.num_items)
        logging.info("baseline %s in %.1fs: %s", name, time.perf_counter() - t0, res[name])
    if parallel.is_writer():
        path.write_text(json.dumps(res, indent=1))
    return res


def run(cfg: Any, out_dir: str, on_epoch_end: Callable[[str, int], None] | None = None
        ) -> dict:
    """The whole pipeline; returns ``{"runs": [...], "baselines": {...}}``."""
    mesh = parallel.startup(cfg)  # jax.distributed first, then the global mesh
    parallel.check_divisible({"rl.prompts": cfg.rl.prompts,
                              "sim.batch_size": cfg.sim.get("batch_size", 128)}, mesh)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if parallel.is_writer():
        (out / "config.json").write_text(cfg.to_json(indent=1))
    t0 = time.perf_counter()
    data = parallel.writer_first("data", lambda: load_data(cfg))
    logging.info("data ready in %.1fs: %d train / %d val / %d test paths",
                 time.perf_counter() - t0, *(len(data.paths[s].lengths)
                                             for s in ("train", "val", "test")))
    sims = {"sasrec": get_simulator(out, data, "sasrec", cfg.sim, mesh=mesh)}
    ecfg = ml_collections.ConfigDict({**cfg.sim.to_dict(), **cfg.evaluator.to_dict()})
    sims[cfg.evaluator.kind] = get_simulator(out, data, cfg.evaluator.kind, ecfg, mesh=mesh)
    with parallel.open_for_writer(out / "metrics.jsonl", "a") as log:  # process 0 writes
        ctx = Context(cfg, out, data, genre_matrix(data.genre_masks), sims, mesh, log)
        policy0 = pretrained_policy(ctx)
        base = baselines(ctx, policy0)
        runs = []
        for seed in cfg.seeds:  # seed-major: an interrupted run has every method at some seeds
            for method in cfg.methods:
                cb = None if on_epoch_end is None else (lambda e, m=method: on_epoch_end(m, e))
                runs.append(train_method(ctx, policy0, method, seed, cb))
    return write_results(out, runs, base, cfg)


def write_results(out: Path, runs: list[dict], base: dict, cfg: Any) -> dict:
    """Writes ``results.json`` and the report (``report.md``, plots); returns the results."""
    results = {"runs": runs, "baselines": base, "config": cfg.to_dict()}
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
    config_flags.DEFINE_config_file("config", "experiments/configs/prorl.py:ml1m_cpu",
                                    "ProRL experiment config.")
    flags.DEFINE_string("out_dir", "runs/prorl", "Output directory (stages cached here).")
    flags.DEFINE_bool("report_only", False,
                      "Only rewrite the report from the finished runs in --out_dir.")
    app.run(main)
