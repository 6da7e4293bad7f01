"""Autoregressive sampling with a KV cache inside one ``jit`` (``lax.while_loop``).

Each step draws ``y_t ~ softmax(logits_t / τ)`` restricted to the top-p nucleus (or takes the
argmax when ``τ = 0``), records ``log softmax(logits_t / τ)[y_t]`` (``τ = 1`` for greedy; the
untruncated distribution, i.e. what ``recrl.models.logprobs`` recomputes at the same
temperature), and stops a row once it emits a stop token (kept in the output) or after
``max_new_tokens``. Row ``b`` uses the key ``fold_in(key, b)``, so a row's sample does not depend
on the rest of the batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from recrl.models.cache import KVCache, init_cache
from recrl.models.llama import Llama, ParamsLike, merge, positions_from_mask
from recrl.models.scoring import (
    _check_prefix_args,
    prefill_prefix,
    prefill_prefixes,
    prefix_offsets,
    rows_from_prefixes,
)

f32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling options (hashable: a ``jit`` static argument).

    Attributes:
      max_new_tokens: most tokens generated per row.
      temperature: softmax temperature; 0 means greedy.
      top_p: nucleus mass in (0, 1]; 1 disables the filter.
      stop_tokens: ids that end a row (the stop token is part of the output).
      pad_id: written after a row stopped.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))


class SampleOutput(NamedTuple):
    """Generated continuations.

    Attributes:
      tokens: int32 ``[B, T]``, ``pad_id`` after a row's stop token.
      logprobs: float32 ``[B, T]``, per-token log-probs (0 after the stop).
      lengths: int32 ``[B]``, generated tokens per row including the stop token.
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array

    @property
    def mask(self) -> jax.Array:
        """bool ``[B, T]``: True on generated tokens."""
        return jnp.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]


# Candidate-set sizes tried before a full sort of the vocabulary (``top_p_filter``): XLA's CPU
# sort of 8 x 49,152 logits takes ~130 ms, ``lax.top_k`` of 256 of them ~1 ms.
TOP_P_CANDIDATES = (256, 4096)


def _nucleus(vals: jax.Array, lse: jax.Array, top_p: float) -> tuple[jax.Array, jax.Array]:
    """Keep-mask of descending-sorted logits ``vals [..., K]`` (the ``K`` largest of a row whose
    log-sum-exp is ``lse [..., 1]``) and whether the nucleus provably lies inside them."""
    probs = jnp.exp(vals - lse)
    keep = jnp.cumsum(probs, axis=-1) - probs < top_p
    cutoff = jnp.min(jnp.where(keep, vals, jnp.inf), axis=-1)
    # complete when the last candidate is out and strictly below the cutoff (no tie outside);
    # written without slicing vals: XLA then keeps lax.top_k a TopK call, not a full sort
    inside = (jnp.sum(keep, axis=-1) < vals.shape[-1]) & (jnp.min(vals, axis=-1) < cutoff)
    return keep, inside


def _on_nucleus(logits: jax.Array, top_p: float, candidates: tuple[int, ...], fn):
    """``fn(values [B, K], token ids [B, K], keep [B, K])`` on the nucleus of every row, taken
    from the first candidate-set size ``K`` (``lax.top_k``) that holds every row's nucleus, else
    from a full sort (``K = V``, then in token order). ``fn``'s output must not depend on ``K``
    in shape. Traceable; ``lax.cond`` runs only the branch needed (both under ``vmap``)."""
    v = logits.shape[-1]
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    sizes = [k for k in candidates if k < v]

    def full(_):  # the whole vocabulary, in token order, outside the nucleus masked
        vals = jnp.sort(logits, axis=-1)[..., ::-1]
        keep = _nucleus(vals, lse, top_p)[0]
        cutoff = jnp.min(jnp.where(keep, vals, jnp.inf), axis=-1, keepdims=True)
        idx = jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), logits.shape)
        return fn(jnp.where(logits >= cutoff, logits, -jnp.inf), idx, logits >= cutoff)

    def tier(i):
        if i == len(sizes):
            return full

        def run(_):
            vals, idx = jax.lax.top_k(logits, sizes[i])
            keep, inside = _nucleus(vals, lse, top_p)
            out = fn(vals, idx.astype(jnp.int32), keep)
            return jax.lax.cond(jnp.all(inside), lambda o: o, lambda o: tier(i + 1)(None), out)

        return run

    return tier(0)(None)


