"""Returns and reward statistics: reward-to-go, path masks, Stepwise Reward Centering.

Conventions: the last axis is the action position ``t``; a path of length ``L <= T`` emits
an item at every ``t < L`` and EOS at ``t = L`` when ``L < T``.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from recrl.estimators._checks import assert_equal_shape, assert_shape, check_finite

# Horizons up to this length use a triangular matmul for reward-to-go; longer ones (token
# level) a reverse cumulative sum or scan, which are O(T) instead of O(T^2).
_MATMUL_MAX_T = 64
# Up to this many reward components, centring is unrolled per component (faster on CPU than
# a reduction over a short minor axis).
_UNROLL_MAX_K = 8


def reward_to_go(
    rewards: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    discount: float | jax.typing.ArrayLike = 1.0,
) -> jax.Array:
    r"""Discounted reward-to-go along the last axis.

    .. math:: G_t = \sum_{l \ge t} \gamma^{l - t} r_l m_l

    Example:
      >>> import jax.numpy as jnp
      >>> reward_to_go(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 1.0, 0.0]))
      Array([3., 2., 0.], dtype=float32)

    Args:
      rewards: ``[..., T]`` step rewards ``r_t``.
      mask: ``[..., T]`` float or bool; steps with mask 0 contribute nothing.
      discount: ``gamma``, a scalar.

    Returns:
      ``[..., T]`` reward-to-go ``G_t`` (also defined where the mask is 0).
    """
    assert_shape(rewards, "rewards", (..., None), "[..., T]")
    assert_equal_shape(rewards=rewards, mask=mask)
    check_finite(rewards, "rewards")
    return _reward_to_go(rewards, mask, discount)


def _reward_to_go(rewards: jax.typing.ArrayLike, mask: jax.typing.ArrayLike,
                  discount: float | jax.typing.ArrayLike = 1.0) -> jax.Array:
    """:func:`reward_to_go` without the argument checks (for callers that did them)."""
    r = jnp.asarray(rewards) * jnp.asarray(mask, dtype=jnp.result_type(rewards, jnp.float32))
    T = r.shape[-1]
    if T <= _MATMUL_MAX_T:
        # G = r @ D^T with D[t, l] = gamma^(l - t) for l >= t: one small matmul, which XLA
        # runs faster than a cumulative sum or a scan for the short horizons of path policies.
        lag = jnp.arange(T)[None, :] - jnp.arange(T)[:, None]
        d = jnp.where(lag >= 0, jnp.asarray(discount, r.dtype) ** jnp.maximum(lag, 0), 0.0)
        return jnp.einsum("...l,tl->...t", r, d, precision=jax.lax.Precision.HIGHEST)
    if isinstance(discount, int | float) and discount == 1.0:
        return jnp.flip(jnp.cumsum(jnp.flip(r, -1), axis=-1), -1)

    def step(carry: jax.Array, r_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        g = r_t + discount * carry
        return g, g

    r_tm = jnp.moveaxis(r, -1, 0)
    _, g = jax.lax.scan(step, jnp.zeros_like(r_tm[0]), r_tm, reverse=True)
    return jnp.moveaxis(g, 0, -1)


def path_masks(
    lengths: jax.typing.ArrayLike, max_len: int, dtype: jnp.dtype = jnp.float32
) -> tuple[jax.Array, jax.Array]:
    r"""Item and EOS masks of paths with the given lengths.

    .. math:: \mathrm{item}_t = 1[t < L], \qquad \mathrm{eos}_t = 1[t = L]\ (t < T)

    Example:
      >>> import jax.numpy as jnp
      >>> item, eos = path_masks(jnp.array([2, 3]), 3)
      >>> item
      Array([[1., 1., 0.],
             [1., 1., 1.]], dtype=float32)
      >>> eos
      Array([[0., 0., 1.],
             [0., 0., 0.]], dtype=float32)

    Args:
      lengths: ``[...]`` integer path lengths in ``[0, max_len]``.
      max_len: ``T``, the number of action positions.
      dtype: dtype of the masks.

    Returns:
      ``(item_mask, eos_mask)``, each ``[..., max_len]``.
    """
    lengths = jnp.asarray(lengths)
    chex.assert_type(lengths, int, custom_message="`lengths` must be integers",
                    exception_type=ValueError)
    t = jnp.arange(max_len)
    item = t < lengths[..., None]
    eos = t == lengths[..., None]
    return item.astype(dtype), eos.astype(dtype)


def center_rewards(
    rewards: jax.typing.ArrayLike,
    mean: jax.typing.ArrayLike,
    std: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike | None = None,
    min_std: float = 0.1,
) -> jax.Array:
    r"""Stepwise Reward Centering (ProRL): a weighted sum of standardised components.

    .. math:: \tilde r_t = \sum_k w_k \frac{r^k_t - \mu^k}{\max(\sigma^k, \sigma_{\min})}

    Example:
      >>> import jax.numpy as jnp
      >>> center_rewards(jnp.array([[1.0, 3.0]]), jnp.array([0.0, 1.0]), jnp.array([2.0, 0.01]))
      Array([20.5], dtype=float32)

    Args:
      rewards: ``[..., K]`` reward components per step.
      mean: ``[K]`` component means ``mu``.
      std: ``[K]`` component standard deviations ``sigma``.
      weights: ``[K]`` component weights ``w`` (default all ones).
      min_std: floor on ``sigma``.

    Returns:
      ``[...]`` centred step rewards.
    """
    assert_shape(rewards, "rewards", (..., None), "[..., C]")
    k = jnp.shape(rewards)[-1]
    assert_shape(mean, "mean", (k,), f"[C] = ({k},) (one entry per reward component)")
    assert_shape(std, "std", (k,), f"[C] = ({k},) (one entry per reward component)")
    if weights is None:
        weights = jnp.ones((k,), jnp.result_type(rewards, jnp.float32))
    assert_shape(weights, "weights", (k,), f"[C] = ({k},) (one entry per reward component)")
    check_finite(rewards, "rewards")
    r = jnp.asarray(rewards)
    scale = jnp.asarray(weights) / jnp.maximum(jnp.asarray(std), min_std)
    if k <= _UNROLL_MAX_K:
        return sum((r[..., i] - mean[i]) * scale[i] for i in range(k))
    return jnp.einsum("...k,k->...", r - mean, scale, precision=jax.lax.Precision.HIGHEST)


class RewardStats(NamedTuple):
    """Running per-component moments of step rewards (Chan et al.'s parallel merge).

    Attributes:
      count: scalar number of steps seen.
      mean: ``[K]`` running means.
      m2: ``[K]`` running sums of squared deviations from the mean.
    """

    count: jax.Array
    mean: jax.Array
    m2: jax.Array


def reward_stats_init(num_components: int) -> RewardStats:
    """Empty statistics for ``num_components`` reward components."""
    z = jnp.zeros((num_components,), jnp.float32)
    return RewardStats(count=jnp.zeros((), jnp.float32), mean=z, m2=z)


def reward_stats_update(
    stats: RewardStats,
    rewards: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike,
    axis_name: str | None = None,
) -> RewardStats:
    r"""Merges the masked steps of a batch into running moments.

    With batch count :math:`n_b`, mean :math:`\bar x_b` and :math:`M_{2,b}`:

    .. math::
        n = n_a + n_b,\quad \delta = \bar x_b - \bar x_a,\quad
        \bar x = \bar x_a + \delta n_b / n,\quad
        M_2 = M_{2,a} + M_{2,b} + \delta^2 n_a n_b / n

    Args:
      stats: the running statistics (replicated across devices).
      rewards: ``[..., K]`` reward components per step.
      mask: ``[...]`` which steps are real (float or bool).
      axis_name: if set, the batch moments are summed over this mapped axis first, so every
        device ends with the same, global statistics.

    Returns:
      Updated :class:`RewardStats`.
    """
    k = stats.mean.shape[0]
    assert_shape(rewards, "rewards", (..., k), f"[..., C], C = {k} (`stats` tracks {k} components)")
    lead = jnp.shape(rewards)[:-1]
    assert_shape(mask, "mask", lead, f"{lead}: `rewards` without its component axis")
    check_finite(rewards, "rewards")
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, k)
    m = jnp.asarray(mask, jnp.float32).reshape(-1, 1)

    def total(x: jax.Array) -> jax.Array:
        s = jnp.sum(x, axis=0)
        return s if axis_name is None else jax.lax.psum(s, axis_name)

    n_b = total(m)[0]
    mean_b = total(r * m) / jnp.maximum(n_b, 1.0)
    m2_b = total(m * (r - mean_b) ** 2)
    n = stats.count + n_b
    delta = mean_b - stats.mean
    frac = jnp.where(n > 0, n_b / jnp.maximum(n, 1.0), 0.0)
    mean = stats.mean + delta * frac
    m2 = stats.m2 + m2_b + delta**2 * stats.count * frac
    return RewardStats(count=n, mean=mean, m2=m2)


def reward_stats_mean_std(stats: RewardStats) -> tuple[jax.Array, jax.Array]:
    r"""Mean and population standard deviation :math:`\sqrt{M_2 / n}` (0 and 1 before any data)."""
    seen = stats.count > 0
    mean = jnp.where(seen, stats.mean, 0.0)
    std = jnp.where(seen, jnp.sqrt(stats.m2 / jnp.maximum(stats.count, 1.0)), 1.0)
    return mean, std
