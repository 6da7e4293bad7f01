"""The supervised fine-tuning loop shared by GORACS (LoRA / full-parameter LM training,
``recrl.coreset.lmrec``) and In-Context RLVR's warm-up (``experiments/icrlvr.py``).

AdamW without weight decay on a caller-given loss over seeded minibatches of the rows of
``data`` (a tuple of ``[B, ...]`` arrays, e.g. ``(tokens, mask, loss_mask)``). The
minibatch of step ``t`` depends only on ``seed`` and ``t``: ``batch_size`` rows drawn
without replacement (with replacement when there are fewer rows than ``batch_size``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from recrl import parallel

#: ``loss_fn(params, frozen, *minibatch) -> scalar``
LossFn = Callable[..., jax.Array]


def adamw(lr: float) -> optax.GradientTransformation:
    """The loop's optimiser: AdamW without weight decay (its state is what a resumed
    fine-tune restores)."""
    return optax.adamw(lr, weight_decay=0.0)


def make_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
              donate_params: bool = False) -> Callable:
    """A jitted ``(params, opt_state, frozen, *minibatch) -> (params, opt_state, loss)``;
    the optimiser state is donated (and the parameters with ``donate_params``)."""
    @functools.partial(jax.jit, donate_argnums=(0, 1) if donate_params else (1,))
    def step(params, opt_state, frozen, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, frozen, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def draw_rows(rng: np.random.Generator, num: int, batch_size: int) -> np.ndarray:
    """One minibatch's row indices (with replacement only when ``num < batch_size``)."""
    return rng.choice(num, batch_size, replace=num < batch_size)


def sft_loop(loss_fn: LossFn, params: Any, frozen: Any, data: tuple[np.ndarray, ...], *,
             steps: int, batch_size: int, lr: float, seed: int = 0,
             mesh: Mesh | None = None, donate_params: bool = False,
             batch_name: str = "batch_size", progress: bool = False,
             desc: str = "fine-tune", opt_state: Any = None, start_step: int = 0,
             on_step: Callable[[int, Any, Any], bool] | None = None,
             losses: list[float] | None = None) -> tuple[Any, list[float]]:
    """Runs up to ``steps`` AdamW steps of ``loss_fn``; returns ``(params, losses)``.

    ``frozen`` is passed to ``loss_fn`` untouched (e.g. the non-LoRA weights). With ``mesh``
    the step is data-parallel: parameters, optimiser state and ``frozen`` replicated, each
    minibatch split over the mesh (each process builds only its rows); ``batch_size`` must
    divide over the devices (the error names ``batch_name``). ``on_step(t, params,
    opt_state)`` is called after step ``t`` (1-based); returning True stops the loop.

    Resuming: with ``start_step = k`` and the ``opt_state`` (:func:`adamw`) and ``params``
    saved after step ``k``, the loop continues with step ``k + 1`` and the same minibatches
    as an uninterrupted run (the first ``k`` draws are replayed, not trained on). Each
    step's loss is appended to ``losses`` (a new list by default; a resumed run passes the
    ``k`` losses it restored), which is returned. :func:`restore_point` reads such a
    resume point back from a ``recrl.checkpoint.Checkpointer``.
    """
    tx = adamw(lr)
    if opt_state is None:
        opt_state = tx.init(params)
    if mesh is not None:
        parallel.check_divisible({batch_name: batch_size}, mesh)
        params, opt_state, frozen = parallel.replicate((params, opt_state, frozen), mesh)
    step = make_step(loss_fn, tx, donate_params=donate_params)
    rng = np.random.default_rng(seed)
    num, losses = data[0].shape[0], [] if losses is None else losses
    for _ in range(start_step):  # the minibatches an interrupted run already trained on
        draw_rows(rng, num, batch_size)
    todo = range(start_step, steps)
    it = tqdm(todo, desc=desc, leave=False) if progress else todo
    for t in it:
        idx = draw_rows(rng, num, batch_size)
        if mesh is None:
            batch = tuple(x[idx] for x in data)
        else:
            batch = parallel.global_rows(lambda r, idx=idx: tuple(x[idx[r]] for x in data),
                                         len(idx), mesh)
        params, opt_state, loss = step(params, opt_state, frozen, *batch)
        losses.append(float(loss))
        if on_step is not None and on_step(t + 1, params, opt_state):
            break
    return params, losses


def restore_point(ckpt: Any, params: Any, lr: float, **extra: Any
                  ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The newest resume point of an :func:`sft_loop` saved in ``ckpt`` (a
    ``recrl.checkpoint.Checkpointer``, or None) as ``{"params", "opt_state", **extra}`` plus
    its JSON ``meta``: ``(arrays, meta)`` restored into the structures of ``params``, the
    :func:`adamw` state of ``params`` and ``extra``; None when nothing is saved. The step
    restored is ``ckpt.restored_step`` (the loop's ``start_step``)."""
    if ckpt is None or ckpt.latest_step() is None:
        return None
    like = {"params": params, "opt_state": adamw(lr).init(params), **extra}
    return ckpt.restore(like)
