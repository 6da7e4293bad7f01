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
from tqdm.auto import tqdm

from experiments import prorl_report
from experiments.configs import validate as config_check
from recrl import parallel, rundir
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
    log: Any  # rundir.MetricsLog of metrics.jsonl


def load_data(cfg: Any) -> Any:
    """MovieLens (fetched on first use) or synthetic data, preprocessed for ProRL."""
    if cfg.dataset == "synthetic":
        from recrl.data import synthetic_movielens

        ml = synthetic_movielens(num_users=150, num_items=120, seed=0)
    else:
        ml = load_movielens(cfg.dataset, download=True)
    d = cfg.data
    return prepare_prorl(ml, ProRLConfig(min_user=d.min_user, min_item=d.min_item,
                                         seed=d.seed, history=d.history, max_len=d.max_len,
                                         long_runs=d.get("long_runs", "truncate")))


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
    cap = scfg.get("max_seconds", 0.0) or None
    model, metrics = train_simulator(
        data, cfg, epochs=scfg.epochs, batch_size=scfg.get("batch_size", 128), seed=seed,
        patience=scfg.patience, learning_rate=scfg.get("lr", 1e-3), max_seconds=cap,
        mesh=mesh)
    if cap is not None and metrics["epochs_run"] < scfg.epochs and metrics["train_seconds"] > cap:
        logging.warning(
            "%s: the time cap (max_seconds=%s) stopped training after %d of %d epochs; the "
            "result now depends on this machine's speed (the same command elsewhere trains "
            "longer). Set max_seconds=0 for a budget in epochs only.", kind, cap,
            metrics["epochs_run"], scfg.epochs)
    save_simulator(path, model, cfg, metrics=metrics)
    logging.info("%s: %s", kind, json.dumps({k: metrics[k] for k in ("val", "test")}))
    return model


