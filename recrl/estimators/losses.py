r"""Policy-gradient losses, clipped surrogates (PPO/DAPO) and KL penalties.

Per-token arrays are ``[..., T]`` (any leading batch dims, e.g. ``[P, G, T]`` or ``[B, T]``)
with a float/bool ``mask`` of the same shape. Aggregations (``axis_name`` makes them global
over a mapped device axis):

- ``token_mean``: :math:`\sum_{b,t} m\,\ell / \sum_{b,t} m`
- ``seq_mean_token_mean``: mean over sequences with any token of :math:`\sum_t m\ell/\sum_t m`
- ``seq_sum``: mean over all sequences of :math:`\sum_t m\,\ell` (ProRL's
  :math:`\frac{1}{PG}\sum_{p,g,t}`; Dr.GRPO-style unnormalised length)
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from recrl.estimators._checks import assert_equal_shape, assert_shape, check_finite

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_sum"]
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_sum")
# Bound on |log pi - log pi_old| before exp; beyond it the ratio is meaningless anyway.
_LOG_RATIO_CLIP = 20.0


def aggregate_loss(
    per_token: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    aggregation: Aggregation = "token_mean",
    axis_name: str | None = None,
) -> jax.Array:
    """Reduces a per-token loss to a scalar (see the module docstring for the formulas).

    Args:
      per_token: ``[..., T]`` loss per token.
      mask: ``[..., T]`` which tokens count.
      aggregation: one of ``token_mean``, ``seq_mean_token_mean``, ``seq_sum``.
      axis_name: mapped axis to reduce over as well (``psum`` of numerator and denominator).

    Returns:
      A scalar.
    """
    _check_aggregation(aggregation)
    assert_shape(per_token, "per_token", (..., None), "[..., T]")
    assert_equal_shape(per_token=per_token, mask=mask)
    return _aggregate(per_token, mask, aggregation, axis_name)


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")


def _aggregate(per_token: jax.typing.ArrayLike, mask: jax.typing.ArrayLike,
               aggregation: Aggregation, axis_name: str | None) -> jax.Array:
    """:func:`aggregate_loss` without the argument checks (for callers that did them)."""
    x = jnp.asarray(per_token)
    m = jnp.asarray(mask, x.dtype)

    def ratio(num: jax.Array, den: jax.Array) -> jax.Array:
        if axis_name is not None:
            num, den = jax.lax.psum((num, den), axis_name)
        return num / jnp.maximum(den, 1.0)

    if aggregation == "token_mean":
        return ratio(jnp.sum(x * m), jnp.sum(m))
    seq_tokens = jnp.sum(m, axis=-1)
    seq_sum = jnp.sum(x * m, axis=-1)
    if aggregation == "seq_sum":
        return ratio(jnp.sum(seq_sum), jnp.asarray(seq_sum.size, x.dtype))
    has = (seq_tokens > 0).astype(x.dtype)
    return ratio(jnp.sum(seq_sum / jnp.maximum(seq_tokens, 1.0)), jnp.sum(has))


def _check_token_args(logp, advantages, mask, aggregation, others=()) -> None:
    """The checks of a public loss's arguments, done once at its entry."""
    _check_aggregation(aggregation)
    assert_shape(logp, "logp", (..., None), "[..., T]")
    assert_equal_shape(logp=logp, advantages=advantages, mask=mask, **dict(others))
    check_finite(advantages, "advantages")


def policy_gradient_loss(
    logp: jax.typing.ArrayLike,
    advantages: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    aggregation: Aggregation = "token_mean",
    axis_name: str | None = None,
) -> jax.Array:
    r"""Score-function loss :math:`-\mathrm{agg}(\log\pi_t \cdot \mathrm{sg}(A_t))`.

    Its gradient is the policy-gradient estimate; advantages are not differentiated.

    Args:
      logp: ``[..., T]`` log-probs of the taken actions (differentiable).
      advantages: ``[..., T]`` advantages.
      mask: ``[..., T]`` action mask.
      aggregation: see :func:`aggregate_loss`.
      axis_name: mapped axis for a global reduction.

    Returns:
      A scalar loss.
    """
    _check_token_args(logp, advantages, mask, aggregation)
    per_token = -jnp.asarray(logp) * jax.lax.stop_gradient(jnp.asarray(advantages))
    return _aggregate(per_token, mask, aggregation, axis_name)


