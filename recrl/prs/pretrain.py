"""Supervised pretraining of the path policy on mined demonstration paths.

Token cross-entropy over every action of a demonstration (its intermediates, then EOS when
the path is shorter than ``T``; the target is in the prompt only, never a label, and is out
of the action space as in sampling, see :mod:`recrl.prs.rollout`); AdamW with a cosine
schedule and gradient clipping (the paper's recipe: lr 5e-3, weight decay 0.05, clip 1.0).
Pure jitted steps over ``nnx.split(policy, nnx.Param, ...)``, the parameters and optimiser
state donated to each step.

Data-parallel (``pretrain(..., mesh=...)``): parameters and optimiser state replicated over
the mesh, every batch split over its ``data`` axis, each process building only its own rows
(:func:`recrl.parallel.global_rows`). A batch whose row count does not divide over the
devices (fewer training paths than ``batch_size``, the last validation chunk) is padded with
masked rows (``weight`` 0, out of the loss and the token count), never replicated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from tqdm.auto import tqdm

from recrl import optim, parallel
from recrl.prs.policy import PathPolicy, action_log_probs, action_tokens, path_logits


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Supervised pretraining hyper-parameters (defaults: the paper's recipe)."""

    epochs: int = 5
    batch_size: int = 256
    lr: float = 5e-3
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"invalid pretraining config: {self}")


