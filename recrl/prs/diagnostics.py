"""Gradient-quality diagnostics of ProRL's estimators: per-batch policy-gradient estimates
and their cosine / signal-to-noise against a reference gradient (docs/prorl.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from recrl.prs.rl import RLConfig, _make_core


def make_gradient_fn(graph: Any, score_fn: Callable[..., Any], cfg: RLConfig
                     ) -> Callable[..., jax.Array]:
    """Jitted ``grad(state, sim_state, history, target, key) -> [n_params]``: the flattened
    policy-gradient estimate of ``cfg.method`` on one batch (no KL term, no update, the
    SRC statistics read as they are), for :func:`gradient_diagnostics`. An
    :class:`A2CState` also serves a method without critic (the critic is then ignored)."""
    core = _make_core(graph, score_fn, dataclasses.replace(cfg, kl_weight=0.0))

    @jax.jit
    def grad(state, sim_state, history, target, key):
        grads = core(state._replace(collect_stats=jnp.array(False)), sim_state, history,
                     target, key)[0]
        return jax.flatten_util.ravel_pytree(grads)[0]

    return grad


def gradient_diagnostics(grads: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Quality of a gradient estimator from its per-batch estimates.

    Args:
      grads: ``[K, n]`` one estimate per batch (``K >= 2``).
      reference: ``[n]`` a reference gradient (e.g. an unbiased estimator averaged over
        many batches).

    Returns:
      ``{"cosine": mean over batches of cos(g_k, reference), "mean_cosine": cos(mean_k g_k,
      reference), "snr": |mean g|² / mean_k |g_k − mean g|²}``.
    """
    g = np.asarray(grads, np.float64)
    ref = np.asarray(reference, np.float64)
    if g.ndim != 2 or g.shape[0] < 2 or g.shape[1] != ref.shape[-1]:
        raise ValueError(f"grads must be [K >= 2, n] and reference [n]: {g.shape}, {ref.shape}")
    cos = lambda a, b: float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    mean = g.mean(0)
    noise = float(np.mean(np.sum((g - mean) ** 2, 1)))
    return {"cosine": float(np.mean([cos(x, ref) for x in g])),
            "mean_cosine": cos(mean, ref),
            "snr": float(mean @ mean) / max(noise, 1e-30)}
