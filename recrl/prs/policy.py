"""The ProRL path policy: a small decoder-only transformer over item tokens.

Design (decoder-only rather than the reference's encoder-decoder T5): the prompt is the
fixed-length token sequence ``[h_1 .. h_history, target, SEP]`` (``S = history + 2`` tokens)
and the path follows it, one token per item, so an item's log-probability is exact (one
action = one token) and a single causal forward pass teacher-forces a whole path. The prompt
has a fixed length, so sampling uses a preallocated KV cache (:class:`recrl.models.KVCache`,
slot = position) without any padding bookkeeping. The blocks are
:class:`recrl.models.attention.CausalBlock`.

Vocabulary: items ``0 .. N-1``, ``EOS = N``, ``SEP = N + 1``, ``PAD = N + 2``. The output
layer scores the ``N + 1`` actions (items and EOS) with the tied item embeddings.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from recrl.models.attention import CausalBlock, DropoutFn, position_mask
from recrl.models.cache import KVCache


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Policy sizes (names as in ``docs/glossary.md``).

    Attributes:
      num_items: ``N`` items in the catalogue (``V = N + 1`` actions: items and EOS).
      history: history items in the prompt (the prompt has ``S = history + 2`` tokens).
      max_len: ``T`` maximum path length.
      dim, n_layers, n_heads, ffn_dim: transformer width ``D``, blocks, heads ``H`` and
        feed-forward width.
      dropout: dropout rate during supervised pretraining (RL runs deterministic).
    """

    num_items: int
    history: int = 10
    max_len: int = 10
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn_dim: int = 256
    dropout: float = 0.1

    def __post_init__(self):
        if self.num_items < 2:
            raise ValueError(f"num_items must be >= 2, got {self.num_items}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} must be divisible by n_heads {self.n_heads}")
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


