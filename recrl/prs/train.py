"""ProRL's RL epoch loop: batches, keys, resume, frozen SRC statistics, best checkpoint.

:func:`train_rl` runs one method for ``epochs`` epochs of :func:`recrl.prs.rl.make_train_step`
updates and returns the validation-selected policy with the run's summary. Everything is
derived from ``(seed, epoch, step)``: the prompt order of an epoch is
``default_rng([seed, epoch])``'s permutation, the sampling key of an update is
``fold_in(fold_in(key(seed), epoch), step)``. One atomic checkpoint per epoch holds the RL
state (optimiser, SRC statistics, step) and the best-so-far parameters, so a killed run
resumes to the uninterrupted run's result; the SRC statistics are gathered during epoch 1
and frozen after it. Per-update metrics go to a :class:`recrl.rundir.MetricsLog` and,
with the per-epoch ones, to TensorBoard (process 0 only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging
from flax import nnx
from tqdm.auto import tqdm

from recrl import parallel, rundir
from recrl.checkpoint import Checkpointer
from recrl.prs import diagnostics, evaluate, rl
from recrl.prs import simulator as simlib
from recrl.prs.policy import PathPolicy

# per-update diagnostics kept per epoch as means over blocks of updates
DIAGNOSTICS = ("length", "adv_var", "adv_var_reinforce", "target_share", "kl",
               "centred_return")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The epoch loop's budget and diagnostics.

    Attributes:
      epochs: RL epochs.
      prompts: ``P`` prompts per update.
      steps_per_epoch: updates per epoch (0: a full pass over the training prompts).
      grad_diag_batches: > 0: gradient cosine / SNR against ``diag_reference`` over this
        many batches at the start and end of the run.
      diag_reference: the reference method of the gradient diagnostics (an unbiased
        estimator, e.g. the methods table's ``psae_loo``).
      diag_every: per-update diagnostics kept as means over blocks of this many updates.
    """

    epochs: int
    prompts: int
    steps_per_epoch: int = 0
    grad_diag_batches: int = 0
    diag_reference: rl.Method | None = None
    diag_every: int = 10

    def steps(self, n_prompts: int) -> int:
        """Updates per epoch over ``n_prompts`` training prompts."""
        steps = self.steps_per_epoch or n_prompts // self.prompts
        if steps < 1 or n_prompts < self.prompts:
            raise ValueError(f"{n_prompts} training prompts cannot fill a batch of "
                             f"{self.prompts}")
        return steps


class Prompts(NamedTuple):
    """Prompts of a split: ``history [N, H]`` and ``target [N]`` (int32)."""

    history: np.ndarray
    target: np.ndarray


@dataclasses.dataclass
class RLRun:
    """One RL run's fixed inputs (what :func:`train_rl` reads but never changes)."""

    name: str  # run label in logs and metrics, e.g. "prorl_s0"
    run_dir: Path  # checkpoints under run_dir / "ckpt"
    seed: int
    rl_cfg: rl.RLConfig
    loop: LoopConfig
    sim: Any  # the frozen SASRec simulator (scores RL rewards and validation)
    train: Prompts
    val: Prompts
    genres: np.ndarray  # [I, 64] genre matrix of the evaluation metrics
    log: Any  # rundir.MetricsLog
    tb_dir: Path | None = None  # TensorBoard events (process 0; None: none)
    mesh: Any = None
    extra: dict = dataclasses.field(default_factory=dict)  # added to every metrics record


class _Loop(NamedTuple):
    """What the loop builds once per run."""

    step_fn: Callable
    grad_fns: tuple | None
    sim_state: Any
    steps: int
    tb: Any


def _restore(run: RLRun, ckpt: Checkpointer, state: Any) -> tuple[Any, Any, dict]:
    """``(state, best params, meta)`` after the last saved epoch (or the initial ones)."""
    meta = {"epoch": 0, "history": [], "best_val": -1e30, "best_epoch": 0}
    best = jax.device_get(state.params)
    if ckpt.latest_step() is not None:
        saved, meta = ckpt.restore(like={"rl": state, "best": best})
        state, best = saved["rl"], saved["best"]
        logging.info("%s: resuming after epoch %d", run.name, meta["epoch"])
    # replayed steps are logged again: drop what a killed attempt logged after the checkpoint
    run.log.drop(lambda rec: rec.get("run") == run.name and rec.get("epoch", 0) > meta["epoch"])
    return state, best, meta


