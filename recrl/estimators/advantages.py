r"""Advantage estimators over groups of sampled paths.

Shapes: ``[..., G, T]`` step-level (samples per prompt × action positions) and ``[..., G]``
path-level; leading dims (usually prompts ``P``) are batch dims. A path of length ``L``
has items at ``t < L`` and EOS at ``t = L`` (when ``L < T``); ``item_mask`` and
``eos_mask`` come from :func:`recrl.estimators.path_masks`.

Every step-level estimator returns ``[..., G, T]`` advantages that are 0 off the actions
and 0 for paths with no item (invalid paths get no gradient). The estimator of the policy
gradient is then :math:`\hat g = \frac{1}{PG}\sum_{p,g,t} \nabla \log\pi(a_t)\, A_t`, e.g.
:func:`recrl.estimators.policy_gradient_loss` with ``aggregation="seq_sum"``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from recrl.estimators._checks import assert_equal_shape, assert_shape, check_finite
from recrl.estimators.registry import register_advantage_estimator
from recrl.estimators.returns import _reward_to_go


def _f32(x: jax.typing.ArrayLike) -> jax.Array:
    return jnp.asarray(x, jnp.result_type(x, jnp.float32))


def _check_steps(step_rewards, item_mask, eos_mask) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The checks of a public step-level estimator's arguments, done once at its entry."""
    assert_shape(step_rewards, "step_rewards", (..., None, None), "[..., G, T]")
    assert_equal_shape(step_rewards=step_rewards, item_mask=item_mask, eos_mask=eos_mask)
    check_finite(step_rewards, "step_rewards")
    return _f32(step_rewards), _f32(item_mask), _f32(eos_mask)


def _check_paths(path_rewards, valid) -> tuple[jax.Array, jax.Array]:
    """The checks of a public path-level estimator's arguments, done once at its entry."""
    assert_shape(path_rewards, "path_rewards", (..., None), "[..., G]")
    r = _f32(path_rewards)
    check_finite(path_rewards, "path_rewards")
    v = jnp.ones_like(r) if valid is None else _f32(valid)
    assert_equal_shape(path_rewards=r, valid=v)
    return r, v


def position_baseline(
    returns: jax.typing.ArrayLike,
    active: jax.typing.ArrayLike,
    *,
    leave_one_out: bool = False,
) -> jax.Array:
    r"""Position-specific baseline: the group mean of the returns of samples acting at ``t``.

    .. math:: b_{p,t} = \frac{\sum_g a_{p,g,t} G_{p,g,t}}{\sum_g a_{p,g,t}}
              \quad (0 \text{ where no sample acts at } t)

    With ``leave_one_out=True`` each sample gets the mean over the *other* active samples
    (``[..., G, T]`` output); this makes PSAE exactly unbiased, while the plain group mean
    (the paper's choice) scales each sample's own term by about ``1 - 1/n_t``.

    Args:
      returns: ``[..., G, T]`` returns ``G_t``.
      active: ``[..., G, T]`` 1 where the sample has an action (item or EOS) at ``t``.
      leave_one_out: exclude the sample itself from its baseline.

    Returns:
      ``[..., T]`` baseline, or ``[..., G, T]`` with ``leave_one_out``.
    """
    assert_shape(returns, "returns", (..., None, None), "[..., G, T]")
    assert_equal_shape(returns=returns, active=active)
    return _position_baseline(_f32(returns), _f32(active), leave_one_out)


def _position_baseline(g: jax.Array, a: jax.Array, leave_one_out: bool) -> jax.Array:
    """:func:`position_baseline` on checked float arrays."""
    s = jnp.sum(g * a, axis=-2)
    n = jnp.sum(a, axis=-2)
    if not leave_one_out:
        return jnp.where(n > 0, s / jnp.maximum(n, 1.0), 0.0)
    s_o = s[..., None, :] - g * a
    n_o = n[..., None, :] - a
    return jnp.where(n_o > 0, s_o / jnp.maximum(n_o, 1.0), 0.0)