def top_p_filter(logits: jax.Array, top_p: float,
                 candidates: tuple[int, ...] = TOP_P_CANDIDATES) -> jax.Array:
    """Sets to ``-inf`` every logit outside the smallest set holding probability ``>= top_p``.

    A token is kept when the probability of the strictly more likely tokens is ``< top_p``, so
    the most likely token is always kept (tied logits are kept or dropped together). The
    nucleus is searched among the ``K`` largest logits (``lax.top_k``, ``K`` from
    ``candidates``) and the whole vocabulary is sorted only when some row's nucleus is larger.

    Args:
      logits: float ``[..., V]``.
      top_p: nucleus mass in (0, 1].
      candidates: increasing candidate-set sizes tried before a full sort.

    Returns:
      Filtered logits, same shape.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    cutoff = _on_nucleus(flat, top_p, candidates, lambda vals, _, keep: jnp.min(
        jnp.where(keep, vals, jnp.inf), axis=-1, keepdims=True))
    return jnp.where(flat >= cutoff, flat, -jnp.inf).reshape(logits.shape)


def choose_tokens(logits: jax.Array, keys: jax.Array, config: SamplingConfig,
                  candidates: tuple[int, ...] = TOP_P_CANDIDATES) -> tuple[jax.Array, jax.Array]:
    """Draws one token per row and its log-prob.

    With ``top_p < 1`` the draw is a categorical over the nucleus' candidates (the ``K``
    largest logits, see ``top_p_filter``), not over the whole vocabulary.

    Args:
      logits: float32 ``[B, V]``.
      keys: ``[B]`` PRNG keys.
      config: temperature / top-p.
      candidates: candidate-set sizes for top-p.

    Returns:
      ``(tokens int32 [B], logprobs float32 [B])``.
    """
    if config.temperature == 0.0:
        tok = jnp.argmax(logits, axis=-1)
        logp = jax.nn.log_softmax(logits, axis=-1)
    else:
        scaled = logits / config.temperature
        logp = jax.nn.log_softmax(scaled, axis=-1)
        if config.top_p < 1.0:
            def draw(vals, idx, keep):
                j = jax.vmap(jax.random.categorical)(keys, jnp.where(keep, vals, -jnp.inf))
                return jnp.take_along_axis(idx, j[:, None], axis=-1)[:, 0]

            tok = _on_nucleus(scaled, config.top_p, candidates, draw)
        else:
            tok = jax.vmap(jax.random.categorical)(keys, scaled)
    lp = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
    return tok.astype(jnp.int32), lp


StepFn = Callable[[jax.Array, jax.Array, jax.Array, KVCache], tuple[jax.Array, KVCache]]


def decode(model: Llama, step: StepFn, hidden: jax.Array, next_pos: jax.Array, cache: KVCache,
           key: jax.Array, config: SamplingConfig) -> SampleOutput:
    """The sampling loop after a prefill (traceable; called by ``sample``/``sample_group``).

    Args:
      model: the merged module (for its LM head).
      step: ``(tokens [B], positions [B], real [B], cache) -> (hidden [B, D], cache)``.
      hidden: ``[B, D]`` hidden state predicting the first new token.
      next_pos: int ``[B]`` RoPE position of the first new token.
      cache: cache with room for ``max_new_tokens`` more slots.
      key: PRNG key.
      config: sampling options.

    Returns:
      ``SampleOutput``.
    """
    b, n = hidden.shape[0], config.max_new_tokens
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(b))
    stop = jnp.asarray(config.stop_tokens or (-1,), jnp.int32)

    def cond(state):
        i, done = state[0], state[5]
        return (i < n) & ~jnp.all(done)

    def body(state):
        i, h, cache, toks, lps, done, lengths = state
        keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, i)
        tok, lp = choose_tokens(model.logits(h), keys, config)
        tok = jnp.where(done, config.pad_id, tok)
        lp = jnp.where(done, 0.0, lp)
        toks = jax.lax.dynamic_update_slice(toks, tok[:, None], (0, i))
        lps = jax.lax.dynamic_update_slice(lps, lp[:, None], (0, i))
        lengths = lengths + (~done).astype(jnp.int32)
        real = ~done
        done = done | jnp.isin(tok, stop)
        h, cache = step(tok, next_pos + i, real, cache)
        return i + 1, h, cache, toks, lps, done, lengths

    state = (
        jnp.zeros((), jnp.int32), hidden, cache, jnp.full((b, n), config.pad_id, jnp.int32),
        jnp.zeros((b, n), f32), jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32),
    )
    _, _, _, toks, lps, _, lengths = jax.lax.while_loop(cond, body, state)
    return SampleOutput(tokens=toks, logprobs=lps, lengths=lengths)


def _check_length(model: Llama, prompt_len: int, config: SamplingConfig) -> None:
    total = prompt_len + config.max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(
            f"prompt ({prompt_len}) + max_new_tokens ({config.max_new_tokens}) = {total} exceeds "
            f"max_seq_len={model.config.max_seq_len}"
        )


@functools.partial(jax.jit, static_argnums=0, static_argnames="config")
def sample(
    graphdef: nnx.GraphDef,
    params: ParamsLike,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    *,
    config: SamplingConfig,
) -> SampleOutput:
    """Samples one continuation per prompt of a padded batch.

    The cache holds ``P + max_new_tokens`` slots: the prompt is prefilled in one pass, then
    each step runs one token per row.

    Args:
      graphdef: model graphdef (static).
      params: model state or sequence of states.
      prompt: int ``[B, S]`` (left- or right-padded).
      prompt_mask: bool ``[B, S]``, real tokens (at least one per row).
      key: PRNG key; same key, same samples.
      config: ``SamplingConfig`` (static).

    Returns:
      ``SampleOutput`` with ``[B, max_new_tokens]`` tokens and log-probs.
    """
    model = merge(graphdef, params)
    b, p = prompt.shape
    _check_length(model, p, config)
    mask = prompt_mask.astype(bool)
    cache = init_cache(model.config, b, p + config.max_new_tokens)
    hidden, cache = model(prompt, positions_from_mask(mask), mask, cache)
    last = jnp.max(jnp.where(mask, jnp.arange(p), 0), axis=1)
    h0 = hidden[jnp.arange(b), last]

    def step(tok, pos, real, cache):
        h, cache = model(tok[:, None], pos[:, None], real[:, None], cache)
        return h[:, 0], cache

    return decode(model, step, h0, mask.sum(1).astype(jnp.int32), cache, key, config)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("config", "num_samples"))
def sample_group(
    graphdef: nnx.GraphDef,
    params: ParamsLike,
    prompt: jax.Array,
    key: jax.Array,
    *,
    num_samples: int,
    config: SamplingConfig,
    prompt_mask: jax.Array | None = None,
) -> SampleOutput:
    """Samples ``num_samples`` continuations of one prompt (a GRPO group), prompt computed once.

    The prompt's keys/values are a shared ``Prefix`` read by every row; the per-row cache only
    holds the ``max_new_tokens`` generated slots. Row ``g`` equals row ``g`` of ``sample`` on the
    prompt repeated ``num_samples`` times with the same key.

    Args:
      graphdef: model graphdef (static).
      params: model state or sequence of states.
      prompt: int ``[S]``.
      key: PRNG key.
      num_samples: group size ``G`` (static).
      config: ``SamplingConfig`` (static).
      prompt_mask: optional bool ``[S]``.

    Returns:
      ``SampleOutput`` with ``[G, max_new_tokens]`` tokens and log-probs.
    """
    model = merge(graphdef, params)
    _check_length(model, prompt.shape[0], config)
    prefix = prefill_prefix(model, prompt, prompt_mask)
    cache = init_cache(model.config, num_samples, config.max_new_tokens)
    h0 = jnp.broadcast_to(prefix.last_hidden, (num_samples, prefix.last_hidden.shape[-1]))
    pos0 = jnp.full((num_samples,), prefix.next_position, jnp.int32)

    def step(tok, pos, real, cache):
        h, cache = model(tok[:, None], pos[:, None], real[:, None], cache, prefix)
        return h[:, 0], cache

    return decode(model, step, h0, pos0, cache, key, config)


@functools.partial(jax.jit, static_argnums=0, static_argnames="config")
def sample_with_prefixes(
    graphdef: nnx.GraphDef,
    params: ParamsLike,
    prefixes: jax.Array,
    prefix_mask: jax.Array,
    prefix_index: jax.Array,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    *,
    config: SamplingConfig,
) -> SampleOutput:
    """Samples one continuation per row of ``prefixes[prefix_index[b]] ++ prompt[b]``.

    The ``U`` prefixes are prefilled once and their keys/values gathered into each row's
    cache; rows then prefill only their own prompt and decode. Row ``b`` equals row ``b`` of
    ``sample`` on the concatenated (unpadded) prompts with the same key.

    Args:
      graphdef: model graphdef (static).
      params: model state or sequence of states.
      prefixes: int ``[P, S_p]`` (left-padded), e.g. the demonstrations of a batch.
      prefix_mask: bool ``[P, S_p]`` (at least one real token per prefix).
      prefix_index: int ``[B]`` (``-1``: no prefix; the row's attention reads ``S_p`` masked
        slots but no prefix token is computed for it, so bare and prefixed rows can share one
        decoding loop).
      prompt: int ``[B, S]``, the rest of each prompt (at least one real token per row).
      prompt_mask: bool ``[B, S]``.
      key: PRNG key.
      config: ``SamplingConfig`` (static).

    Returns:
      ``SampleOutput`` with ``[B, max_new_tokens]`` tokens and log-probs.
    """
    _check_prefix_args(prefixes, prefix_mask, prefix_index, prompt, prompt_mask)
    model = merge(graphdef, params)
    b, p = prompt.shape
    _check_length(model, prefixes.shape[1] + p, config)
    mask = prompt_mask.astype(bool)
    cache = rows_from_prefixes(prefill_prefixes(model, prefixes, prefix_mask), prefix_index,
                               p + config.max_new_tokens)
    offset = prefix_offsets(prefix_mask, prefix_index)
    hidden, cache = model(prompt, positions_from_mask(mask, offset[:, None]), mask, cache)
    last = jnp.max(jnp.where(mask, jnp.arange(p), 0), axis=1)
    h0 = hidden[jnp.arange(b), last]

    def step(tok, pos, real, cache):
        h, cache = model(tok[:, None], pos[:, None], real[:, None], cache)
        return h[:, 0], cache

    return decode(model, step, h0, offset + mask.sum(1).astype(jnp.int32), cache, key, config)


@functools.partial(jax.jit, static_argnums=0, static_argnames="config")
def sample_prefix_groups(
    graphdef: nnx.GraphDef,
    params: ParamsLike,
    prefixes: jax.Array,
    prefix_mask: jax.Array,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    *,
    config: SamplingConfig,
) -> SampleOutput:
    """Samples ``U`` groups of ``N`` rows; every row of group ``u`` continues prefix ``u``.

    Each prefix is a shared ``Prefix`` (keys/values stored once, read by its ``N`` rows through a
    broadcasting einsum, as in ``sample_group``); a row's own cache holds only its prompt and
    the new tokens. A prefix whose mask is all False is no prefix (bare rows). Group ``u`` uses
    the key ``fold_in(key, u)`` and within it row ``n`` the key ``fold_in(·, n)``.

    Args:
      graphdef: model graphdef (static).
      params: model state or sequence of states.
      prefixes: int ``[P, S_p]`` (left-padded), e.g. the demonstrations of a batch.
      prefix_mask: bool ``[P, S_p]`` (all False: no prefix).
      prompt: int ``[P, G, S]``, each row's own prompt (at least one real token per row).
      prompt_mask: bool ``[P, G, S]``.
      key: PRNG key.
      config: ``SamplingConfig`` (static).

    Returns:
      ``SampleOutput`` with ``[P, G, T]`` tokens and log-probs (``T = max_new_tokens``),
      ``[P, G]`` lengths (its ``mask`` property expects ``[B, T]``: reshape to ``P·G`` rows
      first).
    """
    if prefixes.ndim != 2 or prefix_mask.shape != prefixes.shape or prompt.ndim != 3 \
            or prompt.shape[0] != prefixes.shape[0] or prompt_mask.shape != prompt.shape:
        raise ValueError(f"need prefixes [P, S_p], prompt [P, G, S] and masks of the same shapes, "
                         f"got {prefixes.shape}, {prefix_mask.shape}, {prompt.shape}, "
                         f"{prompt_mask.shape}")
    model = merge(graphdef, params)
    _check_length(model, prefixes.shape[1] + prompt.shape[2], config)

    def one(pre, pre_mask, own, own_mask, k):
        prefix = prefill_prefix(model, pre, pre_mask)
        n, p = own.shape
        mask = own_mask.astype(bool)
        cache = init_cache(model.config, n, p + config.max_new_tokens)
        hidden, cache = model(own, positions_from_mask(mask, prefix.next_position), mask, cache,
                              prefix)
        last = jnp.max(jnp.where(mask, jnp.arange(p), 0), axis=1)
        h0 = hidden[jnp.arange(n), last]

        def step(tok, pos, real, cache):
            h, cache = model(tok[:, None], pos[:, None], real[:, None], cache, prefix)
            return h[:, 0], cache

        pos0 = prefix.next_position + mask.sum(1).astype(jnp.int32)
        return decode(model, step, h0, pos0, cache, k, config)

    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(prefixes.shape[0]))
    return jax.vmap(one)(prefixes, prefix_mask, prompt, prompt_mask, keys)
