r"""The frozen user simulator / reward model of ProRL: SASRec and GRU4Rec in Flax NNX.

One convention for the whole module (and for everything that calls it):

* public item ids are ``0..N-1``; internally token ``i + 1`` is item ``i`` and token ``0`` is
  padding (the extra row 0 of the embedding table);
* sequences are **right-padded** with explicit ``lengths``; entries at positions
  ``>= lengths`` are ignored and may hold anything (e.g. ``-1``);
* the representation of a prefix of length ``k`` is the hidden state at position ``k - 1``,
  :math:`h(S_{:k}) = \mathrm{states}_{k-1}`. Both models are causal (masked self-attention,
  a left-to-right recurrence), so it does not depend on anything at positions ``>= k``;
* with item embeddings :math:`v_i` (shared by input and output),

  .. math:: s_i(S) = h(S) \cdot v_i, \quad P(i \mid S) = \mathrm{softmax}_i\, s(S), \quad
            \mathrm{Rank}(i \mid S) = 1 + \#\{j : P(j \mid S) > P(i \mid S)\}, \quad
            \mathrm{CTR}(i \mid S) = \sigma(h(S) \cdot v_i);

* a sequence longer than ``max_len`` is scored on its most recent ``max_len`` items.

Scoring runs in evaluation mode (no dropout). :func:`score_paths` gets every prefix state of
``history ⊕ path`` from one causal forward pass.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from recrl.models.attention import CausalBlock, DropoutFn, causal_mask

KINDS = ("sasrec", "gru4rec")


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Simulator hyper-parameters (defaults: the paper's SASRec; GRU4Rec emb 64, hidden 128).

    Attributes:
      kind: ``"sasrec"`` or ``"gru4rec"``.
      num_items: catalogue size ``N`` (public ids ``0..N-1``).
      max_len: longest sequence the model reads (learned positions for SASRec).
      dim: SASRec width ``D``; GRU4Rec item-embedding size (also the output representation).
      n_layers, n_heads, ffn_dim: SASRec transformer blocks, attention heads, feed-forward
        width.
      dropout: dropout rate (SASRec: embeddings, attention, residual branches; GRU4Rec:
        input embeddings and the GRU output).
      gru_hidden: GRU4Rec recurrent state size (one layer).
    """

    kind: Literal["sasrec", "gru4rec"]
    num_items: int
    max_len: int = 50
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    ffn_dim: int = 256
    dropout: float = 0.5
    gru_hidden: int = 128

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("num_items", "max_len", "dim", "n_layers", "n_heads", "ffn_dim",
                     "gru_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_items < 2 or self.max_len < 2:
            raise ValueError(f"need num_items >= 2 and max_len >= 2: {self}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, fields: dict, source: str = "the saved config") -> SimConfig:
        """The config saved by :func:`recrl.prs.train_simulator.save_simulator`.

        Raises:
          ValueError: ``fields`` uses the size names of simulators saved before the shared
            causal block (``hidden, heads, blocks, ffn``); such a checkpoint also holds the
            former parameter names, so it must be retrained.
        """
        old = sorted(set(fields) & {"hidden", "heads", "blocks", "ffn"})
        if old:
            raise ValueError(
                f"{source} uses the former size names {old} (now dim, n_heads, n_layers, "
                "ffn_dim; docs/glossary.md): a simulator saved before the shared transformer "
                "block cannot be restored; retrain it (delete it or use a new --out_dir)")
        return cls(**fields)


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout with an explicit key; ``key=None`` is evaluation mode (identity).

    Any key works; ``rbg`` keys compile much faster on CPU than the default threefry.
    """
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _keys(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    return [None] * n if key is None else list(jax.random.split(key, n))


def _block_dropout(rate: float, key: jax.Array | None) -> DropoutFn | None:
    """SASRec's dropout at all four sites of a :class:`CausalBlock`, one key each."""
    if key is None:
        return None
    keys = dict(zip(("attn", "attn_out", "ffn_hidden", "ffn_out"), _keys(key, 4), strict=True))
    return lambda site, x: _dropout(x, rate, keys[site])


class SASRec(nnx.Module):
    """SASRec: item + learned position embeddings, causal pre-LN transformer, final LayerNorm.

    ``model(tokens, key=None) -> [B, S, D]`` states; ``tokens`` are internal ids
    (0 = pad, item ``i`` is ``i + 1``), ``S <= max_len``. ``key`` enables dropout.
    """

    def __init__(self, cfg: SimConfig, *, rngs: nnx.Rngs):
        if cfg.kind != "sasrec":
            raise ValueError(f"SASRec needs kind='sasrec', got {cfg.kind!r}")
        init = nnx.initializers.normal(0.02)
        self.cfg = cfg
        self.item_embed = nnx.Embed(cfg.num_items + 1, cfg.dim, embedding_init=init, rngs=rngs)
        self.pos_embed = nnx.Embed(cfg.max_len, cfg.dim, embedding_init=init, rngs=rngs)
        self.blocks = nnx.List([
            CausalBlock(cfg.dim, cfg.n_heads, cfg.ffn_dim, rngs=rngs, epsilon=1e-8,
                        kernel_init=init) for _ in range(cfg.n_layers)])
        self.final_norm = nnx.LayerNorm(cfg.dim, epsilon=1e-8, rngs=rngs)

    def item_embeddings(self) -> jax.Array:
        """``[N, D]`` output embeddings ``v_i`` of the public items (pad row dropped)."""
        return self.item_embed.embedding[...][1:]

    def __call__(self, tokens: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        keys = _keys(key, len(self.blocks) + 1)
        x = self.item_embed(tokens) + self.pos_embed(jnp.arange(tokens.shape[1]))[None]
        x = _dropout(x, self.cfg.dropout, keys[0]) * (tokens > 0)[..., None]
        mask = causal_mask(tokens.shape[1])
        for block, k in zip(self.blocks, keys[1:], strict=True):
            x, _ = block(x, mask, dropout=_block_dropout(self.cfg.dropout, k))
        return self.final_norm(x)


class GRU4Rec(nnx.Module):
    r"""GRU4Rec: item embedding, one GRU layer (``lax.scan``, zero initial state), projection.

    The cell (PyTorch gate order ``r, z, n``) with :math:`x_t` the embedded item:

    .. math:: r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}), \quad
              z = \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}),
    .. math:: n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})), \quad
              h' = (1 - z) \odot n + z \odot h,

    and the representation is ``proj(h_t)`` in the item-embedding space. ``w_i`` / ``w_h``
    kernels are ``[in, 3 * gru_hidden]`` with columns ``[r | z | n]``.
    """

    def __init__(self, cfg: SimConfig, *, rngs: nnx.Rngs):
        if cfg.kind != "gru4rec":
            raise ValueError(f"GRU4Rec needs kind='gru4rec', got {cfg.kind!r}")
        e, h = cfg.dim, cfg.gru_hidden
        self.cfg = cfg
        self.item_embed = nnx.Embed(cfg.num_items + 1, e,
                                    embedding_init=nnx.initializers.normal(0.1), rngs=rngs)
        glorot = nnx.initializers.glorot_uniform()
        self.w_i = nnx.Linear(e, 3 * h, kernel_init=glorot, rngs=rngs)
        self.w_h = nnx.Linear(h, 3 * h, kernel_init=nnx.initializers.orthogonal(), rngs=rngs)
        self.proj = nnx.Linear(h, e, kernel_init=glorot, rngs=rngs)

    def item_embeddings(self) -> jax.Array:
        """``[N, D]`` output embeddings ``v_i`` of the public items (pad row dropped)."""
        return self.item_embed.embedding[...][1:]

    def __call__(self, tokens: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        k_in, k_out = _keys(key, 2)
        x = _dropout(self.item_embed(tokens) * (tokens > 0)[..., None], self.cfg.dropout, k_in)
        gates_x = self.w_i(x).swapaxes(0, 1)  # [S, B, 3 * gru_hidden]: input part of all gates
        w_h, b_h = self.w_h.kernel[...], self.w_h.bias[...]

        def cell(h, gx):
            xr, xz, xn = jnp.split(gx, 3, axis=-1)
            hr, hz, hn = jnp.split(h @ w_h + b_h, 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            h = (1.0 - z) * jnp.tanh(xn + r * hn) + z * h
            return h, h

        h0 = jnp.zeros((tokens.shape[0], self.cfg.gru_hidden), gates_x.dtype)
        _, hs = jax.lax.scan(cell, h0, gates_x)
        return self.proj(_dropout(hs.swapaxes(0, 1), self.cfg.dropout, k_out))


Simulator = SASRec | GRU4Rec
#: A simulator module, or its ``(graphdef, state)`` from ``nnx.split`` (for use inside jit).
SimLike = Simulator | tuple[nnx.GraphDef, nnx.State]


def build_simulator(cfg: SimConfig, *, seed: int = 0) -> Simulator:
    """A freshly initialised :class:`SASRec` or :class:`GRU4Rec`, chosen by ``cfg.kind``."""
    cls = SASRec if cfg.kind == "sasrec" else GRU4Rec
    return cls(cfg, rngs=nnx.Rngs(seed))


class StepScores(NamedTuple):
    r"""Simulator scores of every prefix of ``history ⊕ path`` (from :func:`score_paths`).

    With :math:`S_k = \mathrm{history} \oplus \mathrm{path}[:k]` (``k`` path items appended)
    and target :math:`i_T`:

    Attributes:
      logp_target: ``[B, T + 1]`` float32, ``[:, k] = log P(i_T | S_k)`` for ``k = 0..T``
        (softmax over all ``N`` items); ``[:, 0]`` is the history alone.
      rank: ``[B, T + 1]`` int32, ``[:, k] = Rank(i_T | S_k) = 1 + #{j : P(j|S_k) > P(i_T|S_k)}``.
      click: ``[B, T]`` float32, ``[:, k] = CTR_k = sigmoid(h(S_k) · v_{path[k]})``: the
        click probability of the ``(k+1)``-th path item given everything before it.

    Only ``k <= lengths`` (``logp_target``, ``rank``) and ``k < lengths`` (``click``) are
    meaningful; later entries are finite but arbitrary, the caller masks them. Path
    rewards then read, e.g., ``IoI = logp_target[b, L] - logp_target[b, 0]``,
    ``IoR = rank[b, 0] - rank[b, L]``, ``CTR = mean(click[b, :L])``.
    """

    logp_target: jax.Array
    rank: jax.Array
    click: jax.Array


def _split(sim: SimLike) -> tuple[nnx.GraphDef, nnx.State, SimConfig]:
    """``(graphdef, state, cfg)`` of a module or of an ``nnx.split`` pair."""
    if isinstance(sim, tuple):
        graphdef, state = sim
        return graphdef, state, nnx.merge(graphdef, state).cfg
    if not isinstance(sim, SASRec | GRU4Rec):
        raise TypeError(f"expected a SASRec / GRU4Rec module or (graphdef, state), got {type(sim)}")
    return *nnx.split(sim), sim.cfg


def _is_concrete(*xs: ArrayLike) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _check_ids(name: str, ids: ArrayLike, valid: np.ndarray | bool, num_items: int) -> None:
    """Eager-mode range check of the item ids at ``valid`` positions (skipped under jit)."""
    if not _is_concrete(ids):
        return
    a = np.asarray(ids)
    bad = np.asarray(valid) & ((a < 0) | (a >= num_items))
    if bad.any():
        where = tuple(int(w[0]) for w in np.nonzero(bad))
        raise ValueError(f"{name}: item id {int(a[where])} at index {where} is outside "
                         f"[0, {num_items})")


def _check_2d(name: str, x: ArrayLike, batch: int | None = None) -> None:
    shape = np.shape(x)
    if len(shape) != 2 or (batch is not None and shape[0] != batch):
        want = "[B, S]" if batch is None else f"[{batch}, S]"
        raise ValueError(f"{name} must have shape {want}, got {shape}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
        raise ValueError(f"{name} must hold integer item ids, got {jnp.result_type(x)}")


def _check_1d(name: str, x: ArrayLike, batch: int) -> None:
    if np.shape(x) != (batch,):
        raise ValueError(f"{name} must have shape [{batch}], got {np.shape(x)}")


def _tokens(seq: jax.Array, lengths: jax.Array, num_items: int) -> jax.Array:
    """Internal ids: ``seq + 1`` before ``lengths`` (clipped to the catalogue), 0 after."""
    valid = jnp.arange(seq.shape[1]) < lengths[:, None]
    return jnp.where(valid, jnp.clip(seq, 0, num_items - 1) + 1, 0).astype(jnp.int32)


def _last_window(seq: jax.Array, lengths: jax.Array, max_len: int) -> tuple[jax.Array, jax.Array]:
    """The most recent ``max_len`` real items of each row, right-padded, and their count."""
    if seq.shape[1] <= max_len:
        return seq, lengths
    start = jnp.maximum(lengths - max_len, 0)
    idx = jnp.clip(start[:, None] + jnp.arange(max_len), 0, seq.shape[1] - 1)
    return jnp.take_along_axis(seq, idx, axis=1), jnp.minimum(lengths, max_len)


@functools.partial(jax.jit, static_argnums=0)
def _representation(graphdef: nnx.GraphDef, state: nnx.State, seq: jax.Array,
                    lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, state)
    seq, lengths = _last_window(seq, lengths, model.cfg.max_len)
    lengths = jnp.clip(lengths, 1, seq.shape[1])
    states = model(_tokens(seq, lengths, model.cfg.num_items))
    h = jnp.take_along_axis(states, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return h, model.item_embeddings()


def _check_seq(sim: SimLike, seq: ArrayLike, lengths: ArrayLike):
    graphdef, state, cfg = _split(sim)
    _check_2d("seq", seq)
    _check_1d("lengths", lengths, np.shape(seq)[0])
    if _is_concrete(lengths):
        ln = np.asarray(lengths)
        if ((ln < 1) | (ln > np.shape(seq)[1])).any():
            raise ValueError(f"lengths must be in [1, {np.shape(seq)[1]}], got {ln}")
        _check_ids("seq", seq, np.arange(np.shape(seq)[1]) < ln[:, None],
                   cfg.num_items)
    return graphdef, state


def sequence_representation(sim: SimLike, seq: ArrayLike, lengths: ArrayLike) -> jax.Array:
    r"""The sequence representation :math:`h(S)` = hidden state at position ``lengths - 1``.

    Args:
      sim: the simulator (module or ``(graphdef, state)``).
      seq: ``[B, S]`` int item ids, right-padded.
      lengths: ``[B]`` real lengths in ``[1, S]``; only the last ``max_len`` items are read.

    Returns:
      ``[B, D]`` float32.
    """
    graphdef, state = _check_seq(sim, seq, lengths)
    return _representation(graphdef, state, jnp.asarray(seq), jnp.asarray(lengths))[0]


def next_item_logits(sim: SimLike, seq: ArrayLike, lengths: ArrayLike) -> jax.Array:
    r"""Next-item scores after the whole right-padded sequence, :math:`s_i = h(S) \cdot v_i`.

    ``log_softmax`` of the result is :math:`\log P(i \mid S)`.

    Args:
      sim: the simulator (module or ``(graphdef, state)``).
      seq: ``[B, S]`` int item ids in ``[0, N)``, right-padded (any value after ``lengths``).
      lengths: ``[B]`` real lengths in ``[1, S]``; if ``lengths > max_len`` only the most
        recent ``max_len`` items are read.

    Returns:
      ``[B, N]`` float32 logits.

    Raises:
      ValueError: wrong shapes or dtypes; in eager mode also lengths out of range or an
        item id outside ``[0, N)`` before ``lengths`` (under jit such ids are clipped).
    """
    graphdef, state = _check_seq(sim, seq, lengths)
    h, emb = _representation(graphdef, state, jnp.asarray(seq), jnp.asarray(lengths))
    return h @ emb.T


@functools.partial(jax.jit, static_argnums=0)
def _score_paths(graphdef: nnx.GraphDef, state: nnx.State, history: jax.Array,
                 path: jax.Array, lengths: jax.Array, target: jax.Array) -> StepScores:
    model = nnx.merge(graphdef, state)
    num_items, t = model.cfg.num_items, path.shape[1]
    history = history[:, max(history.shape[1] + t - model.cfg.max_len, 0):]
    h = history.shape[1]
    seq = jnp.concatenate([history, path], axis=1)
    states = model(_tokens(seq, h + jnp.clip(lengths, 0, t), num_items))  # one causal pass
    prefix = states[:, h - 1:]  # [B, T+1, d]: prefix[:, k] = h(history ⊕ path[:k])
    emb = model.item_embeddings()
    logits = prefix @ emb.T  # [B, T+1, I]
    target = jnp.clip(target, 0, num_items - 1)
    s_target = jnp.take_along_axis(logits, target[:, None, None], axis=2)[..., 0]
    logp = s_target - jax.nn.logsumexp(logits, axis=-1)
    rank = 1 + jnp.sum(logits > s_target[..., None], axis=-1, dtype=jnp.int32)
    v_path = emb[jnp.clip(path, 0, num_items - 1)]  # [B, T, d]
    click = jax.nn.sigmoid(jnp.sum(prefix[:, :-1] * v_path, axis=-1))
    return StepScores(logp, rank, click)


def score_paths(sim: SimLike, history: ArrayLike, path: ArrayLike, lengths: ArrayLike,
                target: ArrayLike) -> StepScores:
    r"""Scores every prefix of ``history ⊕ path`` for a target, in one forward pass.

    For :math:`S_k = \mathrm{history} \oplus \mathrm{path}[:k]`, ``k = 0..T``:
    :math:`\log P(i_T \mid S_k)`, :math:`\mathrm{Rank}(i_T \mid S_k)` and, for ``k < T``,
    :math:`\mathrm{CTR}_k = \sigma(h(S_k) \cdot v_{\mathrm{path}[k]})` (see :class:`StepScores`).
    The causal model gives all ``h(S_k)`` from one pass over the right-padded
    ``history ⊕ path`` (state at position ``S + k - 1``); nothing is re-run per step.

    If ``S + T > max_len`` the oldest ``S + T - max_len`` history items are dropped for every
    prefix, so the model reads the most recent ``max_len`` items of ``history ⊕ path``.

    Args:
      sim: the simulator (module or ``(graphdef, state)``).
      history: ``[B, S]`` int item ids, all real (no padding), oldest first.
      path: ``[B, T]`` int item ids, right-padded after ``lengths`` (any value, e.g. ``-1``).
      lengths: ``[B]`` path lengths in ``[0, T]``.
      target: ``[B]`` target item ids.

    Returns:
      :class:`StepScores` with ``logp_target, rank: [B, T + 1]`` and ``click: [B, T]``.

    Raises:
      ValueError: wrong shapes / dtypes, ``T >= max_len``; in eager mode also lengths
        outside ``[0, T]`` or an item id outside ``[0, N)`` (history, path before
        ``lengths``, target).

    Example:
      >>> s = score_paths(sim, hist, path, lengths, target)  # doctest: +SKIP
      >>> ioi = s.logp_target[b, lengths[b]] - s.logp_target[b, 0]  # doctest: +SKIP
    """
    graphdef, state, cfg = _split(sim)
    _check_2d("history", history)
    b = np.shape(history)[0]
    _check_2d("path", path, b)
    _check_1d("lengths", lengths, b)
    _check_1d("target", target, b)
    num_items, max_len, t = cfg.num_items, cfg.max_len, np.shape(path)[1]
    if np.shape(history)[1] < 1 or t >= max_len:
        raise ValueError(f"need S >= 1 and T < max_len = {max_len}: got history "
                         f"{np.shape(history)}, path {np.shape(path)}")
    if _is_concrete(lengths):
        ln = np.asarray(lengths)
        if ((ln < 0) | (ln > t)).any():
            raise ValueError(f"lengths must be in [0, {t}], got {ln}")
        _check_ids("path", path, np.arange(t) < ln[:, None], num_items)
    _check_ids("history", history, True, num_items)
    _check_ids("target", target, True, num_items)
    return _score_paths(graphdef, state, jnp.asarray(history), jnp.asarray(path),
                        jnp.asarray(lengths), jnp.asarray(target))