def prompts_of(paths: Any, limit: int = 0, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(history, target, user)`` of a split's prompts: all of them, or ``limit`` of them
    spread evenly over users (:func:`recrl.prs.evaluate.stratified_prompts`)."""
    idx = ev.stratified_prompts(np.asarray(paths.user), limit, seed=seed)
    return (np.asarray(paths.history, np.int32)[idx], np.asarray(paths.target, np.int32)[idx],
            np.asarray(paths.user, np.int32)[idx])


def rl_config(c: Any, method: str, steps: int) -> rl.RLConfig:
    """The RL hyper-parameters of ``method`` from the launcher config; the warm-up is
    ``warmup_frac`` of the schedule's ``schedule_epochs`` (default: the run's epochs)."""
    r = c.rl
    schedule = r.get("schedule_epochs", 0) or r.epochs
    return rl.RLConfig(
        method=method, samples=r.samples, lr=r.lr, kl_weight=r.kl_weight,
        warmup_steps=int(r.warmup_frac * steps * schedule),
        weight_decay=r.get("weight_decay", 0.05), reward_weights=tuple(r.reward_weights),
        micro_batches=r.get("micro_batches", 1), sample_std=r.get("sample_std", True),
        stats_real_items=r.get("stats_real_items", True),
        mask_target=r.get("mask_target", True))


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
    val_h, val_t, _ = prompts_of(ctx.data.paths["val"], c.eval.val_prompts)

    def validate(p: PathPolicy) -> dict:
        m = ev.evaluate_policy(p, {"sasrec": ctx.sims["sasrec"]}, val_h, val_t, ctx.genres,
                               mask_target=c.rl.get("mask_target", True))
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
    train_h, train_t, _ = prompts_of(ctx.data.paths["train"])
    val_h, val_t, _ = prompts_of(ctx.data.paths["val"], c.eval.val_prompts)
    steps = r.steps_per_epoch or len(train_t) // r.prompts
    if steps < 1 or len(train_t) < r.prompts:
        raise ValueError(f"{len(train_t)} training prompts cannot fill a batch of {r.prompts}")
    rcfg = rl_config(c, method, steps)
    policy = nnx.clone(policy0)
    state, graph = rl.init_state(policy, rcfg)
    sim_state = nnx.split(ctx.sims["sasrec"])
    score = lambda s, *a: simulator.score_paths((sim_state[0], s), *a)
    step_fn = rl.make_train_step(graph, score, rcfg)
    # one atomic save per epoch holds the RL state and the best-so-far parameters
    ckpt = Checkpointer(run_dir / "ckpt", max_to_keep=2)
    meta = {"epoch": 0, "history": [], "best_val": -1e30, "best_epoch": 0}
    best = jax.device_get(state.params)
    if ckpt.latest_step() is not None:
        saved, meta = ckpt.restore(like={"rl": state, "best": best})
        state, best = saved["rl"], saved["best"]
        logging.info("%s: resuming after epoch %d", run, meta["epoch"])
    # replayed steps are logged again: drop what a killed attempt logged after the checkpoint
    ctx.log.drop(lambda rec: rec.get("run") == run and rec.get("epoch", 0) > meta["epoch"])
    state = parallel.replicate(state, ctx.mesh)
    sim_rep = parallel.replicate(sim_state[1], ctx.mesh)
    parallel.check_divisible({"rl.prompts": r.prompts}, ctx.mesh)
    parallel.log_batch(f"{run} prompts", (r.prompts, *train_h.shape[1:]), ctx.mesh)
    put = lambda x: parallel.shard_batch(x, ctx.mesh)  # gradient diagnostics' batches
    step_fn = jax.jit(step_fn, donate_argnums=0)  # the old train state is never read again
    tb = (rundir.summary_writer(ctx.out / "tb" / run, purge_step=meta["epoch"] * steps)
          if parallel.is_writer() else None)
    diag_batches = r.get("grad_diag_batches", 0)
    grad_fns = ((rl.make_gradient_fn(graph, score, rcfg),
                 rl.make_gradient_fn(graph, score, dataclasses.replace(rcfg, method="psae_loo")))
                if diag_batches else None)
    if diag_batches and "grad_diag" not in meta:
        meta["grad_diag"] = {"start": gradient_diagnostics(ctx, grad_fns, state, sim_rep, put,
                                                           seed, diag_batches)}
    for epoch in range(meta["epoch"], r.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(train_t))
        sums: dict[str, float] = {}
        rows: list[dict] = []
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
            ctx.log.write({"run": run, "method": method, "seed": seed,
                           "epoch": epoch + 1, "step": gstep, **m})
            for k, v in m.items():
                if tb is not None:
                    tb.add_scalar(f"train/{k}", v, gstep)  # (no '@' in these names)
                sums[k] = sums.get(k, 0.0) + v / steps
            rows.append(m)
            if tb is not None:
                tb.flush()
        if epoch == 0:
            state = rl.freeze_stats(state)
        nnx.update(policy, jax.device_get(state.params))
        val = ev.evaluate_policy(policy, {"sasrec": ctx.sims["sasrec"]}, val_h, val_t,
                                 ctx.genres, mask_target=rcfg.mask_target)
        row = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in sums.items()},
               **{f"val_{k.split('/')[1]}": v for k, v in val.items()}}
        for k, v in row.items():
            if tb is not None:
                tb.add_scalar(f"epoch/{k.replace('@', '_at_')}", v, epoch + 1)
        row["blocks"] = diagnostic_blocks(rows, r.get("diag_every", 10))
        meta["history"].append(row)
        if row["val_ioi@1"] > meta["best_val"]:
            meta.update(best_val=row["val_ioi@1"], best_epoch=epoch + 1)
            best = jax.device_get(state.params)
        meta["epoch"] = epoch + 1
        if tb is not None:
            tb.flush()
        ckpt.save(epoch + 1, {"rl": jax.device_get(state), "best": best}, meta=meta)
        logging.info("%s epoch %d: %s", run, epoch + 1,
                     {k: round(v, 4) for k, v in row.items() if k.startswith("val_")})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    if tb is not None:
        tb.close()
    if diag_batches and "end" not in meta["grad_diag"]:
        meta["grad_diag"]["end"] = gradient_diagnostics(ctx, grad_fns, state, sim_rep, put,
                                                        seed, diag_batches)
    nnx.update(policy, best)
    mean, std = rl.src_mean_std(state.stats, rcfg.sample_std)
    result = {"method": method, "seed": seed, "best_epoch": meta["best_epoch"],
              "history": meta["history"], "skipped": int(state.skipped),
              "src_mean": np.asarray(mean).tolist(), "src_std": np.asarray(std).tolist(),
              "grad_diag": meta.get("grad_diag", {}),
              "test": test_metrics(ctx, policy, seed, run_dir / "test_prompts.npz")}
    if parallel.is_writer():
        tmp = run_dir / "result.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(run_dir / "result.json")
    ckpt.close()
    return result


DIAGNOSTICS = ("length", "adv_var", "adv_var_reinforce", "target_share", "kl",
               "centred_return")


def diagnostic_blocks(rows: list[dict], every: int) -> dict[str, list[float]]:
    """The epoch's per-update diagnostics as means over consecutive blocks of ``every``
    updates (the last block may be shorter), plus the epoch's first update
    (``first_<key>``: REINFORCE's first-update advantage variance normalises the others')."""
    keys = [k for k in rows[0] if k in DIAGNOSTICS or k.startswith("centred_pos")]
    every = max(int(every), 1)
    out: dict[str, list[float]] = {
        k: [float(np.mean([r[k] for r in rows[i:i + every]]))
            for i in range(0, len(rows), every)] for k in keys}
    out.update({f"first_{k}": [float(rows[0][k])] for k in ("adv_var", "adv_var_reinforce")})
    return out


def gradient_diagnostics(ctx: Context, grad_fns: tuple[Callable, Callable], state: rl.RLState,
                         sim_state: Any, put: Callable[[Any], Any], seed: int,
                         batches: int) -> dict:
    """Cosine and SNR of a method's gradient over ``batches`` training batches against a
    reference: the unbiased ``psae_loo`` estimator (same centred rewards) averaged over
    ``2 × batches`` other batches (:func:`recrl.prs.rl.gradient_diagnostics`).

    Args:
      grad_fns: ``(method, reference)`` from :func:`recrl.prs.rl.make_gradient_fn`.
    """
    c = ctx.cfg
    train_h, train_t, _ = prompts_of(ctx.data.paths["train"])
    rng = np.random.default_rng([seed, 7919])

    def estimates(fn: Callable, n: int, offset: int) -> np.ndarray:
        out = []
        for i in range(n):
            idx = rng.choice(len(train_t), c.rl.prompts, replace=False)
            key = jax.random.fold_in(jax.random.key(seed + 7919), offset + i)
            out.append(np.asarray(fn(state, sim_state, put(train_h[idx]), put(train_t[idx]),
                                     key)))
        return np.stack(out)

    ref = estimates(grad_fns[1], 2 * batches, 0).mean(0)
    return rl.gradient_diagnostics(estimates(grad_fns[0], batches, 10_000), ref)


def test_metrics(ctx: Context, policy: PathPolicy, seed: int, per_prompt_file: Path | None = None
                 ) -> dict:
    """Test-split metrics (mined targets and random unseen targets), both simulators, on
    every test prompt (or ``eval.max_prompts`` spread over users); the per-prompt values and
    users go to ``per_prompt_file`` (``.npz``) for user-clustered intervals."""
    c = ctx.cfg
    mask = c.rl.get("mask_target", True)
    th, tt, tu = prompts_of(ctx.data.paths["test"], c.eval.max_prompts)
    out, per = ev.evaluate_policy(policy, ctx.sims, th, tt, ctx.genres, k=c.eval.k, seed=seed,
                                  mask_target=mask, per_prompt=True)
    unseen = random_unseen_targets(ctx.data, "test", seed=seed)
    uh, ut, _ = prompts_of(unseen, c.eval.max_prompts)
    out.update({f"unseen/{k}": v for k, v in
                ev.evaluate_policy(policy, ctx.sims, uh, ut, ctx.genres,
                                   mask_target=mask).items()})
    if per_prompt_file is not None:
        save_per_prompt(per_prompt_file, tu, per)
    return out


def save_per_prompt(path: Path, users: np.ndarray, values: dict[str, np.ndarray]) -> None:
    """Per-prompt metrics and the prompts' users (``user`` key) as one ``.npz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, user=users, **{k.replace("/", "|"): v for k, v in values.items()})


