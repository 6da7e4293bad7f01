"""Evaluation of path generators with a frozen simulator, and two heuristic baselines.

Metrics @1 use greedy decoding; @K take, per prompt, the best of ``K`` sampled paths by
each metric (the best path for IoI need not be the best for CTR). Path diversity is
``1 −`` the mean pairwise item-Jaccard of the ``K`` sampled paths of a prompt.

Baselines (no learning):

- **IPG** (Iterative Preference Guidance): at each step take the simulator's top-``k``
  candidates and pick the one maximising ``P(i|S) · (e_T·e_u' − e_T·e_u)`` with the
  simulated user update ``e_u' = γ e_u + (1 − γ) e_i`` (γ = 0.8).
- **Greedy sequential**: at each step take the top-``k`` candidates and pick the one whose
  embedding is closest (dot product) to the target's. Both stop at the target or at ``T``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recrl.prs import simulator as simlib
from recrl.prs.policy import PathPolicy
from recrl.prs.rewards import diversity, path_metrics
from recrl.prs.rollout import generate

METRICS = ("ctr", "coherence", "ioi", "ior", "length")


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def score_generated(sim: Any, history: jax.Array, target: jax.Array, path: jax.Array,
                    lengths: jax.Array, genres: jax.Array, num_items: int) -> dict:
    """Per-path metrics (arrays ``[B]``) of generated paths under ``sim``."""
    safe = jnp.where(path < num_items, path, 0)
    scores = simlib.score_paths(sim, history, safe, lengths, target)
    m = path_metrics(scores, safe, lengths, target, genres)
    return {k: np.asarray(getattr(m, k)) for k in METRICS}


def evaluate_policy(policy: PathPolicy, sims: dict[str, Any], history: np.ndarray,
                    target: np.ndarray, genres: np.ndarray, *, k: int = 0, seed: int = 0,
                    batch_size: int = 512) -> dict[str, float]:
    """Mean metrics @1 (greedy) and, with ``k > 0``, @K and diversity, for each simulator.

    Returns:
      ``{"<sim>/<metric>@1": value, "<sim>/<metric>@K": value, "diversity@K": value}``.
    """
    graphdef, state = nnx.split(policy)
    n_items = policy.cfg.num_items

    @jax.jit
    def greedy(state, h, t):
        return generate(nnx.merge(graphdef, state), h, t, None, greedy=True)

    @jax.jit
    def sample(state, h, t, key):
        return generate(nnx.merge(graphdef, state), jnp.repeat(h, k, 0), jnp.repeat(t, k, 0),
                        key)

    acc: dict[str, list] = {}
    key = jax.random.key(seed)
    g = jnp.asarray(genres)
    for sl in _batches(len(target), batch_size):
        h, t = jnp.asarray(history[sl]), jnp.asarray(target[sl])
        out = greedy(state, h, t)
        for name, sim in sims.items():
            for m, v in score_generated(sim, h, t, out.path, out.lengths, g, n_items).items():
                acc.setdefault(f"{name}/{m}@1", []).append(v)
        if k:
            key, sub = jax.random.split(key)
            s = sample(state, h, t, sub)
            b = h.shape[0]
            acc.setdefault("diversity@K", []).append(np.asarray(
                diversity(s.path.reshape(b, k, -1), s.lengths.reshape(b, k), n_items)))
            hk, tk = jnp.repeat(h, k, 0), jnp.repeat(t, k, 0)
            for name, sim in sims.items():
                per = score_generated(sim, hk, tk, s.path, s.lengths, g, n_items)
                for m, v in per.items():
                    best = v.reshape(b, k).max(1) if m != "length" else v.reshape(b, k).mean(1)
                    acc.setdefault(f"{name}/{m}@K", []).append(best)
    return {name: float(np.mean(np.concatenate(v))) for name, v in acc.items()}


def _heuristic_paths(sim: Any, history: np.ndarray, target: np.ndarray, max_len: int,
                     pick: Callable[..., jax.Array], top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Shared loop of the heuristic baselines: extend every path by one candidate per step."""
    model = sim if not isinstance(sim, tuple) else nnx.merge(*sim)
    emb = model.item_embeddings()
    b, h = history.shape
    seq = np.concatenate([history, np.zeros((b, max_len), history.dtype)], 1)
    lengths = np.zeros(b, np.int32)
    done = np.zeros(b, bool)
    for t in range(max_len):
        cur = jnp.asarray(seq[:, : h + t])
        seq_len = jnp.full((b,), h + t)
        logits = simlib.next_item_logits(sim, cur, seq_len)
        e_u = simlib.sequence_representation(sim, cur, seq_len)
        seen = jnp.zeros(logits.shape, bool).at[jnp.arange(b)[:, None], cur].set(True)
        logits = jnp.where(seen, -jnp.inf, logits)
        top = jax.lax.top_k(logits, top_k)[1]  # [B, k]
        choice = np.asarray(pick(logits, top, e_u, emb, jnp.asarray(target)))
        seq[:, h + t] = np.where(done, 0, choice)
        lengths += ~done
        done |= choice == target
    path = seq[:, h:]
    return path, lengths


def ipg_paths(sim: Any, history: np.ndarray, target: np.ndarray, max_len: int = 10,
              top_k: int = 20, gamma: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """IPG heuristic paths (see the module docstring)."""

    def pick(logits, top, e_u, emb, tgt):
        p = jnp.take_along_axis(jax.nn.softmax(logits, -1), top, -1)
        e_t = emb[tgt][:, None]  # [B, 1, d]
        e_new = gamma * e_u[:, None] + (1 - gamma) * emb[top]
        gain = jnp.sum(e_t * e_new, -1) - jnp.sum(e_t[:, 0] * e_u, -1)[:, None]
        return jnp.take_along_axis(top, jnp.argmax(p * gain, -1)[:, None], -1)[:, 0]

    return _heuristic_paths(sim, history, target, max_len, pick, top_k)


def greedy_sequential_paths(sim: Any, history: np.ndarray, target: np.ndarray,
                            max_len: int = 10, top_k: int = 20
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy sequential baseline paths (see the module docstring)."""

    def pick(logits, top, e_u, emb, tgt):
        close = jnp.sum(emb[top] * emb[tgt][:, None], -1)
        is_t = top == tgt[:, None]
        return jnp.take_along_axis(top, jnp.argmax(jnp.where(is_t, jnp.inf, close), -1)[:, None],
                                   -1)[:, 0]

    return _heuristic_paths(sim, history, target, max_len, pick, top_k)


def evaluate_paths(sims: dict[str, Any], history: np.ndarray, target: np.ndarray,
                   path: np.ndarray, lengths: np.ndarray, genres: np.ndarray,
                   num_items: int) -> dict[str, float]:
    """Mean metrics of fixed paths (e.g. a heuristic's) for each simulator."""
    out = {}
    for name, sim in sims.items():
        m = score_generated(sim, jnp.asarray(history), jnp.asarray(target), jnp.asarray(path),
                            jnp.asarray(lengths), jnp.asarray(genres), num_items)
        out.update({f"{name}/{k}@1": float(np.mean(v)) for k, v in m.items()})
    return out
