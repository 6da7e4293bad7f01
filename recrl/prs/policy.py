"""The ProRL path policy: a small decoder-only transformer over item tokens.

Design (decoder-only rather than the reference's encoder-decoder T5): the prompt is the
fixed-length token sequence ``[h_1 .. h_H, target, SEP]`` and the path follows it, one token
per item, so an item's log-probability is exact (one action = one token) and a single
causal forward pass teacher-forces a whole path. The prompt has a fixed length, so sampling
uses a preallocated KV cache without any padding bookkeeping.

Vocabulary: items ``0 .. N-1``, ``EOS = N``, ``SEP = N + 1``, ``PAD = N + 2``. The output
layer scores the ``N + 1`` actions (items and EOS) with the tied item embeddings.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Policy sizes.

    Attributes:
      num_items: ``N``.
      history: ``H`` history items in the prompt.
      max_len: ``T`` maximum path length.
      dim, heads, layers, ffn: transformer sizes.
      dropout: dropout rate during supervised pretraining (RL runs deterministic).
    """

    num_items: int
    history: int = 10
    max_len: int = 10
    dim: int = 64
    heads: int = 4
    layers: int = 2
    ffn: int = 256
    dropout: float = 0.1

    def __post_init__(self):
        if self.num_items < 2:
            raise ValueError(f"num_items must be >= 2, got {self.num_items}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.history < 1 or self.max_len < 1:
            raise ValueError(f"history and max_len must be >= 1: {self}")

    @property
    def eos(self) -> int:
        return self.num_items

    @property
    def sep(self) -> int:
        return self.num_items + 1

    @property
    def pad(self) -> int:
        return self.num_items + 2

    @property
    def prompt_len(self) -> int:
        return self.history + 2

    @property
    def seq_len(self) -> int:
        """Longest sequence the policy reads: prompt + all but the last action."""
        return self.prompt_len + self.max_len - 1


class KVCache(NamedTuple):
    """Per-layer keys and values ``[layers, B, S, heads, head_dim]``."""

    k: jax.Array
    v: jax.Array


class _Block(nnx.Module):
    def __init__(self, cfg: PolicyConfig, rngs: nnx.Rngs):
        d = cfg.dim
        self.heads = cfg.heads
        self.norm1 = nnx.LayerNorm(d, rngs=rngs)
        # no bias: a key bias cannot change attention (softmax shift) and only adds noise
        self.qkv = nnx.Linear(d, 3 * d, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(d, d, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, rngs=rngs)
        self.fc1 = nnx.Linear(d, cfg.ffn, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.ffn, d, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)

    def __call__(self, x, k_all, v_all, q_pos, deterministic: bool, rngs=None):
        """``x`` [B, S, d] at positions ``q_pos`` [S]; attends to cached ``k_all/v_all``
        [B, S_kv, h, dh] (already holding this chunk) at positions ``<= q_pos``."""
        b, s, d = x.shape
        h = self.norm1(x)
        q = self.qkv(h)[..., :d].reshape(b, s, self.heads, d // self.heads)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k_all) / jnp.sqrt(d / self.heads)
        allowed = jnp.arange(k_all.shape[1])[None, :] <= q_pos[:, None]
        scores = jnp.where(allowed[None, None], scores, -1e30)
        att = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", att, v_all).reshape(b, s, d)
        x = x + self.drop(self.out(ctx), deterministic=deterministic, rngs=rngs)
        h = self.fc2(jax.nn.gelu(self.fc1(self.norm2(x))))
        return x + self.drop(h, deterministic=deterministic, rngs=rngs)

    def kv(self, x):
        b, s, d = x.shape
        kv = self.qkv(self.norm1(x))[..., d:]
        k, v = jnp.split(kv, 2, axis=-1)
        shape = (b, s, self.heads, d // self.heads)
        return k.reshape(shape), v.reshape(shape)


class PathPolicy(nnx.Module):
    """Decoder-only transformer policy over item tokens (see the module docstring)."""

    def __init__(self, cfg: PolicyConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.num_items + 3, cfg.dim, rngs=rngs)
        self.pos = nnx.Embed(cfg.seq_len, cfg.dim, rngs=rngs)
        self.segment = nnx.Embed(3, cfg.dim, rngs=rngs)  # history / target / path
        self.blocks = nnx.List([_Block(cfg, rngs) for _ in range(cfg.layers)])
        self.norm = nnx.LayerNorm(cfg.dim, rngs=rngs)
        self.out_bias = nnx.Param(jnp.zeros((cfg.num_items + 1,)))
        self.drop = nnx.Dropout(cfg.dropout)

    def _segments(self, positions: jax.Array) -> jax.Array:
        h = self.cfg.history
        return jnp.where(positions < h, 0, jnp.where(positions == h, 1, 2))

    def _embed(self, tokens: jax.Array, positions: jax.Array, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
        x = self.embed(tokens) + self.pos(positions) + self.segment(self._segments(positions))
        return self.drop(x, deterministic=deterministic, rngs=rngs)

    def _logits(self, x: jax.Array) -> jax.Array:
        table = self.embed.embedding[...][: self.cfg.num_items + 1]
        return self.norm(x) @ table.T + self.out_bias[...]

    def __call__(self, tokens: jax.Array, rngs: nnx.Rngs | None = None,
                 return_hidden: bool = False, start: int = 0
                 ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Causal logits ``[B, S - start, N + 1]`` for tokens ``[B, S]`` (positions from 0).

        Dropout is active exactly when ``rngs`` (with a ``dropout`` stream) is given. With
        ``return_hidden`` also the final hidden states ``[B, S - start, dim]`` (the state
        features an actor-critic's value head reads). ``start`` skips the output projection
        for the first positions (the prompt's, whose logits training never reads).
        """
        positions = jnp.arange(tokens.shape[1])
        det = rngs is None
        x = self._embed(tokens, positions, det, rngs)
        for blk in self.blocks:
            k, v = blk.kv(x)
            x = blk(x, k, v, positions, det, rngs)
        x = x[:, start:]
        return (self._logits(x), x) if return_hidden else self._logits(x)

    def prefill(self, prompt: jax.Array) -> tuple[jax.Array, KVCache]:
        """Runs the prompt ``[B, H + 2]``; returns the first action's logits and the cache."""
        b, p = prompt.shape
        positions = jnp.arange(p)
        x = self._embed(prompt, positions, True)
        shape = (b, self.cfg.seq_len, self.cfg.heads, self.cfg.dim // self.cfg.heads)
        ks, vs = [], []
        for blk in self.blocks:
            k, v = blk.kv(x)
            k_all = jnp.zeros(shape, x.dtype).at[:, :p].set(k)
            v_all = jnp.zeros(shape, x.dtype).at[:, :p].set(v)
            x = blk(x, k_all, v_all, positions, True)
            ks.append(k_all)
            vs.append(v_all)
        return self._logits(x[:, -1]), KVCache(jnp.stack(ks), jnp.stack(vs))

    def decode(self, token: jax.Array, position: jax.Array, cache: KVCache
               ) -> tuple[jax.Array, KVCache]:
        """Feeds one token ``[B]`` at ``position``; returns next logits ``[B, N+1]``, cache."""
        positions = position[None]
        x = self._embed(token[:, None], positions, True)
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            k, v = blk.kv(x)
            k_all = jax.lax.dynamic_update_slice_in_dim(cache.k[i], k, position, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache.v[i], v, position, axis=1)
            x = blk(x, k_all, v_all, positions, True)
            ks.append(k_all)
            vs.append(v_all)
        return self._logits(x[:, 0]), KVCache(jnp.stack(ks), jnp.stack(vs))


def make_prompt(cfg: PolicyConfig, history: jax.Array, target: jax.Array) -> jax.Array:
    """``[B, H + 2]`` prompt tokens ``[h_1 .. h_H, target, SEP]``."""
    if history.shape[-1] != cfg.history:
        raise ValueError(f"`history` must have {cfg.history} items, got shape {history.shape}")
    sep = jnp.full(target.shape + (1,), cfg.sep, history.dtype)
    return jnp.concatenate([history, target[..., None].astype(history.dtype), sep], axis=-1)


def action_tokens(cfg: PolicyConfig, path: jax.Array, lengths: jax.Array) -> jax.Array:
    """``[B, T]`` actions: the item at ``t < L``, EOS at ``t = L``, PAD after."""
    t = jnp.arange(path.shape[-1])
    acts = jnp.where(t < lengths[..., None], path, cfg.pad)
    return jnp.where(t == lengths[..., None], cfg.eos, acts)


def path_logits(policy: PathPolicy, history: jax.Array, target: jax.Array, path: jax.Array,
                lengths: jax.Array, rngs: nnx.Rngs | None = None, return_hidden: bool = False
                ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Teacher-forced logits ``[B, T, N + 1]`` of every action of the given paths.

    Position ``t`` holds the distribution of action ``t`` given the prompt and
    ``path[:t]``; positions past the path's EOS are meaningless (mask them).
    """
    cfg = policy.cfg
    T = path.shape[-1]
    if T != cfg.max_len:
        raise ValueError(f"`path` must have {cfg.max_len} positions, got shape {path.shape}")
    prompt = make_prompt(cfg, history, target)
    inputs = action_tokens(cfg, path, lengths)[:, : T - 1]
    inputs = jnp.where(inputs == cfg.eos, cfg.pad, inputs)
    return policy(jnp.concatenate([prompt, inputs], axis=1), rngs, return_hidden,
                  start=cfg.prompt_len - 1)


def action_log_probs(logits: jax.Array, actions: jax.Array, eos_first_allowed: bool = False,
                     target: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Log-softmax over actions (EOS masked at t = 0 unless allowed; the ``target`` ``[B]``
    masked everywhere when given) and the taken actions'.

    Returns:
      ``(logp_all [B, T, N+1], logp_taken [B, T])``; PAD actions get 0.
    """
    logp = masked_log_softmax(logits, eos_first_allowed, target)
    n_act = logits.shape[-1]
    taken = jnp.take_along_axis(logp, jnp.minimum(actions, n_act - 1)[..., None], -1)[..., 0]
    return logp, jnp.where(actions < n_act, taken, 0.0)


def masked_log_softmax(logits: jax.Array, eos_first_allowed: bool = False,
                       target: jax.Array | None = None) -> jax.Array:
    """Log-softmax over the ``N + 1`` actions with EOS forbidden at position 0 and, when
    ``target`` ``[B]`` is given, each row's target forbidden at every position (the action
    space of :func:`recrl.prs.rollout.generate` with ``mask_target``)."""
    if eos_first_allowed and target is None:
        return jax.nn.log_softmax(logits, -1)
    T = logits.shape[-2]
    allowed = jnp.ones(logits.shape[-2:], bool)
    if not eos_first_allowed and T:
        allowed = allowed.at[0, -1].set(False)
    if target is not None:
        cols = jnp.arange(logits.shape[-1])
        allowed = allowed & (cols != target[:, None])[:, None, :]
    z = jnp.where(allowed, logits, -1e9)
    return jnp.where(allowed, jax.nn.log_softmax(z, -1), -jnp.inf)