def _build(run: RLRun, graph: Any, meta: dict) -> _Loop:
    """The jitted step, the gradient-diagnostic functions, the simulator, TensorBoard."""
    graphdef, sim_params = nnx.split(run.sim)
    score = lambda s, *a: simlib.score_paths((graphdef, s), *a)
    steps = run.loop.steps(len(run.train.target))
    grad_fns = None
    if run.loop.grad_diag_batches:
        ref = dataclasses.replace(run.rl_cfg, method=run.loop.diag_reference)
        grad_fns = (diagnostics.make_gradient_fn(graph, score, run.rl_cfg),
                    diagnostics.make_gradient_fn(graph, score, ref))
    tb = (rundir.summary_writer(run.tb_dir, purge_step=meta["epoch"] * steps)
          if parallel.is_writer() and run.tb_dir is not None else None)
    return _Loop(rl.make_train_step(graph, score, run.rl_cfg), grad_fns,
                 parallel.replicate(sim_params, run.mesh), steps, tb)


def batch_indices(order: np.ndarray, step: int, prompts: int) -> np.ndarray:
    """The ``step``-th batch of ``prompts`` from an epoch's prompt order (wrapping around)."""
    n = len(order)
    idx = order[(step * prompts) % n:][:prompts]
    if len(idx) < prompts:
        idx = np.concatenate([idx, order[: prompts - len(idx)]])
    return idx


def update_key(seed: int, epoch: int, step: int) -> jax.Array:
    """The sampling key of update ``step`` of ``epoch``."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), step)


def _log_update(run: RLRun, loop: _Loop, m: dict, gstep: int, epoch: int) -> None:
    run.log.write({"run": run.name, **run.extra, "seed": run.seed, "epoch": epoch + 1,
                   "step": gstep, **m})
    if loop.tb is not None:
        for k, v in m.items():
            loop.tb.add_scalar(f"train/{k}", v, gstep)  # (no '@' in these names)
        loop.tb.flush()


def _train_epoch(run: RLRun, loop: _Loop, state: Any, epoch: int) -> tuple[Any, list[dict]]:
    """One epoch of updates; returns the state and each update's metrics."""
    train, P = run.train, run.loop.prompts
    order = np.random.default_rng([run.seed, epoch]).permutation(len(train.target))
    rows: list[dict] = []
    for s in tqdm(range(loop.steps), desc=f"{run.name} epoch {epoch + 1}/{run.loop.epochs}",
                  leave=False):
        idx = batch_indices(order, s, P)
        # each process builds only its rows of the (seed, epoch, step)-ordered batch
        hist, tgt = parallel.global_rows(
            lambda rows, idx=idx: (train.history[idx[rows]], train.target[idx[rows]]), P,
            run.mesh)
        state, m = loop.step_fn(state, loop.sim_state, hist, tgt, update_key(run.seed, epoch, s))
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        if not m["finite"]:
            logging.warning("%s: skipped a batch with non-finite rewards (total %d)", run.name,
                            int(state.skipped))
        _log_update(run, loop, m, epoch * loop.steps + s, epoch)
        rows.append(m)
    return state, rows


def validate(run: RLRun, policy: PathPolicy) -> dict[str, float]:
    """Validation metrics with the SASRec simulator, as ``{"ioi@1": ..., ...}``."""
    val = evaluate.evaluate_policy(policy, {"sasrec": run.sim}, run.val.history,
                                   run.val.target, run.genres,
                                   mask_target=run.rl_cfg.mask_target, mesh=run.mesh)
    return {k.split("/")[1]: v for k, v in val.items()}


def _epoch_row(run: RLRun, loop: _Loop, rows: list[dict], val: dict, epoch: int) -> dict:
    """The epoch's history row: mean training metrics, validation, diagnostic blocks."""
    sums: dict[str, float] = {}
    for m in rows:
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v / loop.steps
    row = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in sums.items()},
           **{f"val_{k}": v for k, v in val.items()}}
    if loop.tb is not None:
        for k, v in row.items():
            loop.tb.add_scalar(f"epoch/{k.replace('@', '_at_')}", v, epoch + 1)
        loop.tb.flush()
    row["blocks"] = diagnostic_blocks(rows, run.loop.diag_every)
    return row


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