def load_per_prompt(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(users, {metric: [N]})`` written by :func:`save_per_prompt`."""
    with np.load(path) as z:
        return z["user"], {k.replace("|", "/"): z[k] for k in z.files if k != "user"}


def baselines(ctx: Context, policy0: PathPolicy) -> dict:
    """Test metrics of the pretrained policy, of the mined test paths themselves
    (``mined``) and of the heuristic baselines (per-prompt values in
    ``baselines/<name>.npz``)."""
    c = ctx.cfg
    path = ctx.out / "baselines.json"
    if path.exists():
        return json.loads(path.read_text())
    th, tt, tu = prompts_of(ctx.data.paths["test"], c.eval.max_prompts)
    res = {}
    for name in c.baselines:
        t0 = time.perf_counter()
        per_file = ctx.out / "baselines" / f"{name}.npz"
        if name == "pretrained":
            res[name] = test_metrics(ctx, policy0, 0, per_file)
        elif name == "mined":  # the demonstrations themselves (intermediates, no target)
            tp = ctx.data.paths["test"]
            idx = ev.stratified_prompts(np.asarray(tp.user), c.eval.max_prompts)
            p = np.where(tp.path[idx] < 0, 0, tp.path[idx])
            res[name], per = ev.evaluate_paths(ctx.sims, th, tt, p, tp.lengths[idx], ctx.genres,
                                               ctx.data.sequences.num_items, per_prompt=True)
            save_per_prompt(per_file, tu, per)
        else:
            gen = ev.ipg_paths if name == "ipg" else ev.greedy_sequential_paths
            p, lengths = gen(ctx.sims["sasrec"], th, tt, c.data.max_len)
            res[name], per = ev.evaluate_paths(ctx.sims, th, tt, p, lengths, ctx.genres,
                                               ctx.data.sequences.num_items, per_prompt=True)
            save_per_prompt(per_file, tu, per)
        logging.info("baseline %s in %.1fs: %s", name, time.perf_counter() - t0, res[name])
    if parallel.is_writer():
        path.with_suffix(".tmp").write_text(json.dumps(res, indent=1))
        path.with_suffix(".tmp").replace(path)  # atomic: a kill leaves no half-written file
    return res


def run(cfg: Any, out_dir: str, on_epoch_end: Callable[[str, int], None] | None = None
        ) -> dict:
    """The whole pipeline; returns ``{"runs": [...], "baselines": {...}}``."""
    mesh = parallel.startup(cfg)  # jax.distributed first, then the global mesh
    config_check.validate_prorl(cfg)
    parallel.check_divisible({"rl.prompts": cfg.rl.prompts,
                              "sim.batch_size": cfg.sim.get("batch_size", 128)}, mesh)
    out = config_check.preflight(cfg, out_dir, config_check.validate_prorl)
    if parallel.is_writer():
        rundir.guard_stages(out, cfg, config_check.prorl_stages(cfg), config_check.PRORL_FREE,
                            retrain=cfg.get("retrain_changed", False))
        (out / "config.json").write_text(cfg.to_json(indent=1))
    t0 = time.perf_counter()
    data = parallel.writer_first("data", lambda: load_data(cfg))
    logging.info("data ready in %.1fs: %d train / %d val / %d test paths",
                 time.perf_counter() - t0, *(len(data.paths[s].lengths)
                                             for s in ("train", "val", "test")))
    sims = {"sasrec": get_simulator(out, data, "sasrec", cfg.sim, mesh=mesh)}
    ecfg = ml_collections.ConfigDict({**cfg.sim.to_dict(), **cfg.evaluator.to_dict()})
    sims[cfg.evaluator.kind] = get_simulator(out, data, cfg.evaluator.kind, ecfg, mesh=mesh)
    with rundir.MetricsLog(out / "metrics.jsonl", enabled=parallel.is_writer()) as log:
        # coherence over every genre (the reference's metric); the mining oracle ignores Drama
        masks = data.all_genre_masks if cfg.eval.get("coherence_all_genres", True) else \
            data.genre_masks
        ctx = Context(cfg, out, data, genre_matrix(masks), sims, mesh, log)
        policy0 = pretrained_policy(ctx)
        base = baselines(ctx, policy0)
        runs = []
        for seed in cfg.seeds:  # seed-major: an interrupted run has every method at some seeds
            for method in cfg.methods:
                cb = None if on_epoch_end is None else (lambda e, m=method: on_epoch_end(m, e))
                runs.append(train_method(ctx, policy0, method, seed, cb))
    return write_results(out, runs, base, cfg)


def user_intervals(out: Path, runs: list[dict], base: dict, cfg: Any) -> dict:
    """User-clustered bootstrap intervals of the test metrics (per-prompt values averaged
    over a method's seeds first) and of the paired differences ProRL − each other system."""
    per: dict[str, tuple[np.ndarray, dict]] = {}
    for name in base:
        f = out / "baselines" / f"{name}.npz"
        if f.exists():
            per[name] = load_per_prompt(f)
    by_method: dict[str, list] = {}
    for r in runs:
        f = out / "rl" / f"{r['method']}_s{r['seed']}" / "test_prompts.npz"
        if f.exists():
            by_method.setdefault(r["method"], []).append(load_per_prompt(f))
    for m, parts in by_method.items():
        users = parts[0][0]
        keys = set.intersection(*(set(v) for _, v in parts))
        per[m] = (users, {k: np.mean([v[k] for _, v in parts], 0) for k in keys})
    keys = [k for k in cfg.eval.get("interval_metrics", INTERVAL_METRICS)]
    boot = dict(n_boot=cfg.eval.get("n_boot", 2000), seed=0)
    res: dict[str, dict] = {"systems": {}, "vs_prorl": {}}
    for name, (users, vals) in per.items():
        res["systems"][name] = {k: ev.cluster_bootstrap(vals[k], users, **boot)
                                for k in keys if k in vals}
    if "prorl" in per:
        users, ref = per["prorl"]
        for name, (u, vals) in per.items():
            if name == "prorl" or not np.array_equal(u, users):
                continue
            res["vs_prorl"][name] = {k: ev.cluster_bootstrap(ref[k] - vals[k], users, **boot)
                                     for k in keys if k in vals and k in ref}
    return res


INTERVAL_METRICS = ("sasrec/ctr@1", "sasrec/coherence@1", "sasrec/ioi@1", "sasrec/ior@1",
                    "sasrec/length@1", "sasrec/has_target@1", "sasrec/length@K",
                    "gru4rec/ioi@1")


def write_results(out: Path, runs: list[dict], base: dict, cfg: Any) -> dict:
    """Writes ``results.json`` and the report (``report.md``, plots); returns the results."""
    results = {"runs": runs, "baselines": base, "config": cfg.to_dict(),
               "intervals": user_intervals(out, runs, base, cfg)}
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
