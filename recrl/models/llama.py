"""Llama-architecture decoder in Flax NNX and its pure, jitted forward pass.

Block ``l`` maps the residual stream ``x`` as

    h = x + W_o · Attn(RoPE(W_q n(x)), RoPE(W_k n(x)), W_v n(x))
    x' = h + W_down (silu(W_gate n'(h)) ⊙ W_up n'(h))

with RMSNorm ``n(x) = x / sqrt(mean(x²) + ε) ⊙ w``, grouped-query attention (query head ``j``
reads key/value head ``j // (n_heads / n_kv_heads)``) and rotate-half RoPE: dimension ``i`` and
``i + head_dim/2`` of a head form a pair rotated by ``pos · base^{-2i/head_dim}``. Checkpoints in
the interleaved-pair layout (GGUF) are permuted to this layout when loaded.

Kernels are stored ``[in, out]`` (``y = x @ W``). Matmuls take ``cfg.dtype`` inputs and accumulate
in float32; the residual stream, scores, softmax, norms, the SwiGLU gate product and logits are
float32 whatever ``cfg.dtype`` is (so bfloat16 rounds only what enters a matmul).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from recrl.models.cache import KVCache, Prefix
from recrl.models.config import LlamaConfig

_NEG = -1e30  # finite "minus infinity": fully masked rows give uniform weights, not NaN
f32 = jnp.float32

ParamsLike = nnx.State | Sequence[nnx.State]


def rope_angles(positions: jax.Array, head_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """``cos`` and ``sin`` of ``pos · base^{-2i/head_dim}`` for ``i < head_dim/2``.

    Args:
      positions: integer positions, any shape ``[...]``.
      head_dim: head width (even).
      base: RoPE frequency base.

    Returns:
      ``(cos, sin)``, each float32 ``[..., head_dim // 2]``.
    """
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=f32) / head_dim)
    angles = positions.astype(f32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE: ``[x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]``.

    Args:
      x: ``[B, T, heads, head_dim]``.
      cos: ``[B, T, head_dim // 2]``.
      sin: same shape as ``cos``.

    Returns:
      ``x`` rotated, same shape and dtype.
    """
    x1, x2 = jnp.split(x.astype(f32), 2, axis=-1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


class RMSNorm(nnx.Module):
    """``y = x / sqrt(mean(x², -1) + eps) ⊙ weight`` (computed in float32)."""

    def __init__(self, dim: int, cfg: LlamaConfig):
        self.weight = nnx.Param(jnp.ones((dim,), cfg.jnp_param_dtype))
        self.eps = cfg.norm_eps
        self.dtype = cfg.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(f32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.weight[...].astype(f32)).astype(self.dtype)


class Linear(nnx.Module):
    """Bias-free projection ``y = x W`` with an optional LoRA term ``(α/r) x A B``.

    The adapter matrices ``lora_a [in, r]`` and ``lora_b [r, out]`` are ``LoRAParam`` variables
    added by ``recrl.models.lora.add_lora``; they are ``None`` otherwise.
    """

    def __init__(self, in_dim: int, out_dim: int, cfg: LlamaConfig, rngs: nnx.Rngs):
        init = jax.random.normal(rngs.params(), (in_dim, out_dim), f32) * cfg.init_std
        self.kernel = nnx.Param(init.astype(cfg.jnp_param_dtype))
        self.lora_a = nnx.data(None)
        self.lora_b = nnx.data(None)
        self.lora_scale = 0.0
        self.dtype = cfg.dtype

    def __call__(self, x: jax.Array, out_dtype: jnp.dtype | None = None) -> jax.Array:
        """``x W`` (+ the LoRA term), accumulated in float32 and returned in ``out_dtype``
        (default ``cfg.dtype``)."""
        y = jnp.matmul(x, self.kernel[...].astype(self.dtype), preferred_element_type=f32)
        if self.lora_a is not None:
            a = self.lora_a[...].astype(self.dtype)
            b = self.lora_b[...].astype(self.dtype)
            y = y + ((x @ a) @ b).astype(f32) * jnp.asarray(self.lora_scale, f32)
        return y.astype(out_dtype or self.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE, a KV cache and an optional shared prefix."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        d, hd = cfg.dim, cfg.head_dim
        self.q_proj = Linear(d, cfg.n_heads * hd, cfg, rngs)
        self.k_proj = Linear(d, cfg.n_kv_heads * hd, cfg, rngs)
        self.v_proj = Linear(d, cfg.n_kv_heads * hd, cfg, rngs)
        self.o_proj = Linear(cfg.n_heads * hd, d, cfg, rngs)
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, hd
        self.dtype = cfg.dtype

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        own_mask: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None,
        index: jax.Array | None,
        prefix: tuple[jax.Array, jax.Array, jax.Array] | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Attention output ``[B, T, dim]`` and the updated per-block ``(k, v)`` cache.

        ``own_mask [B, T, L]`` says which own/cache slots each query may read; ``prefix`` is
        ``(k [S_p, Hkv, Dh], v, valid [S_p])`` shared by every row.
        """
        b, t, _ = x.shape
        hkv, g, hd = self.n_kv_heads, self.n_heads // self.n_kv_heads, self.head_dim
        q = apply_rope(self.q_proj(x).reshape(b, t, self.n_heads, hd), cos, sin)
        # keys/values head-major [B, Hkv, T, Dh], the cache's layout (no per-step transpose of it)
        k = apply_rope(self.k_proj(x).reshape(b, t, hkv, hd), cos, sin).swapaxes(1, 2)
        v = self.v_proj(x).reshape(b, t, hkv, hd).swapaxes(1, 2)
        if kv is not None:
            ck = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, 0, index, 0))
            cv = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, 0, index, 0))
            keys, values, new_kv = ck, cv, (ck, cv)
        else:
            keys, values, new_kv = k, v, None
        q = (q.astype(f32) * hd**-0.5).astype(self.dtype).reshape(b, t, hkv, g, hd)
        # explicit batched matmuls (q K^T, then P V) so XLA needs no transposes around them
        qh = q.transpose(0, 2, 3, 1, 4)  # [B, Hkv, G, T, Dh]
        s = jax.lax.dot_general(qh, keys.astype(self.dtype), (((4,), (3,)), ((0, 1), (0, 1))),
                                preferred_element_type=f32)  # [B, Hkv, G, T, S]
        s = jnp.where(own_mask[:, None, None], s, _NEG)
        if prefix is not None:
            pk, pv, pvalid = (a.astype(self.dtype) if a.dtype != bool else a for a in prefix)
            sp = jnp.einsum("btkgd,skd->bkgts", q, pk, preferred_element_type=f32)
            s = jnp.concatenate([jnp.where(pvalid, sp, _NEG), s], axis=-1)
        p = jax.nn.softmax(s, axis=-1).astype(self.dtype)
        values = values.astype(self.dtype)
        pv_own = lambda p: jax.lax.dot_general(p, values, (((4,), (2,)), ((0, 1), (0, 1))))
        if prefix is None:
            o = pv_own(p).transpose(0, 3, 1, 2, 4)  # [B, T, Hkv, G, Dh]
        else:
            n_prefix = pk.shape[0]
            o = jnp.einsum("bkgts,skd->btkgd", p[..., :n_prefix], pv)
            o = o + pv_own(p[..., n_prefix:]).transpose(0, 3, 1, 2, 4)
        return self.o_proj(o.reshape(b, t, self.n_heads * hd), f32), new_kv


class MLP(nnx.Module):
    """SwiGLU: ``W_down (silu(W_gate x) ⊙ W_up x)``."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        self.gate_proj = Linear(cfg.dim, cfg.ffn_dim, cfg, rngs)
        self.up_proj = Linear(cfg.dim, cfg.ffn_dim, cfg, rngs)
        self.down_proj = Linear(cfg.ffn_dim, cfg.dim, cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """float32 output (the residual stream's dtype); the gate product is formed in float32
        and rounded to ``cfg.dtype`` once, for the down projection."""
        gated = jax.nn.silu(self.gate_proj(x, f32)) * self.up_proj(x, f32)
        return self.down_proj(gated.astype(x.dtype), f32)


class Block(nnx.Module):
    """Pre-norm transformer block: attention then SwiGLU, each with a residual."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.dim, cfg)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.dim, cfg)
        self.mlp = MLP(cfg, rngs)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        own_mask: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None,
        index: jax.Array | None,
        prefix: tuple[jax.Array, jax.Array, jax.Array] | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """``x + attn(n(x))`` then ``+ mlp(n'(·))``; returns the block output and its KV."""
        a, new_kv = self.attn(self.attn_norm(x), cos, sin, own_mask, kv, index, prefix)
        h = x + a
        return h + self.mlp(self.mlp_norm(h)), new_kv


class Llama(nnx.Module):
    """Decoder-only Llama LM: token embedding, ``n_layers`` blocks, final RMSNorm, LM head.

    ``model(tokens, positions, mask, cache, prefix)`` returns the final-norm hidden states
    ``[B, T, dim]`` and the updated cache; ``model.logits(hidden)`` applies the (tied or untied)
    head in float32. Use ``forward`` for the pure, jitted form.
    """

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        emb = jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.dim), f32) * cfg.init_std
        self.embed = nnx.Param(emb.astype(cfg.jnp_param_dtype))
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.dim, cfg)
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.dim, cfg.vocab_size, cfg, rngs)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        mask: jax.Array | None = None,
        cache: KVCache | None = None,
        prefix: Prefix | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Hidden states of ``tokens`` (see ``forward`` for the argument contract)."""
        cfg = self.config
        b, t = tokens.shape
        mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
        if cache is None:
            causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
            own_mask, index, valid = causal[None] & mask[:, None, :], None, None
        else:
            index = cache.index
            valid = jax.lax.dynamic_update_slice(cache.valid, mask, (0, index))
            slots = jnp.arange(cache.length)
            causal = slots[None, :] <= (index + jnp.arange(t))[:, None]
            own_mask = causal[None] & valid[:, None, :]
        cos, sin = rope_angles(positions, cfg.head_dim, cfg.rope_base)
        # computed once and kept out of the blocks' fusions (XLA would otherwise recompute the
        # sines and cosines inside each of the 60 RoPE fusions)
        cos, sin = jax.lax.optimization_barrier((cos, sin))
        x = jnp.take(self.embed[...], tokens, axis=0).astype(f32)  # the residual stream
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            pre = None if prefix is None else (prefix.k[i], prefix.v[i], prefix.valid)
            x, layer_kv = block(x, cos, sin, own_mask, kv, index, pre)
            if cache is not None:
                new_k.append(layer_kv[0])
                new_v.append(layer_kv[1])
        if cache is not None:
            cache = KVCache(k=tuple(new_k), v=tuple(new_v), valid=valid, index=index + t)
        return self.final_norm(x), cache

    def head_rows(self, dtype: jnp.dtype) -> jax.Array:
        """The LM head as ``[vocab, dim]`` rows in ``dtype``: ``logits = hidden @ rowsᵀ``."""
        w = self.embed[...] if self.lm_head is None else self.lm_head.kernel[...].T
        return w.astype(dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """float32 logits ``hidden @ E^T`` (tied) or ``hidden @ W_head`` over the vocabulary."""
        if self.lm_head is None:
            return jnp.einsum("...d,vd->...v", hidden, self.embed[...].astype(hidden.dtype),
                              preferred_element_type=f32)
        w = self.lm_head.kernel[...].astype(hidden.dtype)
        return jnp.einsum("...d,dv->...v", hidden, w, preferred_element_type=f32)


def create_model(cfg: LlamaConfig, seed: int = 0) -> Llama:
    """A randomly initialised ``Llama``: normal(0, ``cfg.init_std``) matrices, unit norms.

    Draws come from ``numpy.random.default_rng(seed)`` on the host (deterministic by seed and
    much faster to start than compiling the per-tensor initialisers); ``Llama(cfg, rngs=...)``
    draws the same distribution with NNX RNG streams.
    """
    import numpy as np

    model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    for path, var in nnx.iter_graph(model):
        if not isinstance(var, nnx.Param):
            continue
        if path[-1] == "weight":  # RMSNorm scales
            value = np.ones(var.shape, np.float32)
        else:
            value = rng.standard_normal(var.shape, np.float32) * np.float32(cfg.init_std)
        var.set_value(jnp.asarray(value, cfg.jnp_param_dtype))
    return model


def merge(graphdef: nnx.GraphDef, params: ParamsLike) -> Llama:
    """Rebuilds the module from its graphdef and one state or a sequence of split states."""
    if isinstance(params, nnx.State):
        return nnx.merge(graphdef, params)
    return nnx.merge(graphdef, *params)


def positions_from_mask(mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """RoPE positions ``offset + (number of real tokens before each slot)``.

    Args:
      mask: ``[B, T]`` bool, real tokens (left or right padding).
      offset: added to every position (e.g. the prompt length for a continuation).

    Returns:
      int32 ``[B, T]``; padding slots repeat the neighbouring position (they are masked anyway).
    """
    pos = jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1
    return jnp.maximum(pos, 0) + jnp.asarray(offset, jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def forward(
    graphdef: nnx.GraphDef,
    params: ParamsLike,
    tokens: jax.Array,
    positions: jax.Array,
    cache: KVCache | None = None,
    *,
    mask: jax.Array | None = None,
    prefix: Prefix | None = None,
) -> tuple[jax.Array, KVCache | None]:
    """Pure forward pass: next-token logits for every input slot.

    Query slot ``t`` attends to keys at slots ``s <= t`` whose ``mask`` is True (with a cache:
    cache slots ``s <= index + t`` that are ``valid``), plus every valid slot of ``prefix``.

    Args:
      graphdef: from ``nnx.split(model, ...)`` (static under ``jit``).
      params: the matching state, or a sequence of states (e.g. ``(lora, base)``).
      tokens: int ``[B, T]``.
      positions: int ``[B, T]`` RoPE positions (``positions_from_mask`` for padded batches).
      cache: optional ``KVCache``; the new keys/values are written at ``cache.index``.
      mask: optional bool ``[B, T]``, False marks padding (never attended to).
      prefix: optional shared ``Prefix`` every sequence of the batch continues.

    Returns:
      ``(logits [B, T, vocab] float32, updated cache or None)``.
    """
    model = merge(graphdef, params)
    hidden, cache = model(tokens, positions, mask, cache, prefix)
    return model.logits(hidden), cache