def gradient_diagnostics(run: RLRun, grad_fns: tuple[Callable, Callable], state: Any,
                         sim_state: Any) -> dict:
    """Cosine and SNR of a method's gradient over ``grad_diag_batches`` training batches
    against a reference: the unbiased estimator of ``diag_reference`` (same centred
    rewards) averaged over twice as many other batches
    (:func:`recrl.prs.diagnostics.gradient_diagnostics`).

    Args:
      grad_fns: ``(method, reference)`` from :func:`recrl.prs.diagnostics.make_gradient_fn`.
    """
    train, batches, seed = run.train, run.loop.grad_diag_batches, run.seed
    rng = np.random.default_rng([seed, 7919])
    put = lambda x: parallel.shard_batch(x, run.mesh)

    def estimates(fn: Callable, n: int, offset: int) -> np.ndarray:
        out = []
        for i in range(n):
            idx = rng.choice(len(train.target), run.loop.prompts, replace=False)
            key = jax.random.fold_in(jax.random.key(seed + 7919), offset + i)
            out.append(np.asarray(fn(state, sim_state, put(train.history[idx]),
                                     put(train.target[idx]), key)))
        return np.stack(out)

    ref = estimates(grad_fns[1], 2 * batches, 0).mean(0)
    return diagnostics.gradient_diagnostics(estimates(grad_fns[0], batches, 10_000), ref)


def _end_epoch(run: RLRun, loop: _Loop, policy: PathPolicy, state: Any, best: Any,
               meta: dict, rows: list[dict], epoch: int) -> tuple[Any, Any]:
    """Freezes the SRC statistics after epoch 1, validates, keeps the best parameters and
    saves the epoch's checkpoint; returns ``(state, best)``."""
    if epoch == 0:
        state = rl.freeze_stats(state)
    nnx.update(policy, jax.device_get(state.params))
    row = _epoch_row(run, loop, rows, validate(run, policy), epoch)
    meta["history"].append(row)
    if row["val_ioi@1"] > meta["best_val"]:
        meta.update(best_val=row["val_ioi@1"], best_epoch=epoch + 1)
        best = jax.device_get(state.params)
    meta["epoch"] = epoch + 1
    return state, best


def train_rl(run: RLRun, policy0: PathPolicy,
             on_epoch_end: Callable[[int], None] | None = None) -> tuple[PathPolicy, dict]:
    """One resumable RL run from the pretrained ``policy0`` (also the KL reference).

    Returns:
      ``(policy, summary)``: a copy of ``policy0`` holding the validation-selected (best
      ``val_ioi@1``) parameters, and ``{"best_epoch", "history", "skipped", "src_mean",
      "src_std", "grad_diag"}``.
    """
    policy = nnx.clone(policy0)
    state, graph = rl.init_state(policy, run.rl_cfg)
    ckpt = Checkpointer(run.run_dir / "ckpt", max_to_keep=2)
    state, best, meta = _restore(run, ckpt, state)
    state = parallel.replicate(state, run.mesh)
    parallel.check_divisible({"rl.prompts": run.loop.prompts}, run.mesh)
    parallel.log_batch(f"{run.name} prompts", (run.loop.prompts, *run.train.history.shape[1:]),
                       run.mesh)
    loop = _build(run, graph, meta)
    if loop.grad_fns and "grad_diag" not in meta:
        meta["grad_diag"] = {"start": gradient_diagnostics(run, loop.grad_fns, state,
                                                           loop.sim_state)}
    for epoch in range(meta["epoch"], run.loop.epochs):
        state, rows = _train_epoch(run, loop, state, epoch)
        state, best = _end_epoch(run, loop, policy, state, best, meta, rows, epoch)
        ckpt.save(epoch + 1, {"rl": jax.device_get(state), "best": best}, meta=meta)
        logging.info("%s epoch %d: %s", run.name, epoch + 1, {
            k: round(v, 4) for k, v in meta["history"][-1].items() if k.startswith("val_")})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    if loop.tb is not None:
        loop.tb.close()
    if loop.grad_fns and "end" not in meta["grad_diag"]:
        meta["grad_diag"]["end"] = gradient_diagnostics(run, loop.grad_fns, state,
                                                        loop.sim_state)
    ckpt.close()
    nnx.update(policy, best)
    mean, std = rl.src_mean_std(state.stats, run.rl_cfg.sample_std)
    return policy, {"best_epoch": meta["best_epoch"], "history": meta["history"],
                    "skipped": int(state.skipped), "src_mean": np.asarray(mean).tolist(),
                    "src_std": np.asarray(std).tolist(), "grad_diag": meta.get("grad_diag", {})}
