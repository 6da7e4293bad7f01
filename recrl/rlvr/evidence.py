r"""Explicit Evidence Gain of (question, trace) pairs over a probe set, batched and jitted.

For a trace ``r`` of question ``q`` and probes ``e = (e_q, e_r)``:

.. math::
    \Delta_e(q, r) = \log\pi(e_r \mid \mathrm{demo}(q, r), e_q) - \log\pi(e_r \mid e_q),\qquad
    \mathrm{EG} = \operatorname{mean}_e \Delta_e,\qquad
    \mathrm{EG}^{tok} = \operatorname{mean}_e \Delta_e / |e_r|

with ``demo(q, r) = "Q: q\nA: r\n\n"`` (:func:`recrl.rlvr.tasks.format_example`) placed
before the probe prompt ``"Q: e_q\nA: "``. Sharing:

- ``log π(e_r | e_q)`` is computed once per probe (one padded batch of ``E`` rows);
- for each trace the demo prefix ``bos + demo(q, r)`` is run once (``prefix_cache``) and all
  ``E`` probe continuations ``e_q ++ e_r`` attend to its keys/values
  (``logprobs_from_prefix``); only the ``e_r`` tokens are summed.

:func:`eg_weights` turns the EG of a batch of rollout groups into the learner's weights.

Cost per trace: one prefix pass plus ``E`` continuations of length ``|e_q| + |e_r|``
instead of ``E`` full passes over ``|demo| + |e_q| + |e_r|`` tokens.

Data-parallel (``mesh=``): the ``E`` bare probes and the ``B`` demos are split over the
mesh's devices (:func:`recrl.parallel.map_rows`: each device scores its own rows, a count
that does not divide is padded and the padding dropped, each process builds only its rows
and every process gets all the values), so every process holds the same weights.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recrl import estimators, models, parallel
from recrl.rlvr import tasks


class ProbeSet(NamedTuple):
    """Tokenised probes.

    Attributes:
      prompt: int ``[E, S]`` ``bos + "Q: e_q\nA: "``, left-padded (the bare condition).
      prompt_mask: bool ``[E, S]``.
      answer: int ``[E, T]`` ``e_r + eos``, right-padded.
      answer_mask: bool ``[E, T]``.
      cont: int ``[E, L]`` ``"Q: e_q\nA: " ++ e_r + eos`` (no bos), right-padded: the
        continuation scored after a demo prefix.
      cont_mask: bool ``[E, L]``.
      cont_answer: bool ``[E, L]`` True on the ``e_r`` tokens of ``cont``.
      num_tokens: int ``[E]`` ``|e_r|`` (eos included).
    """

    prompt: np.ndarray
    prompt_mask: np.ndarray
    answer: np.ndarray
    answer_mask: np.ndarray
    cont: np.ndarray
    cont_mask: np.ndarray
    cont_answer: np.ndarray
    num_tokens: np.ndarray


def encode_probes(tok, probes: Sequence[tasks.Problem], pad_id: int = 0) -> ProbeSet:
    """Tokenises probes ``(e_q, e_r = reference solution)`` for :func:`evidence_gain_batch`."""
    bos = [tok.bos_id] if tok.bos_id is not None else []
    qs = [tok.encode(tasks.format_prompt(p.question)) for p in probes]
    rs = [tasks.encode_solution(tok, p.solution) for p in probes]
    prompt, prompt_mask = models.pad_batch([bos + q for q in qs], pad_id=pad_id, side="left")
    answer, answer_mask = models.pad_batch(rs, pad_id=pad_id, side="right")
    cont, cont_mask = models.pad_batch([q + r for q, r in zip(qs, rs, strict=True)],
                                       pad_id=pad_id, side="right")
    cont_answer = np.zeros(cont.shape, bool)
    for i, (q, r) in enumerate(zip(qs, rs, strict=True)):
        cont_answer[i, len(q):len(q) + len(r)] = True
    return ProbeSet(prompt, prompt_mask, answer, answer_mask, cont, cont_mask, cont_answer,
                    np.array([len(r) for r in rs], np.int32))


def encode_demos(tok, questions: Sequence[str], traces: Sequence[str], pad_id: int = 0,
                 length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``bos + demo(q, r)`` for each pair, left-padded to ``length`` (default: longest):
    int ``[B, S_p]`` and bool mask. A fixed ``length`` keeps one compiled shape."""
    bos = [tok.bos_id] if tok.bos_id is not None else []
    seqs = [bos + tok.encode(tasks.format_example(q, r))
            for q, r in zip(questions, traces, strict=True)]
    if length is not None:
        seqs = [s[-length:] for s in seqs]  # keep the end of an over-long demo
    return models.pad_batch(seqs, pad_id=pad_id, side="left", length=length)


