r"""The pre-LayerNorm causal transformer block shared by the ProRL policy and the simulator.

.. math:: x \leftarrow x + \mathrm{Drop}(W_o\,\mathrm{Attn}(\mathrm{LN}_1 x)), \qquad
          x \leftarrow x + \mathrm{Drop}(W_2\,\mathrm{Drop}(\mathrm{gelu}(W_1 \mathrm{LN}_2 x)))

Shapes use the glossary's letters (``docs/glossary.md``): ``x`` is ``[B, S, D]``; the keys
and values attended to are ``[B, L, H, Dh]`` with ``Dh = D / H`` (``L = S`` without a cache,
the cache's slots with one). One ``qkv`` projection ``[D, 3D]`` holds the columns
``[q | k | v]``, each split into ``H`` heads of ``Dh``.

Who decides what (so that one block serves both models with their numerics unchanged):

* the caller passes the boolean attention ``mask`` (``True`` = may attend): causal for
  the simulator, "slot <= position" for the cached policy;
* the caller passes ``dropout``, a function ``(site, x) -> x`` for the four sites
  ``"attn"`` (attention probabilities), ``"attn_out"``, ``"ffn_hidden"`` and ``"ffn_out"``;
  ``None`` is evaluation mode. The policy drops at the two residual branches through an
  ``nnx.Dropout``; SASRec drops at all four with explicit keys;
* the constructor's ``qkv_bias``, ``epsilon`` and ``kernel_init`` keep each model's
  parameters and initialisation (the policy: no ``qkv`` bias, LayerNorm epsilon ``1e-6``,
  Flax's default kernels; SASRec: a ``qkv`` bias, epsilon ``1e-8``, ``normal(0.02)``).

The parameters are created in the order ``norm1, qkv, out, norm2, fc1, fc2``, so a model
built from this block draws the same initial values as before the block was shared.

The Llama (:mod:`recrl.models.llama`) has its own block: RMSNorm, rotary positions,
grouped-query attention and a bias-free SwiGLU MLP are different parameters, and their names
are what the GGUF / safetensors loaders map checkpoint tensors onto.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

#: ``dropout(site, x) -> x`` for the sites ``attn, attn_out, ffn_hidden, ffn_out``.
DropoutFn = Callable[[str, jax.Array], jax.Array]
#: Finite "minus infinity" for masked attention scores (softmax weight exactly 0).
MASKED = -1e30


def causal_mask(length: int) -> jax.Array:
    """``[L, L]`` bool, ``True`` where query ``i`` may attend key ``j`` (``j <= i``)."""
    return jnp.tril(jnp.ones((length, length), bool))


def position_mask(num_slots: int, positions: jax.Array) -> jax.Array:
    """``[S, L]`` bool: a query at ``positions[i]`` attends the cache slots ``<= positions[i]``
    (slot ``j`` holds position ``j``)."""
    return jnp.arange(num_slots)[None, :] <= positions[:, None]


class CausalBlock(nnx.Module):
    """Pre-LN self-attention block with an optional per-layer KV cache (see the module doc).

    Args:
      dim: model width ``D``.
      n_heads: attention heads ``H`` (must divide ``dim``).
      ffn_dim: feed-forward width.
      rngs: parameter initialisation.
      qkv_bias: give the ``qkv`` projection a bias.
      epsilon: LayerNorm epsilon.
      kernel_init: initialiser of every ``Linear`` kernel (``None``: Flax's default).
    """

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, *, rngs: nnx.Rngs,
                 qkv_bias: bool = True, epsilon: float = 1e-6,
                 kernel_init: nnx.Initializer | None = None):
        if dim % n_heads:
            raise ValueError(f"dim {dim} must be divisible by n_heads {n_heads}")
        kw = {} if kernel_init is None else {"kernel_init": kernel_init}
        self.n_heads = n_heads
        self.norm1 = nnx.LayerNorm(dim, epsilon=epsilon, rngs=rngs)
        self.qkv = nnx.Linear(dim, 3 * dim, use_bias=qkv_bias, rngs=rngs, **kw)
        self.out = nnx.Linear(dim, dim, rngs=rngs, **kw)
        self.norm2 = nnx.LayerNorm(dim, epsilon=epsilon, rngs=rngs)
        self.fc1 = nnx.Linear(dim, ffn_dim, rngs=rngs, **kw)
        self.fc2 = nnx.Linear(ffn_dim, dim, rngs=rngs, **kw)

    def __call__(self, x: jax.Array, mask: jax.Array,
                 cache: tuple[jax.Array, jax.Array] | None = None,
                 index: jax.Array | int = 0, dropout: DropoutFn | None = None,
                 ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One block over ``x`` ``[B, S, D]``.

        Args:
          x: the input chunk.
          mask: ``[S, L]`` (or broadcastable to ``[B, H, S, L]``) bool, ``True`` = may attend.
          cache: ``(k, v)`` each ``[B, L, H, Dh]``; this chunk's keys/values are written at
            slots ``index .. index + S - 1`` and the queries attend the whole cache. ``None``:
            attend this chunk's own keys/values (``L = S``).
          index: first cache slot to write.
          dropout: see the module docstring; ``None`` = evaluation mode.

        Returns:
          ``(y [B, S, D], (k, v))``: the output and the cache with this chunk written (or,
          without a cache, this chunk's keys and values).
        """
        b, s, d = x.shape
        drop = dropout or (lambda site, y: y)
        q, k, v = jnp.split(self.qkv(self.norm1(x)).reshape(b, s, 3, self.n_heads, -1), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [B, S, H, Dh]
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache[0], k, index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache[1], v, index, axis=1)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // self.n_heads)
        att = drop("attn", jax.nn.softmax(jnp.where(mask, scores, MASKED), axis=-1))
        ctx = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, s, d)
        x = x + drop("attn_out", self.out(ctx))
        h = self.fc2(drop("ffn_hidden", jax.nn.gelu(self.fc1(self.norm2(x)))))
        return x + drop("ffn_out", h), (k, v)