@register_advantage_estimator("psae")
def psae_advantages(
    step_rewards: jax.typing.ArrayLike,
    item_mask: jax.typing.ArrayLike,
    eos_mask: jax.typing.ArrayLike,
    discount: float = 1.0,
    *,
    leave_one_out: bool = False,
) -> jax.Array:
    r"""Position-Specific Advantage Estimation (ProRL).

    .. math:: A_{p,g,t} = G_{p,g,t} - b_{p,t}, \qquad
              G_t = \sum_{l \ge t} \gamma^{l-t} r_l\,\mathrm{item}_l

    at every action (items, and EOS where ``G = 0``), 0 elsewhere; ``b`` is
    :func:`position_baseline` over the valid samples (at least one item) acting at ``t``.
    Feed it centred rewards (:func:`center_rewards`) for the full ProRL estimator.

    Example:
      >>> import jax.numpy as jnp
      >>> from recrl.estimators import path_masks, psae_advantages
      >>> r = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
      >>> item, eos = path_masks(jnp.array([2, 1]), 3)
      >>> psae_advantages(r, item, eos)
      Array([[ 0.5,  0.5,  0. ],
             [-0.5, -0.5,  0. ]], dtype=float32)

    Args:
      step_rewards: ``[..., G, T]`` (centred) step rewards.
      item_mask: ``[..., G, T]`` 1 where the path emits an item.
      eos_mask: ``[..., G, T]`` 1 where the path emits EOS.
      discount: ``gamma``.
      leave_one_out: use the leave-one-out baseline (unbiased; see :func:`position_baseline`).

    Returns:
      ``[..., G, T]`` advantages.
    """
    r, item, eos = _check_steps(step_rewards, item_mask, eos_mask)
    return _psae(r, item, eos, discount, leave_one_out)


def _psae(r: jax.Array, item: jax.Array, eos: jax.Array, discount: float = 1.0,
          leave_one_out: bool = False) -> jax.Array:
    """:func:`psae_advantages` on checked float arrays."""
    valid = (jnp.sum(item, axis=-1, keepdims=True) > 0).astype(r.dtype)
    act = (item + eos) * valid
    g = _reward_to_go(r, item, discount) * item
    b = _position_baseline(g, act, leave_one_out)
    if not leave_one_out:
        b = b[..., None, :]
    return (g - b) * act


@register_advantage_estimator("reinforce")
def reinforce_advantages(
    step_rewards: jax.typing.ArrayLike,
    item_mask: jax.typing.ArrayLike,
    eos_mask: jax.typing.ArrayLike,
) -> jax.Array:
    r"""REINFORCE: the whole path return at every action, :math:`A_t = \sum_l r_l\,\mathrm{item}_l`.

    Args:
      step_rewards: ``[..., G, T]`` step rewards.
      item_mask: ``[..., G, T]`` item positions.
      eos_mask: ``[..., G, T]`` EOS positions.

    Returns:
      ``[..., G, T]`` advantages (0 off the actions and for paths with no item).
    """
    r, item, eos = _check_steps(step_rewards, item_mask, eos_mask)
    ret = jnp.sum(r * item, axis=-1, keepdims=True)
    valid = (jnp.sum(item, axis=-1, keepdims=True) > 0).astype(r.dtype)
    return ret * (item + eos) * valid


@register_advantage_estimator("rtg")
def rtg_advantages(
    step_rewards: jax.typing.ArrayLike,
    item_mask: jax.typing.ArrayLike,
    eos_mask: jax.typing.ArrayLike,
    discount: float = 1.0,
) -> jax.Array:
    r"""Reward-to-go: :math:`A_t = G_t` at items; EOS has :math:`G = 0`.

    Args:
      step_rewards: ``[..., G, T]`` step rewards.
      item_mask: ``[..., G, T]`` item positions.
      eos_mask: ``[..., G, T]`` EOS positions (their advantage is 0).
      discount: ``gamma``.

    Returns:
      ``[..., G, T]`` advantages.
    """
    r, item, _ = _check_steps(step_rewards, item_mask, eos_mask)
    return _reward_to_go(r, item, discount) * item