def clipped_surrogate_loss(
    logp: jax.typing.ArrayLike,
    old_logp: jax.typing.ArrayLike,
    advantages: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    aggregation: Aggregation = "token_mean",
    axis_name: str | None = None,
) -> jax.Array:
    r"""PPO clipped surrogate with asymmetric (DAPO clip-higher) range and optional dual clip.

    .. math::
        \rho_t = \exp(\mathrm{clip}(\log\pi_t - \log\pi^{old}_t, -20, 20)),\quad
        \ell_t = \max(-A_t\rho_t,\ -A_t\,\mathrm{clip}(\rho_t, 1-\epsilon_{lo}, 1+\epsilon_{hi}))

    and, with dual clip ``c``, :math:`\ell_t \leftarrow \min(\ell_t, -c A_t)` where
    :math:`A_t < 0`.

    Args:
      logp: ``[..., T]`` current log-probs (differentiable).
      old_logp: ``[..., T]`` behaviour log-probs (not differentiated).
      advantages: ``[..., T]`` advantages.
      mask: ``[..., T]`` action mask.
      eps_low: lower clip range.
      eps_high: upper clip range.
      dual_clip: ``c > 1`` or None.
      aggregation: see :func:`aggregate_loss`.
      axis_name: mapped axis for a global reduction.

    Returns:
      A scalar loss.
    """
    _check_token_args(logp, advantages, mask, aggregation, others=(("old_logp", old_logp),))
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"`dual_clip` must be > 1, got {dual_clip}")
    adv = jax.lax.stop_gradient(jnp.asarray(advantages))
    log_ratio = jnp.asarray(logp) - jax.lax.stop_gradient(jnp.asarray(old_logp))
    ratio = jnp.exp(jnp.clip(log_ratio, -_LOG_RATIO_CLIP, _LOG_RATIO_CLIP))
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_token = jnp.maximum(unclipped, clipped)
    if dual_clip is not None:
        per_token = jnp.where(adv < 0, jnp.minimum(per_token, -dual_clip * adv), per_token)
    return _aggregate(per_token, mask, aggregation, axis_name)


def kl_penalty(
    logp: jax.typing.ArrayLike,
    ref_logp: jax.typing.ArrayLike,
    kind: Literal["k1", "k2", "k3"] = "k3",
) -> jax.Array:
    r"""Per-token sample estimates of :math:`KL(\pi \,\|\, \pi_{ref})` from the taken action.

    With :math:`\delta = \log\pi_{ref} - \log\pi`: ``k1`` :math:`= -\delta`,
    ``k2`` :math:`= \delta^2/2`, ``k3`` :math:`= e^{\delta} - \delta - 1` (unbiased, >= 0).
    Note: differentiating ``k1`` on-policy has zero expected gradient; for a regulariser use
    ``k3``/``k2`` or :func:`full_kl`.

    Args:
      logp: ``[...]`` policy log-probs of the sampled actions.
      ref_logp: ``[...]`` reference log-probs of the same actions.
      kind: ``k1``, ``k2`` or ``k3``.

    Returns:
      ``[...]`` per-token penalty.
    """
    assert_equal_shape(logp=logp, ref_logp=ref_logp)
    delta = jnp.asarray(ref_logp) - jnp.asarray(logp)
    if kind == "k1":
        return -delta
    if kind == "k2":
        return 0.5 * delta**2
    if kind == "k3":
        delta = jnp.clip(delta, -_LOG_RATIO_CLIP, _LOG_RATIO_CLIP)
        return jnp.expm1(delta) - delta
    raise ValueError(f"unknown KL estimator {kind!r}; known: k1, k2, k3")


def full_kl(
    logits: jax.typing.ArrayLike,
    ref_logits: jax.typing.ArrayLike,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Exact per-position :math:`KL(\pi\|\pi_{ref}) = \sum_a \pi(a)\log(\pi(a)/\pi_{ref}(a))`.

    Args:
      logits: ``[..., A]`` policy logits (``-inf`` allowed for impossible actions).
      ref_logits: ``[..., A]`` reference logits.
      where: ``[..., A]`` optional mask of allowed actions, applied to both distributions.

    Returns:
      ``[...]`` KL per position (differentiable in ``logits``).
    """
    assert_shape(logits, "logits", (..., None), "[..., V]")
    assert_equal_shape(logits=logits, ref_logits=ref_logits, where=where)
    lp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1, where=where)
    lq = jax.nn.log_softmax(jnp.asarray(ref_logits, jnp.float32), axis=-1, where=where)
    p = jnp.exp(lp)
    if where is not None:
        p = jnp.where(where, p, 0.0)
    ok = p > 0
    terms = jnp.where(ok, p * (jnp.where(ok, lp, 0.0) - jnp.where(ok, lq, 0.0)), 0.0)
    return jnp.sum(terms, axis=-1)
