r"""Evidence Gain (In-Context RLVR): how much a trace, used as a demonstration, helps.

For a question ``q``, a trace ``r`` and probes ``e = (e_q, e_r)`` on other questions:

.. math::
    \Delta_e(q, r) = \log\pi(e_r \mid \mathrm{demo}(q, r), e_q) - \log\pi(e_r \mid e_q),
    \qquad \mathrm{EG}(q, r) = \operatorname{mean}_e \Delta_e(q, r)

The in-context objective reweights rewards by ``w(q, r) = E_e[exp Δ_e] >= exp(EG)``:
:math:`J_{IC} = E_q E_{r \sim \pi(\cdot|q)}[R(q, r)\, w(q, r)]` with
:math:`E_{r \sim \pi(\cdot|q)}[w] = 1`. :func:`evidence_weighted_advantages` is the explicit
estimator of that objective (weights on rewards); :func:`evidence_gain_weights` alone is the
older form that multiplies advantages.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from recrl.estimators._checks import assert_equal_shape, assert_shape, check_finite, check_positive
from recrl.estimators.advantages import _f32, _grpo, _rloo


def _deltas(logp_with_demo, logp_without, num_tokens) -> jax.Array:
    """The checks of the EG functions' arguments (done once at their entry) and the deltas."""
    assert_shape(logp_with_demo, "logp_with_demo", (None, None), "[B, E]")
    n_probes = jnp.shape(logp_with_demo)[1]
    assert_shape(logp_without, "logp_without", (n_probes,),
                 f"[E] = ({n_probes},) (one log-prob per probe)")
    check_finite(logp_with_demo, "logp_with_demo")
    check_finite(logp_without, "logp_without")
    d = jnp.asarray(logp_with_demo, jnp.float32) - jnp.asarray(logp_without, jnp.float32)
    if num_tokens is not None:
        assert_shape(num_tokens, "num_tokens", (n_probes,),
                     f"[E] = ({n_probes},) (token count of each probe answer)")
        d = d / jnp.maximum(jnp.asarray(num_tokens, jnp.float32), 1.0)
    return d


def _probe_weights(probe_mask, shape) -> jax.Array:
    if probe_mask is None:
        return jnp.ones(shape, jnp.float32)
    expected = shape if np.ndim(probe_mask) == 2 else shape[1:]
    assert_shape(probe_mask, "probe_mask", expected, f"[B, E] = {shape} or [E] = {shape[1:]}")
    return jnp.broadcast_to(jnp.asarray(probe_mask, jnp.float32), shape)


def evidence_gain(
    logp_with_demo: jax.typing.ArrayLike,
    logp_without: jax.typing.ArrayLike,
    probe_mask: jax.typing.ArrayLike | None = None,
    num_tokens: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Evidence Gain of ``B`` traces over ``E`` probes.

    .. math:: \mathrm{EG}_n = \frac{\sum_e m_{ne} (\ell^{+}_{ne} - \ell^{-}_e) / c_e}{\sum_e m_{ne}}

    with :math:`c_e = |e_r|` when ``num_tokens`` is given (per-token EG), else 1.

    Example:
      >>> import jax.numpy as jnp
      >>> evidence_gain(jnp.array([[-2.0, -4.0]]), jnp.array([-3.0, -3.0]))
      Array([0.], dtype=float32)

    Args:
      logp_with_demo: ``[B, E]`` summed log-likelihood of each probe answer with the trace
        as demonstration.
      logp_without: ``[E]`` the same without a demonstration.
      probe_mask: ``[B, E]`` or ``[E]`` which probes count (default all).
      num_tokens: ``[E]`` token count of each probe answer, for the per-token variant.

    Returns:
      ``[B]`` EG values (0 for a trace with no probe).
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
      logp_with_demo: ``[B, E]`` as in :func:`evidence_gain`.
      logp_without: ``[E]``.
      probe_mask: ``[B, E]`` or ``[E]``.
      num_tokens: ``[E]`` optional per-token normalisation of each delta.

    Returns:
      ``[B]`` log-weights (``-inf``-free: a trace with no probe gets 0).
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
      >>> from recrl.estimators import evidence_gain_weights
      >>> w = evidence_gain_weights(jnp.array([[0.0, jnp.log(3.0)]]))  # weights 1 : 3
      >>> w.round(4)  # float32: 1.5 comes out as 1.5000001
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
    assert_shape(eg, "eg", (..., None), "[..., G]")
    assert_equal_shape(eg=eg, valid=valid)
    check_finite(eg, "eg")
    check_positive(temperature, "temperature")  # traced: only under `checked()`
    x = jnp.asarray(eg, jnp.float32)
    return _eg_weights(x, temperature, jnp.ones_like(x) if valid is None else _f32(valid))


def _eg_weights(eg: jax.Array, temperature: float | jax.Array, v: jax.Array) -> jax.Array:
    """:func:`evidence_gain_weights` on checked float arrays (``v`` the valid mask)."""
    x = eg / temperature
    n = jnp.sum(v, axis=-1, keepdims=True)
    x = jnp.where(v > 0, x, 0.0)  # invalid entries may hold anything; keep exp finite
    mx = jax.lax.stop_gradient(jnp.max(jnp.where(v > 0, x, -jnp.inf), axis=-1, keepdims=True))
    e = jnp.where(v > 0, jnp.exp(x - jnp.where(n > 0, mx, 0.0)), 0.0)
    return n * e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)


