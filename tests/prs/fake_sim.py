"""A tiny bag-of-items user model with the simulator's scoring interface, for RL tests."""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Scores(NamedTuple):
    logp_target: jax.Array  # [B, T+1]
    rank: jax.Array  # [B, T+1]
    click: jax.Array  # [B, T]


def make_table(num_items: int, dim: int = 8, seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (num_items, dim))


def score(table, history, path, lengths, target):
    """State after a prefix = mean embedding of history ⊕ path[:k]; softmax next-item model."""
    del lengths  # entries past the end are ignored by the caller
    h = table[history].sum(1)  # [B, d]
    steps = jnp.cumsum(table[path], axis=1)  # [B, T, d]
    n = history.shape[1] + jnp.arange(path.shape[1] + 1)
    states = jnp.concatenate([h[:, None], h[:, None] + steps], 1) / n[None, :, None]
    logits = states @ table.T  # [B, T+1, N]
    logp = jax.nn.log_softmax(logits, -1)
    tgt = target[:, None, None]
    logp_t = jnp.take_along_axis(logp, jnp.broadcast_to(tgt, logp.shape[:2] + (1,)), -1)[..., 0]
    rank = 1 + jnp.sum(logp > logp_t[..., None], -1)
    click = jax.nn.sigmoid(jnp.sum(states[:, :-1] * table[path], -1))
    return Scores(logp_t, rank, click)