def demo_batch(paths: Any, pad: int, idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Turns mined :class:`recrl.data.PathSamples` rows into policy inputs (PAD remapped).

    Raises:
      ValueError: a path contains its own target (the target is never imitated as an
        action; mine with :func:`recrl.data.prorl.mine_paths`).
    """
    sel = slice(None) if idx is None else idx
    path = np.asarray(paths.path[sel])
    lengths = np.asarray(paths.lengths[sel])
    target = np.asarray(paths.target[sel])
    inside = np.any((path == target[:, None])
                    & (np.arange(path.shape[1])[None] < lengths[:, None]), axis=1)
    if inside.any():
        row = int(np.flatnonzero(inside)[0])
        raise ValueError(f"{int(inside.sum())} demonstration paths contain their target as an "
                         f"action (first: batch row {row}, target {int(target[row])}); the "
                         "path must be the intermediates only")
    return {
        "history": np.asarray(paths.history[sel], np.int32),
        "target": np.asarray(paths.target[sel], np.int32),
        "path": np.where(path < 0, pad, path).astype(np.int32),
        "lengths": lengths.astype(np.int32),
    }


def sequence_nll(policy: PathPolicy, batch: dict, rngs: nnx.Rngs | None = None
                 ) -> tuple[jax.Array, jax.Array]:
    """Mean token NLL of the demonstrations' actions and the action count (rows with
    ``batch["weight"]`` 0, padding of a data-parallel batch, count for nothing)."""
    cfg = policy.cfg
    logits = path_logits(policy, batch["history"], batch["target"], batch["path"],
                         batch["lengths"], rngs)
    acts = action_tokens(cfg, batch["path"], batch["lengths"])
    _, taken = action_log_probs(logits, acts, target=batch["target"])
    mask = (acts != cfg.pad).astype(jnp.float32)
    if "weight" in batch:
        mask = mask * batch["weight"][:, None]
    return -jnp.sum(taken * mask) / jnp.maximum(mask.sum(), 1.0), mask.sum()


def _make_steps(policy: PathPolicy, tx: optax.GradientTransformation
                ) -> tuple[Callable, Callable, Any]:
    """Jitted ``(train step, validation NLL, initial params)`` over the policy's params; the
    step donates the parameters and optimiser state it is given."""
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch, key):
        def loss_fn(p):
            return sequence_nll(nnx.merge(graphdef, p, rest), batch, nnx.Rngs(dropout=key))[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def val_nll(params, batch):
        return sequence_nll(nnx.merge(graphdef, params, rest), batch)

    return step, val_nll, params


def _put(make: Callable[[np.ndarray], dict], idx: np.ndarray, mesh: Any) -> dict:
    """The batch ``make(idx)`` of rows ``idx``: host arrays without a mesh; on the mesh
    ``idx`` is padded with masked rows (``weight`` 0, a copy of row ``idx[0]``) to a
    multiple of the devices and each process builds only its own rows."""
    if mesh is None:
        return make(idx)
    idx = np.pad(idx, (0, -len(idx) % mesh.shape[parallel.DATA_AXIS]), constant_values=-1)

    def rows(r: slice) -> dict:
        sel = idx[r]
        return {**make(np.where(sel < 0, idx[0], sel)), "weight": (sel >= 0).astype(np.float32)}

    return parallel.global_rows(rows, len(idx), mesh)


def _mean_nll(val_nll: Callable, params: Any, val_batch: dict, mesh: Any = None,
              chunk: int = 4096) -> float:
    """Token NLL of the validation paths, in chunks of ``chunk`` paths."""
    total, count = 0.0, 0.0
    n = len(val_batch["lengths"])
    for j in range(0, n, chunk):
        part = _put(lambda i: {k: v[i] for k, v in val_batch.items()},
                    np.arange(j, min(j + chunk, n)), mesh)
        nll, cnt = val_nll(params, part)
        total += float(nll) * float(cnt)
        count += float(cnt)
    return total / max(count, 1.0)


def _host(params: Any, mesh: Any) -> Any:
    """Copies of the parameters for the policy module (the next step donates ``params``): on
    the mesh single-device ones (the rest of the pipeline replicates them where it needs)."""
    if mesh is None:
        return jax.tree.map(jnp.copy, params)
    return jax.tree.map(jnp.asarray, parallel.to_host(params))


def _run_epoch(step: Callable, params: Any, opt_state: Any, key: jax.Array, order: np.ndarray,
               rows: int, steps: int, make: Callable, mesh: Any, desc: str) -> tuple:
    """``steps`` optimiser steps over ``order`` in batches of ``rows`` paths; returns
    ``(params, opt_state, key, losses)``."""
    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False)
    for i in bar:
        key, sub = jax.random.split(key)
        batch = _put(make, order[i * rows:(i + 1) * rows], mesh)
        params, opt_state, loss = step(params, opt_state, batch, sub)
        losses.append(float(loss))
        if i % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return params, opt_state, key, losses


def pretrain(policy: PathPolicy, train_paths: Any, val_paths: Any, cfg: PretrainConfig,
             validate: Callable[[PathPolicy], dict] | None = None, mesh: Any = None
             ) -> tuple[PathPolicy, list]:
    """Trains ``policy`` in place on ``train_paths``; returns it and per-epoch metrics.

    Args:
      policy: a fresh :class:`PathPolicy`.
      train_paths: mined training paths (:class:`recrl.data.PathSamples`).
      val_paths: validation paths (token NLL each epoch).
      cfg: hyper-parameters.
      validate: optional extra validation (e.g. greedy IoI with the simulator), called
        after each epoch with the current policy.
      mesh: optional data mesh: each step runs data-parallel (see the module docstring);
        the batches, keys and results are those of one device, up to float summation order.
    """
    n = len(train_paths.lengths)
    if n == 0:
        raise ValueError("no training paths to pretrain on")
    pad = policy.cfg.pad
    steps_per_epoch = max(n // cfg.batch_size, 1)
    tx = optim.make_optimizer(
        optax.cosine_decay_schedule(cfg.lr, max(steps_per_epoch * cfg.epochs, 1)),
        grad_clip=cfg.grad_clip, weight_decay=cfg.weight_decay)
    step, val_nll, params = _make_steps(policy, tx)
    opt_state = tx.init(params)
    # fresh buffers: the step donates them, and the module keeps its own until each epoch ends
    params, opt_state = (jax.tree.map(jnp.copy, (params, opt_state)) if mesh is None else
                         parallel.replicate((params, opt_state), mesh))
    if mesh is not None:
        parallel.log_batch("pretrain", (min(cfg.batch_size, n),), mesh)
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.key(cfg.seed)
    history = []
    val_batch = demo_batch(val_paths, pad)
    for epoch in range(cfg.epochs):
        params, opt_state, key, losses = _run_epoch(
            step, params, opt_state, key, rng.permutation(n), cfg.batch_size, steps_per_epoch,
            lambda i: demo_batch(train_paths, pad, i), mesh,
            f"pretrain epoch {epoch + 1}/{cfg.epochs}")
        row = {"epoch": epoch + 1, "train_nll": float(np.mean(losses)),
               "val_nll": _mean_nll(val_nll, params, val_batch, mesh)}
        nnx.update(policy, _host(params, mesh))
        if validate is not None:
            row.update(validate(policy))
        logging.info("pretrain %s", row)
        history.append(row)
        if not math.isfinite(row["train_nll"]):
            raise FloatingPointError(f"pretraining diverged at epoch {epoch + 1}: {row}")
    return policy, history
