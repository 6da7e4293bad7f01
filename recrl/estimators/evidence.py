r"""Evidence Gain (In-Context RLVR): how much a trace, used as a demonstration, helps.

For a question ``q``, a trace ``r`` and probes ``e = (e_q, e_r)`` on other questions:

.. math::
    \Delta_e(q, r) = \log\pi(e_r \mid \mathrm{demo}(q, r), e_q) - \log\pi(e_r \mid e_q),
    \qquad \mathrm{EG}(q, r) = \operatorname{mean}_e \Delta_e(q, r)

The in-context objective reweights rewards by ``w(q, r) = E_e[exp Δ_e] >= exp(EG)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recrl.estimators._checks import (
    check_finite,
    check_min_rank,
    check_positive,
    check_rank,
    check_shape,
)


def _deltas(logp_with_demo, logp_without, num_tokens) -> jax.Array:
    check_rank(logp_with_demo, "logp_with_demo", 2)
    n_probes = jnp.shape(logp_with_demo)[1]
    check_shape(logp_without, "logp_without", (n_probes,), "one log-prob per probe")
    check_finite(logp_with_demo, "logp_with_demo")
    check_finite(logp_without, "logp_without")
    d = jnp.asarray(logp_with_demo, jnp.float32) - jnp.asarray(logp_without, jnp.float32)
    if num_tokens is not None:
        check_shape(num_tokens, "num_tokens", (n_probes,), "token count of each probe answer")
        d = d / jnp.maximum(jnp.asarray(num_tokens, jnp.float32), 1.0)
    return d


def _probe_weights(probe_mask, shape) -> jax.Array:
    if probe_mask is None:
        return jnp.ones(shape, jnp.float32)
    if jnp.shape(probe_mask) not in (shape, shape[1:]):
        raise ValueError(
            f"`probe_mask` must have shape {shape} or {shape[1:]}, got {jnp.shape(probe_mask)}"
        )
    return jnp.broadcast_to(jnp.asarray(probe_mask, jnp.float32), shape)


def evidence_gain(
    logp_with_demo: jax.typing.ArrayLike,
    logp_without: jax.typing.ArrayLike,
    probe_mask: jax.typing.ArrayLike | None = None,
    num_tokens: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Evidence Gain of ``N`` traces over ``E`` probes.

    .. math:: \mathrm{EG}_n = \frac{\sum_e m_{ne} (\ell^{+}_{ne} - \ell^{-}_e) / c_e}{\sum_e m_{ne}}

    with :math:`c_e = |e_r|` when ``num_tokens`` is given (per-token EG), else 1.

    Example:
      >>> import jax.numpy as jnp
      >>> evidence_gain(jnp.array([[-2.0, -4.0]]), jnp.array([-3.0, -3.0]))
      Array([0.], dtype=float32)

    Args:
      logp_with_demo: ``[N, E]`` summed log-likelihood of each probe answer with the trace
        as demonstration.
      logp_without: ``[E]`` the same without a demonstration.
      probe_mask: ``[N, E]`` or ``[E]`` which probes count (default all).
      num_tokens: ``[E]`` token count of each probe answer, for the per-token variant.

    Returns:
      ``[N]`` EG values (0 for a trace with no probe).
    """
    d = _deltas(logp_with_demo, logp_without, num_tokens)
    m = _probe_weights(probe_mask, d.shape)
    return jnp.sum(d * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def evidence_log_weight(
    logp_with_demo: jax.typing.ArrayLike,
    logp_without: jax.typing.ArrayLike,
    probe_mask: jax.typing.ArrayLike | None = None,
    num_tokens: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Log of the exact in-context weight :math:`\log w = \log \mathrm{mean}_e \exp \Delta_e`.

    By Jensen :math:`\log w \ge \mathrm{EG}`, with equality iff all :math:`\Delta_e` agree.

    Args:
      logp_with_demo: ``[N, E]`` as in :func:`evidence_gain`.
      logp_without: ``[E]``.
      probe_mask: ``[N, E]`` or ``[E]``.
      num_tokens: ``[E]`` optional per-token normalisation of each delta.

    Returns:
      ``[N]`` log-weights (``-inf``-free: a trace with no probe gets 0).
    """
    d = _deltas(logp_with_demo, logp_without, num_tokens)
    m = _probe_weights(probe_mask, d.shape)
    n = jnp.sum(m, axis=1)
    lse = jax.nn.logsumexp(jnp.where(m > 0, d, -jnp.inf), axis=1, b=jnp.where(m > 0, m, 1.0))
    return jnp.where(n > 0, lse - jnp.log(jnp.maximum(n, 1.0)), 0.0)


def evidence_gain_weights(
    eg: jax.typing.ArrayLike,
    temperature: float = 1.0,
    valid: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Per-group weights :math:`w_g \propto \exp(\mathrm{EG}_g / \tau)`, mean 1 over valid samples.

    .. math:: w_g = n_{\mathrm{valid}} \cdot \operatorname{softmax}_{g' \in \mathrm{valid}}
              (\mathrm{EG}_{g'} / \tau)_g

    Example:
      >>> import jax.numpy as jnp
      >>> evidence_gain_weights(jnp.array([[0.0, jnp.log(3.0)]]))
      Array([[0.5, 1.5]], dtype=float32)

    Args:
      eg: ``[..., G]`` Evidence Gain (or exact log-weights) per sample.
      temperature: ``tau`` > 0 (a number, a concrete array or a traced value). A value
        <= 0 raises ``ValueError`` when it is concrete; under a plain ``jit`` it cannot be
        seen and is checked only when the caller is wrapped in
        :func:`recrl.estimators.checked`.
      valid: ``[..., G]`` samples that take part (e.g. correct traces); others get 0.

    Returns:
      ``[..., G]`` weights; a group with no valid sample is all 0.
    """
    check_min_rank(eg, "eg", 1)
    check_finite(eg, "eg")
    check_positive(temperature, "temperature")  # traced: only under `checked()`
    x = jnp.asarray(eg, jnp.float32) / temperature
    v = jnp.ones_like(x) if valid is None else jnp.asarray(valid, jnp.float32)
    if v.shape != x.shape:
        raise ValueError(f"`valid` has shape {v.shape} but `eg` has shape {x.shape}")
    n = jnp.sum(v, axis=-1, keepdims=True)
    x = jnp.where(v > 0, x, 0.0)  # invalid entries may hold anything; keep exp finite
    mx = jax.lax.stop_gradient(jnp.max(jnp.where(v > 0, x, -jnp.inf), axis=-1, keepdims=True))
    e = jnp.where(v > 0, jnp.exp(x - jnp.where(n > 0, mx, 0.0)), 0.0)
    return n * e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)
