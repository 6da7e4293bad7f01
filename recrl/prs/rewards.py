r"""Step rewards and path metrics of proactive recommendation, from simulator scores.

Given the simulator's scores after every prefix of ``history ⊕ path`` (``StepScores``:
``logp_target[k]`` and ``rank[k]`` after ``k`` path items, ``click[k]`` for item ``k``):

.. math::
    \mathrm{IoI}_t = \log P(i_T \mid S \oplus i_{\le t}) - \log P(i_T \mid S \oplus i_{<t}),\quad
    \mathrm{IoR}_t = \mathrm{Rank}_{t} - \mathrm{Rank}_{t+1},\quad
    \mathrm{CTR}_t = \sigma(h(S \oplus i_{<t}) \cdot v_{i_t})

so the path metrics telescope: ``IoI = Σ_t IoI_t``, ``IoR = Σ_t IoR_t``. A repeated item in
a path gets CTR 0. ``has_target`` flags paths that contain their target as an action (the
policy's target mask makes it 0; with the mask off, any target emission shows here instead
of hiding inside IoI).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from recrl.estimators import path_masks

COMPONENTS = ("ioi", "ior", "ctr")


class PathMetrics(NamedTuple):
    """Per-path metrics ``[B]`` (see the module docstring); coherence uses genres."""

    ioi: jax.Array
    ior: jax.Array
    ctr: jax.Array
    coherence: jax.Array
    length: jax.Array
    has_target: jax.Array


def contains_target(path: jax.Array, lengths: jax.Array, target: jax.Array) -> jax.Array:
    """``[B]`` 1.0 where one of the path's items (``t < L``) is its target."""
    item, _ = path_masks(lengths, path.shape[-1], dtype=jnp.bool_)
    return jnp.any((path == target[:, None]) & item, axis=-1).astype(jnp.float32)


def duplicates(path: jax.Array, lengths: jax.Array) -> jax.Array:
    """``[B, T]`` 1 where ``path[t]`` already occurred at an earlier position of the path."""
    T = path.shape[-1]
    same = path[:, :, None] == path[:, None, :]  # [B, t, s]
    earlier = jnp.arange(T)[None, :] < jnp.arange(T)[:, None]  # s < t
    item, _ = path_masks(lengths, T, dtype=jnp.bool_)
    return jnp.any(same & earlier[None] & item[:, None, :], axis=-1) & item


def step_rewards(scores, path: jax.Array, lengths: jax.Array) -> jax.Array:
    """``[B, T, 3]`` reward components (IoI, IoR, CTR) per step, 0 off the items."""
    item, _ = path_masks(lengths, path.shape[-1])
    ioi = scores.logp_target[:, 1:] - scores.logp_target[:, :-1]
    ior = (scores.rank[:, :-1] - scores.rank[:, 1:]).astype(ioi.dtype)
    ctr = scores.click * (1.0 - duplicates(path, lengths))
    comps = jnp.stack([ioi, ior, ctr], axis=-1)
    return jnp.where(item[..., None] > 0, comps, 0.0)


def coherence(path: jax.Array, lengths: jax.Array, target: jax.Array,
              genres: jax.Array) -> jax.Array:
    """Mean over consecutive pairs of ``path ⊕ target`` of ``1[genres overlap]``.

    Args:
      path: ``[B, T]`` items.
      lengths: ``[B]``.
      target: ``[B]``.
      genres: ``[I, n_genres]`` 0/1 attribute matrix (the reference's metric uses every
        genre, Drama included; the mining oracle's Drama exclusion does not apply here).

    Returns:
      ``[B]`` coherence in [0, 1] (over ``L`` pairs: ``L - 1`` inside the path + the last
      item with the target).
    """
    T = path.shape[-1]
    t = jnp.arange(T)
    seq = jnp.where(t[None] < lengths[:, None], path, 0)
    nxt = jnp.concatenate([seq[:, 1:], seq[:, :1]], axis=1)
    nxt = jnp.where(t[None] == lengths[:, None] - 1, target[:, None], nxt)
    g = genres.astype(jnp.float32)
    overlap = jnp.sum(g[seq] * g[nxt], -1) > 0
    valid = t[None] < lengths[:, None]
    return jnp.sum(overlap & valid, -1) / jnp.maximum(lengths, 1)


def path_metrics(scores, path: jax.Array, lengths: jax.Array, target: jax.Array,
                 genres: jax.Array) -> PathMetrics:
    """Per-path IoI, IoR, CTR (mean over items), coherence and length."""
    comps = step_rewards(scores, path, lengths)
    n = jnp.maximum(lengths, 1).astype(jnp.float32)
    return PathMetrics(
        ioi=comps[..., 0].sum(-1), ior=comps[..., 1].sum(-1), ctr=comps[..., 2].sum(-1) / n,
        coherence=coherence(path, lengths, target, genres), length=lengths.astype(jnp.float32),
        has_target=contains_target(path, lengths, target),
    )


def diversity(path: jax.Array, lengths: jax.Array, num_items: int) -> jax.Array:
    """``1 −`` mean pairwise item-Jaccard similarity of each group's paths.

    Args:
      path: ``[P, G, T]`` items.
      lengths: ``[P, G]``.
      num_items: ``N``.

    Returns:
      ``[P]`` diversity in [0, 1] (0: all ``G`` paths use the same item set).
    """
    T = path.shape[-1]
    item, _ = path_masks(lengths, T)
    member = jnp.max(jax.nn.one_hot(path, num_items) * item[..., None], axis=-2)  # [P, G, N]
    inter = jnp.einsum("pgn,phn->pgh", member, member)
    size = member.sum(-1)
    union = size[:, :, None] + size[:, None, :] - inter
    jac = inter / jnp.maximum(union, 1.0)
    G = path.shape[1]
    off = 1.0 - jnp.eye(G)
    return 1.0 - jnp.sum(jac * off, (-1, -2)) / max(G * (G - 1), 1)
