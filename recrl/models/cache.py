"""Key/value caches: a per-sequence decode cache and a shared (batch-free) prompt prefix.

:class:`KVCache` is the one decode cache of recrl: the Llama (:mod:`recrl.models.sampling`)
and the ProRL policy (:mod:`recrl.prs.policy`) both carry it through their decode loops.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from recrl.models.config import LlamaConfig


class KVCache(NamedTuple):
    """Per-sequence attention cache, one key and one value buffer per block.

    The layout belongs to the model that writes it: the ProRL policy's ``CausalBlock`` uses
    ``[B, L, heads, head_dim]`` (``KVCache.zeros``); the Llama uses the head-major
    ``[B, n_kv_heads, L, head_dim]`` (``init_cache``), so that decoding attends to the cache
    with plain batched matmuls instead of transposing every cached key and value each step.

    All sequences of a batch write at the same slot ``index``; slots that hold padding (left
    padding of prompts, anything after a sequence stopped) are ``False`` in ``valid`` and are
    never attended to. RoPE positions are passed separately, so slot != position is fine.

    Attributes:
      k: per-block keys (RoPE already applied), each ``[B, L, heads, head_dim]`` or, for the
        Llama, ``[B, n_kv_heads, L, head_dim]``.
      v: per-block values, same shapes.
      valid: ``[B, L]`` bool, slots holding real tokens.
      index: int32 scalar, next slot to write.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array
    index: jax.Array

    @classmethod
    def zeros(cls, n_layers: int, batch_size: int, length: int, n_kv_heads: int, head_dim: int,
              dtype: jnp.dtype = jnp.float32) -> KVCache:
        """An empty cache: ``n_layers`` zero buffers ``[B, L, n_kv_heads, head_dim]`` per
        keys and values, nothing valid, ``index = 0``."""
        shape = (batch_size, length, n_kv_heads, head_dim)
        return cls(k=tuple(jnp.zeros(shape, dtype) for _ in range(n_layers)),
                   v=tuple(jnp.zeros(shape, dtype) for _ in range(n_layers)),
                   valid=jnp.zeros((batch_size, length), bool), index=jnp.zeros((), jnp.int32))

    @property
    def batch_size(self) -> int:
        """Number of sequences."""
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        """Number of slots ``L``."""
        return self.valid.shape[1]


class Prefix(NamedTuple):
    """Keys/values of one prompt shared by a whole batch of continuations (no batch axis).

    Attention of a continuation reads the prefix through a broadcasting einsum, so scoring or
    sampling ``N`` completions of one prompt computes the prompt once and stores it once.

    Attributes:
      k: per-block keys, each ``[S, n_kv_heads, head_dim]``.
      v: per-block values, same shapes.
      valid: ``[S]`` bool, real prompt tokens.
      last_hidden: ``[dim]`` final hidden state at the last real prompt token (predicts the
        first continuation token).
      next_position: int32 scalar, RoPE position of the first continuation token.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array
    last_hidden: jax.Array
    next_position: jax.Array

    @property
    def length(self) -> int:
        """Number of prompt slots ``S``."""
        return self.valid.shape[0]


def init_cache(cfg: LlamaConfig, batch_size: int, length: int) -> KVCache:
    """An empty Llama cache of ``length`` slots for ``batch_size`` sequences in ``cfg.dtype``.

    Buffers are head-major, ``[B, n_kv_heads, L, head_dim]`` (see ``KVCache``).

    Args:
      cfg: model configuration (block count, KV heads, head width, dtype).
      batch_size: number of sequences ``B``.
      length: number of slots ``L`` (prompt plus new tokens).

    Returns:
      A ``KVCache`` of zeros with nothing valid and ``index = 0``. Memory:
      ``2 * n_layers * B * L * n_kv_heads * head_dim`` elements.
    """
    shape = (batch_size, cfg.n_kv_heads, length, cfg.head_dim)
    return KVCache(k=tuple(jnp.zeros(shape, cfg.jnp_dtype) for _ in range(cfg.n_layers)),
                   v=tuple(jnp.zeros(shape, cfg.jnp_dtype) for _ in range(cfg.n_layers)),
                   valid=jnp.zeros((batch_size, length), bool), index=jnp.zeros((), jnp.int32))


def cache_to_prefix(cache: KVCache, last_hidden: jax.Array, next_position: jax.Array) -> Prefix:
    """Turns the cache of a single prefilled prompt (batch 1) into a shared ``Prefix``.

    Args:
      cache: a head-major Llama ``KVCache`` with batch size 1 (slots beyond ``index`` are
        marked invalid).
      last_hidden: ``[dim]`` final hidden state of the last real prompt token.
      next_position: RoPE position the continuation starts at.

    Returns:
      The same keys/values without the batch axis.
    """
    if cache.batch_size != 1:
        raise ValueError(f"a prefix comes from a batch-1 cache, got batch {cache.batch_size}")
    return Prefix(
        k=tuple(x[0].swapaxes(0, 1) for x in cache.k),
        v=tuple(x[0].swapaxes(0, 1) for x in cache.v), valid=cache.valid[0],
        last_hidden=last_hidden, next_position=jnp.asarray(next_position, jnp.int32),
    )