@functools.partial(jax.jit, static_argnums=0)
def probe_logp_without(graphdef: nnx.GraphDef, params, probes: ProbeSet) -> jax.Array:
    r"""``[E]`` :math:`\log\pi(e_r \mid e_q)` (summed over ``e_r`` tokens), one batch."""
    lp = models.logprobs(graphdef, params, probes.prompt, probes.prompt_mask, probes.answer,
                         probes.answer_mask)
    return jnp.sum(lp, axis=1)


@functools.partial(jax.jit, static_argnums=0)
def probe_logp_with_demos(graphdef: nnx.GraphDef, params, demos: jax.Array,
                          demo_mask: jax.Array, probes: ProbeSet) -> jax.Array:
    r"""``[B, E]`` :math:`\log\pi(e_r \mid \mathrm{demo}_n, e_q)`: one prefix per demo,
    shared by its ``E`` probe continuations (``lax.map`` over demos bounds memory)."""

    def one(args):
        demo, mask = args
        prefix = models.prefix_cache(graphdef, params, demo, mask)
        lp = models.logprobs_from_prefix(graphdef, params, prefix, probes.cont, probes.cont_mask)
        return jnp.sum(jnp.where(probes.cont_answer, lp, 0.0), axis=1)

    return jax.lax.map(one, (demos, demo_mask))


@functools.cache
def _row_fns(graphdef: nnx.GraphDef) -> tuple:
    """The per-row functions :func:`recrl.parallel.map_rows` runs on the mesh, one object
    per model (so each is compiled once, not at every call)."""
    bare = lambda p, *rows: probe_logp_without(graphdef, p, ProbeSet(*rows))
    demos = lambda c, d, m: probe_logp_with_demos(graphdef, c[0], d, m, c[1])
    return bare, demos


def bare_logp(graphdef: nnx.GraphDef, params, probes: ProbeSet, mesh=None) -> jax.Array:
    r""":func:`probe_logp_without`, the ``E`` probes split over ``mesh``'s devices when
    given (module docstring)."""
    if mesh is None:
        return probe_logp_without(graphdef, params, ProbeSet(*map(jnp.asarray, probes)))
    rows = tuple(np.asarray(x) for x in probes)
    return jnp.asarray(parallel.map_rows(_row_fns(graphdef)[0], params, rows, len(rows[0]),
                                         mesh))


def demo_logp(graphdef: nnx.GraphDef, params, demos: np.ndarray, demo_mask: np.ndarray,
              probes: ProbeSet, mesh=None) -> jax.Array:
    r""":func:`probe_logp_with_demos`, the ``B`` demos split over ``mesh``'s devices when
    given (every device scores its demos against all ``E`` probes)."""
    if mesh is None:
        return probe_logp_with_demos(graphdef, params, jnp.asarray(demos),
                                     jnp.asarray(demo_mask), ProbeSet(*map(jnp.asarray, probes)))
    return jnp.asarray(parallel.map_rows(_row_fns(graphdef)[1], (params, probes),
                                         (demos, demo_mask), len(demos), mesh))


class EvidenceResult(NamedTuple):
    """Evidence Gain of ``B`` traces over ``E`` probes.

    Attributes:
      eg: ``[B]`` summed-log-likelihood EG.
      eg_per_token: ``[B]`` EG with each ``Δ_e`` divided by ``|e_r|``.
      log_weight: ``[B]`` exact ``log mean_e exp Δ_e`` (>= ``eg``).
      delta: ``[B, E]`` per-probe ``Δ_e``.
      logp_with: ``[B, E]``.
      logp_without: ``[E]``.
    """

    eg: jax.Array
    eg_per_token: jax.Array
    log_weight: jax.Array
    delta: jax.Array
    logp_with: jax.Array
    logp_without: jax.Array