def _check_advantage_args(reward, log_weight, valid, temperature, baseline, scale) -> None:
    """``evidence_weighted_advantages``' argument checks: shapes, finite values, options."""
    assert_shape(log_weight, "log_weight", (..., None), "[..., G]")
    assert_equal_shape(reward=reward, log_weight=log_weight, valid=valid)
    check_finite(log_weight, "log_weight")
    check_finite(reward, "reward")
    if baseline not in ("mean", "loo"):
        raise ValueError(f"`baseline` must be 'mean' or 'loo', got {baseline!r}")
    if baseline == "loo" and scale != "none":
        raise ValueError("`baseline='loo'` is defined without std scaling: pass scale='none'")
    if isinstance(temperature, int | float) and temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")


def evidence_weighted_advantages(
    reward: jax.typing.ArrayLike,
    log_weight: jax.typing.ArrayLike,
    *,
    temperature: float = 1.0,
    normalize: bool = True,
    baseline: Literal["mean", "loo"] = "mean",
    scale: Literal["std", "none"] = "std",
    valid: jax.typing.ArrayLike | None = None,
    eps: float = 1e-6,
) -> jax.Array:
    r"""Group advantages of the exp(EG)-reweighted objective :math:`E_r[R\,w]` (weights on rewards).

    .. math::
        w_g = \frac{\exp(\ell_g/\tau)}{\operatorname{mean}_{g'} \exp(\ell_{g'}/\tau)},\qquad
        \tilde R_g = w_g R_g,\qquad
        A_g = \frac{\tilde R_g - \operatorname{mean}_{g'} \tilde R_{g'}}
                   {\operatorname{std}_{g'} \tilde R_{g'} + \epsilon}

    over all (valid) rollouts of a question, correct or not: the implicit in-context weight
    averages to 1 under :math:`\pi(\cdot|q)`, so the normalisation estimates that constraint.
    With binary rewards the correct rollouts get :math:`(w_g - p)/\sigma` style advantages
    (:math:`p` = the group's weighted success rate) and the incorrect ones :math:`-p/\sigma`.
    ``ℓ`` is the exact log-weight :math:`\log \operatorname{mean}_e \exp\Delta_e`
    (:func:`evidence_log_weight`, the theory's quantity) or the summed / per-token EG (its
    Jensen lower bound).

    ``normalize=False, baseline="loo", scale="none"`` is unbiased for
    :math:`\nabla_\theta E_{r\sim\pi_\theta}[R\, e^{\ell/\tau}]` (weights held fixed):
    :math:`E[\frac1G \sum_g A_g \nabla \log\pi(r_g)]` equals it exactly (tested by
    enumeration); ``baseline="mean"`` scales it by :math:`(G-1)/G`.

    Example:
      >>> import jax.numpy as jnp
      >>> evidence_weighted_advantages(jnp.array([[1.0, 0.0]]), jnp.zeros((1, 2)), scale="none")
      Array([[ 0.5, -0.5]], dtype=float32)

    Args:
      reward: ``[..., G]`` rewards (binary in RLVR).
      log_weight: ``[..., G]`` ``ℓ``: exact log-weight, EG or per-token EG per rollout.
      temperature: ``τ > 0``.
      normalize: divide the weights by their group mean (over valid rollouts).
      baseline: ``"mean"`` (GRPO) or ``"loo"`` (leave-one-out; needs ``scale="none"``).
      scale: ``"std"`` (GRPO/DAPO) or ``"none"`` (Dr.GRPO).
      valid: ``[..., G]`` rollouts that take part (default all).
      eps: added to the std.

    Returns:
      ``[..., G]`` advantages (0 for invalid rollouts and groups with < 2 valid ones).
    """
    _check_advantage_args(reward, log_weight, valid, temperature, baseline, scale)
    r = jnp.asarray(reward, jnp.float32)
    v = jnp.ones_like(r) if valid is None else jnp.asarray(valid, jnp.float32)
    if normalize:
        w = _eg_weights(jnp.asarray(log_weight, jnp.float32), temperature, v)
    else:
        w = jnp.exp(jnp.asarray(log_weight, jnp.float32) / temperature) * v
    weighted = r * w
    if baseline == "loo":
        return _rloo(weighted, v)
    return _grpo(weighted, v, scale, eps)