class PathPolicy(nnx.Module):
    """Decoder-only transformer policy over item tokens (see the module docstring)."""

    def __init__(self, cfg: PolicyConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.num_items + 3, cfg.dim, rngs=rngs)
        self.pos = nnx.Embed(cfg.seq_len, cfg.dim, rngs=rngs)
        self.segment = nnx.Embed(3, cfg.dim, rngs=rngs)  # history / target / path
        # no qkv bias: a key bias cannot change attention (softmax shift) and only adds noise
        self.blocks = nnx.List([CausalBlock(cfg.dim, cfg.n_heads, cfg.ffn_dim, rngs=rngs,
                                            qkv_bias=False) for _ in range(cfg.n_layers)])
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

    def _dropout(self, rngs: nnx.Rngs | None) -> DropoutFn | None:
        """The blocks' dropout: on the two residual branches, active when ``rngs`` is given."""
        if rngs is None:
            return None

        def drop(site: str, x: jax.Array) -> jax.Array:
            if site in ("attn_out", "ffn_out"):
                return self.drop(x, deterministic=False, rngs=rngs)
            return x

        return drop

    def __call__(self, tokens: jax.Array, rngs: nnx.Rngs | None = None,
                 return_hidden: bool = False, start: int = 0
                 ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Causal logits ``[B, S - start, V]`` for tokens ``[B, S]`` (positions from 0).

        Dropout is active exactly when ``rngs`` (with a ``dropout`` stream) is given. With
        ``return_hidden`` also the final hidden states ``[B, S - start, D]`` (the state
        features an actor-critic's value head reads). ``start`` skips the output projection
        for the first positions (the prompt's, whose logits training never reads).
        """
        positions = jnp.arange(tokens.shape[1])
        x = self._embed(tokens, positions, rngs is None, rngs)
        mask, dropout = position_mask(tokens.shape[1], positions), self._dropout(rngs)
        for blk in self.blocks:
            x, _ = blk(x, mask, dropout=dropout)
        x = x[:, start:]
        return (self._logits(x), x) if return_hidden else self._logits(x)

    def _cached(self, x: jax.Array, position: jax.Array, cache: KVCache) -> tuple[jax.Array,
                                                                                  KVCache]:
        """The blocks over a chunk ``[B, S, D]`` at positions ``position + 0 .. S - 1``."""
        positions = position + jnp.arange(x.shape[1])
        mask = position_mask(cache.length, positions)
        ks, vs = [], []
        for blk, k, v in zip(self.blocks, cache.k, cache.v, strict=True):
            x, (k, v) = blk(x, mask, (k, v), position)
            ks.append(k)
            vs.append(v)
        valid = cache.valid | (jnp.arange(cache.length) <= positions[-1])[None]
        return x, KVCache(tuple(ks), tuple(vs), valid, positions[-1] + 1)

    def prefill(self, prompt: jax.Array) -> tuple[jax.Array, KVCache]:
        """Runs the prompt ``[B, S]``; returns the first action's logits ``[B, V]`` and the
        cache (:class:`recrl.models.KVCache` of ``L = seq_len`` slots)."""
        cfg = self.cfg
        cache = KVCache.zeros(cfg.n_layers, prompt.shape[0], cfg.seq_len, cfg.n_heads,
                              cfg.dim // cfg.n_heads)
        x = self._embed(prompt, jnp.arange(prompt.shape[1]), True)
        x, cache = self._cached(x, jnp.zeros((), jnp.int32), cache)
        return self._logits(x[:, -1]), cache

    def prefill_grouped(self, prompt: jax.Array, group_size: int
                        ) -> tuple[jax.Array, jax.Array, KVCache]:
        """:meth:`prefill` of ``P`` prompts, shared by ``group_size`` continuations each.

        The prompt ``[P, S]`` goes through the blocks once; the cache is then repeated to
        ``P * group_size`` rows (the ``G`` rows of a prompt consecutive). Returns the last
        prompt position's hidden state and logits, repeated (``[P * G, D]``, ``[P * G, V]``),
        and the repeated cache. Differentiable (the gradient of a repeated row sums back
        into its prompt)."""
        cfg = self.cfg
        cache = KVCache.zeros(cfg.n_layers, prompt.shape[0], cfg.seq_len, cfg.n_heads,
                              cfg.dim // cfg.n_heads)
        x = self._embed(prompt, jnp.arange(prompt.shape[1]), True)
        x, cache = self._cached(x, jnp.zeros((), jnp.int32), cache)
        rep = lambda a: jnp.repeat(a, group_size, axis=0)
        last = rep(x[:, -1])
        cache = KVCache(tuple(map(rep, cache.k)), tuple(map(rep, cache.v)), rep(cache.valid),
                        cache.index)
        return last, self._logits(last), cache

    def continuations(self, prompt: jax.Array, inputs: jax.Array, return_hidden: bool = False
                      ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Causal logits of ``G`` continuations per prompt, each prompt run once.

        ``prompt`` ``[P, S]``; ``inputs`` ``[P * G, U]`` tokens at positions ``S .. S + U - 1``
        (rows ``p * G .. p * G + G - 1`` continue prompt ``p``). Returns ``[P * G, 1 + U, V]``
        logits (the last prompt position's, then one per input), the same values as
        ``self(concat(repeated prompt, inputs), start=S - 1)`` at a fraction of the cost
        (the blocks see ``P`` prompts instead of ``P * G``); with ``return_hidden`` also the
        hidden states. Evaluation mode (no dropout).
        """
        n_prompts, s = prompt.shape
        if inputs.shape[0] % n_prompts:
            raise ValueError(f"{inputs.shape[0]} continuations do not split over "
                             f"{n_prompts} prompts")
        last, _, cache = self.prefill_grouped(prompt, inputs.shape[0] // n_prompts)
        y = self._embed(inputs, s + jnp.arange(inputs.shape[1]), True)
        y, _ = self._cached(y, jnp.asarray(s, jnp.int32), cache)
        h = jnp.concatenate([last[:, None], y], axis=1)
        return (self._logits(h), h) if return_hidden else self._logits(h)

    def decode(self, token: jax.Array, position: jax.Array, cache: KVCache
               ) -> tuple[jax.Array, KVCache]:
        """Feeds one token ``[B]`` at ``position``; returns next logits ``[B, V]``, cache."""
        x = self._embed(token[:, None], position[None], True)
        x, cache = self._cached(x, position, cache)
        return self._logits(x[:, 0]), cache


def make_prompt(cfg: PolicyConfig, history: jax.Array, target: jax.Array) -> jax.Array:
    """``[B, S]`` prompt tokens ``[h_1 .. h_history, target, SEP]`` (``S = history + 2``)."""
    if history.shape[-1] != cfg.history:
        raise ValueError(f"`history` must have {cfg.history} items, got shape {history.shape}")
    sep = jnp.full(target.shape + (1,), cfg.sep, history.dtype)
    return jnp.concatenate([history, target[..., None].astype(history.dtype), sep], axis=-1)


def action_tokens(cfg: PolicyConfig, path: jax.Array, lengths: jax.Array) -> jax.Array:
    """``[B, T]`` actions: the item at ``t < lengths``, EOS at ``t = lengths``, PAD after."""
    t = jnp.arange(path.shape[-1])
    acts = jnp.where(t < lengths[..., None], path, cfg.pad)
    return jnp.where(t == lengths[..., None], cfg.eos, acts)


def path_logits(policy: PathPolicy, history: jax.Array, target: jax.Array, path: jax.Array,
                lengths: jax.Array, rngs: nnx.Rngs | None = None, return_hidden: bool = False
                ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Teacher-forced logits ``[B, T, N + 1]`` of every action of the given paths.

    Position ``t`` holds the distribution of action ``t`` given the prompt and
    ``path[:t]``; positions past the path's EOS are meaningless (mask them).

    Grouped paths: with ``history`` ``[P, H]`` and ``target`` ``[P]`` for ``path``
    ``[P * G, T]`` (``G > 1``; rows ``p * G .. p * G + G - 1`` belong to prompt ``p``), each
    prompt goes through the blocks once (:meth:`PathPolicy.continuations`); the values are
    those of the repeated prompts. Not with dropout (``rngs``).
    """
    cfg = policy.cfg
    T = path.shape[-1]
    if T != cfg.max_len:
        raise ValueError(f"`path` must have {cfg.max_len} positions, got shape {path.shape}")
    if path.shape[0] % history.shape[0]:
        raise ValueError(f"{path.shape[0]} paths do not split over {history.shape[0]} prompts")
    grouped = path.shape[0] != history.shape[0]
    if grouped and rngs is not None:
        raise ValueError("grouped paths (fewer prompts than paths) run without dropout")
    prompt = make_prompt(cfg, history, target)
    inputs = action_tokens(cfg, path, lengths)[:, : T - 1]
    inputs = jnp.where(inputs == cfg.eos, cfg.pad, inputs)
    if grouped:
        return policy.continuations(prompt, inputs, return_hidden)
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


BANNED_LOGIT = -1e9  #: logit of an action outside the action space (probability exactly 0)


def action_mask(T: int, num_actions: int, target: jax.Array | None) -> jax.Array:
    """``[B or 1, T, V]`` bool, the action space: EOS (the last action) is not allowed at
    ``t = 0`` and, with ``target`` ``[B]``, each row's target never (as
    :func:`masked_log_softmax`)."""
    cols = jnp.arange(num_actions)
    allowed = ~((jnp.arange(T)[:, None] == 0) & (cols[None, :] == num_actions - 1))[None]
    if target is not None:
        allowed = allowed & (cols[None, None, :] != target[:, None, None])
    return allowed


def log_probs_and_kl(logits: jax.Array, ref_logp: jax.Array, actions: jax.Array,
                     allowed: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log π(a_t) [B, T], KL(π_t ‖ π_ref,t) [B, T])`` from one masked log-softmax.

    ``ref_logp`` is the reference's log-softmax over the same ``allowed`` actions (banned
    actions at logit ``-1e9``, so their probability under both is exactly 0 and their KL
    term vanishes without a second mask); PAD actions (``>= V``) get log-prob 0. Equals
    :func:`action_log_probs` and :func:`recrl.estimators.full_kl` with
    ``where=allowed`` (tested).
    """
    lp = jax.nn.log_softmax(jnp.where(allowed, logits, BANNED_LOGIT), -1)
    n_act = logits.shape[-1]
    taken = jnp.take_along_axis(lp, jnp.minimum(actions, n_act - 1)[..., None], -1)[..., 0]
    kl = jnp.sum(jnp.exp(lp) * (lp - ref_logp), -1)
    return jnp.where(actions < n_act, taken, 0.0), kl