def evidence_gain_batch(graphdef: nnx.GraphDef, params, tok, questions: Sequence[str],
                        traces: Sequence[str], probes: ProbeSet | Sequence[tasks.Problem],
                        *, logp_without: jax.Array | None = None,
                        demo_length: int | None = None, mesh=None) -> EvidenceResult:
    r"""Explicit EG of each ``(questions[n], traces[n])`` over the probe set.

    Uses :func:`recrl.estimators.evidence_gain` on
    ``ℓ⁺ = probe_logp_with_demos`` and ``ℓ⁻ = probe_logp_without`` (pass ``logp_without`` to
    reuse it across batches with the same parameters).

    Args:
      graphdef: model graphdef.
      params: model state(s).
      tok: tokenizer (``recrl.models.char_tokenizer.CharTokenizer`` or
        ``recrl.models.Tokenizer``).
      questions: ``B`` question texts.
      traces: ``B`` trace texts (the demonstration solutions).
      probes: a ``ProbeSet`` or problems to encode.
      logp_without: optional precomputed ``[E]`` bare log-likelihoods.
      demo_length: pad (or left-truncate) demos to this many tokens (one compiled shape).
      mesh: optional data mesh: the probes and the demos are split over its devices
        (module docstring); None: one device.

    Returns:
      An :class:`EvidenceResult`.
    """
    if len(questions) != len(traces):
        raise ValueError(f"got {len(questions)} questions but {len(traces)} traces; give one "
                         "question per trace")
    if len(traces) == 0:
        raise ValueError("evidence_gain_batch needs at least one trace (got none); skip the "
                         "call when there is nothing to score")
    if not isinstance(probes, ProbeSet):
        probes = encode_probes(tok, probes)
    if logp_without is None:
        logp_without = bare_logp(graphdef, params, probes, mesh)
    demos, mask = encode_demos(tok, questions, traces, length=demo_length)
    with_demo = demo_logp(graphdef, params, demos, mask, probes, mesh)
    n_tok = jnp.asarray(probes.num_tokens)
    return EvidenceResult(
        eg=estimators.evidence_gain(with_demo, logp_without),
        eg_per_token=estimators.evidence_gain(with_demo, logp_without, num_tokens=n_tok),
        log_weight=estimators.evidence_log_weight(with_demo, logp_without),
        delta=with_demo - logp_without[None, :],
        logp_with=with_demo,
        logp_without=logp_without,
    )


def eg_weights(graphdef: nnx.GraphDef, params, tok, problems: Sequence[tasks.Problem],
               texts: Sequence[str], reward: np.ndarray, probes: ProbeSet,
               temperature: float = 1.0, demo_length: int | None = None, *,
               mode: str = "reward", signal: str = "log_weight", mesh=None) -> np.ndarray:
    r"""``[P, G]`` explicit EG weights of the ``P·G`` rollouts ``texts`` (row-major, one group
    per problem) from ``ℓ`` = ``signal`` of each rollout.

    ``mode="reward"``: ``w = G · softmax_G(ℓ/τ)`` over all rollouts of a question (mean 1; the
    learner multiplies rewards). ``mode="advantage"``: ``G_c · softmax_{correct}(ℓ/τ)`` on
    correct rollouts, 1 on the others (the learner multiplies advantages). ``demo_length``
    fixes the padded demo length (one compiled shape across steps); with ``mesh`` the
    scoring is split over its devices (module docstring)."""
    p, g = reward.shape
    qs = [problems[i // g].question for i in range(p * g)]
    res = evidence_gain_batch(graphdef, params, tok, qs, texts, probes, demo_length=demo_length,
                              mesh=mesh)
    ell = getattr(res, signal).reshape(p, g)
    if mode == "reward":
        return np.asarray(estimators.evidence_gain_weights(ell, temperature), np.float32)
    correct = jnp.asarray(reward > 0)
    w = estimators.evidence_gain_weights(ell, temperature, valid=correct)
    return np.asarray(jnp.where(correct, w, 1.0), np.float32)