def grpo_advantages(
    path_rewards: jax.typing.ArrayLike,
    *,
    scale: Literal["std", "none"] = "std",
    eps: float = 1e-6,
    valid: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Group-relative advantages (GRPO; Dr.GRPO with ``scale="none"``).

    .. math:: A_g = \frac{R_g - \bar R}{\operatorname{std}(R) + \epsilon}

    over the valid samples of each group (population std). Groups with fewer than two valid
    samples, and zero-variance groups, get 0; invalid samples get 0.

    Example:
      >>> import jax.numpy as jnp
      >>> grpo_advantages(jnp.array([[1.0, 0.0, 0.0, 1.0]]), scale="none")
      Array([[ 0.5, -0.5, -0.5,  0.5]], dtype=float32)

    Args:
      path_rewards: ``[..., G]`` one reward per sample.
      scale: ``"std"`` divides by the group std, ``"none"`` does not (Dr.GRPO).
      eps: added to the std.
      valid: ``[..., G]`` optional mask of samples that take part.

    Returns:
      ``[..., G]`` advantages.
    """
    if scale not in ("std", "none"):
        raise ValueError(f"`scale` must be 'std' or 'none', got {scale!r}")
    r, v = _check_paths(path_rewards, valid)
    return _grpo(r, v, scale, eps)


def _grpo(r: jax.Array, v: jax.Array, scale: Literal["std", "none"] = "std",
          eps: float = 1e-6) -> jax.Array:
    """:func:`grpo_advantages` on checked float arrays (``v`` the valid mask)."""
    n = jnp.sum(v, axis=-1, keepdims=True)
    # Rewards of huge magnitude (e.g. ±1e20) overflow float32 in the squares below: work on
    # r / 2^k with 2^k <= max|r| per group. Scaling by a power of two is exact, so results
    # are unchanged wherever nothing overflowed (and max|r| <= 1 is not rescaled at all).
    big = jnp.max(jnp.abs(r) * v, axis=-1, keepdims=True)
    s = jnp.where(big > 1.0, jnp.exp2(jnp.floor(jnp.log2(jnp.maximum(big, 1.0)))), 1.0)
    rs = r / s
    mean = jnp.sum(rs * v, axis=-1, keepdims=True) / jnp.maximum(n, 1.0)
    centred = (rs - mean) * v
    if scale == "std":
        var = jnp.sum(centred**2, axis=-1, keepdims=True) / jnp.maximum(n, 1.0)
        centred = centred / (jnp.sqrt(var) + eps / s)
    else:
        centred = centred * s
    return jnp.where(n >= 2, centred, 0.0)


def rloo_advantages(
    path_rewards: jax.typing.ArrayLike, valid: jax.typing.ArrayLike | None = None
) -> jax.Array:
    r"""REINFORCE leave-one-out: :math:`A_g = R_g - \frac{1}{n-1}\sum_{g' \ne g} R_{g'}`.

    Args:
      path_rewards: ``[..., G]`` one reward per sample.
      valid: ``[..., G]`` optional mask; sums run over valid samples only.

    Returns:
      ``[..., G]`` advantages (0 in groups with fewer than two valid samples).
    """
    r, v = _check_paths(path_rewards, valid)
    return _rloo(r, v)


def _rloo(r: jax.Array, v: jax.Array) -> jax.Array:
    """:func:`rloo_advantages` on checked float arrays (``v`` the valid mask)."""
    n = jnp.sum(v, axis=-1, keepdims=True)
    s = jnp.sum(r * v, axis=-1, keepdims=True)
    others = (s - r * v) / jnp.maximum(n - 1.0, 1.0)
    return jnp.where(n >= 2, (r - others) * v, 0.0)


def _path_level(path_fn, step_rewards, item_mask, eos_mask) -> jax.Array:
    """A group estimator ``path_fn(path_returns [..., G], valid [..., G])`` on checked
    arrays, applied to the path returns and broadcast to every action of the path (0 for
    paths with no item)."""
    r, item, eos = _check_steps(step_rewards, item_mask, eos_mask)
    valid = (jnp.sum(item, axis=-1) > 0).astype(r.dtype)
    adv = path_fn(jnp.sum(r * item, axis=-1), valid)
    return adv[..., None] * (item + eos) * valid[..., None]


@register_advantage_estimator("psae_loo")
def psae_loo_advantages(step_rewards, item_mask, eos_mask) -> jax.Array:
    """:func:`psae_advantages` with the leave-one-out baseline (exactly unbiased)."""
    return _psae(*_check_steps(step_rewards, item_mask, eos_mask), leave_one_out=True)


@register_advantage_estimator("grpo")
def grpo_step_advantages(step_rewards, item_mask, eos_mask) -> jax.Array:
    """:func:`grpo_advantages` of the path returns at every action of the path."""
    return _path_level(_grpo, step_rewards, item_mask, eos_mask)


@register_advantage_estimator("drgrpo")
def drgrpo_step_advantages(step_rewards, item_mask, eos_mask) -> jax.Array:
    """Dr.GRPO (:func:`grpo_advantages` without the std) at every action of the path."""
    return _path_level(lambda r, v: _grpo(r, v, scale="none"), step_rewards, item_mask,
                       eos_mask)


@register_advantage_estimator("rloo")
def rloo_step_advantages(step_rewards, item_mask, eos_mask) -> jax.Array:
    """:func:`rloo_advantages` of the path returns at every action of the path."""
    return _path_level(_rloo, step_rewards, item_mask, eos_mask)
