"""reward_to_go, path_masks, center_rewards and running reward statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recrl import estimators as est
from tests.estimators import reference as ref


def test_reward_to_go_hand_case():
    r = jnp.array([1.0, 2.0, 4.0, 8.0])
    m = jnp.array([1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(est.reward_to_go(r, m), [7.0, 6.0, 4.0, 0.0])
    # gamma = 0.5: G_2 = 4, G_1 = 2 + 2 = 4, G_0 = 1 + 0.5 * 4 = 3
    np.testing.assert_allclose(est.reward_to_go(r, m, 0.5), [3.0, 4.0, 4.0, 0.0])


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reward_to_go_matches_loop_under_jit_and_vmap(gamma):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(3, 5, 7)).astype(np.float32)
    lengths = rng.integers(0, 8, size=(3, 5))
    m, _ = ref.lengths_to_masks(lengths, 7)
    want = ref.reward_to_go(r, m, gamma)
    got = jax.jit(lambda a, b: est.reward_to_go(a, b, gamma))(r, m)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got_v = jax.vmap(lambda a, b: est.reward_to_go(a, b, gamma))(r, m)
    np.testing.assert_allclose(got_v, want, rtol=1e-5, atol=1e-5)


def test_path_masks_against_loop():
    lengths = np.array([[0, 1, 3], [4, 2, 4]])
    item, eos = jax.jit(est.path_masks, static_argnums=1)(lengths, 4)
    want_item, want_eos = ref.lengths_to_masks(lengths, 4)
    np.testing.assert_array_equal(item, want_item)
    np.testing.assert_array_equal(eos, want_eos)
    # a full-length path has no EOS position
    assert float(eos[1, 0].sum()) == 0.0


def test_path_masks_rejects_float_lengths():
    with pytest.raises(ValueError, match="`lengths` must be integers"):
        est.path_masks(jnp.array([1.5]), 3)


def test_center_rewards_hand_case():
    r = jnp.array([[1.0, 3.0, -1.0]])
    mean = jnp.array([0.0, 1.0, -1.0])
    std = jnp.array([2.0, 0.01, 4.0])  # second std floored to 0.1
    w = jnp.array([1.0, 0.5, 2.0])
    # 1 * 0.5 + 0.5 * 20 + 2 * 0 = 10.5
    np.testing.assert_allclose(est.center_rewards(r, mean, std, w), [10.5], rtol=1e-6)


def test_center_rewards_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="`mean` must have shape"):
        est.center_rewards(jnp.ones((2, 3)), jnp.zeros(2), jnp.ones(3))
    with pytest.raises(ValueError, match="`weights` must have shape"):
        est.center_rewards(jnp.ones((2, 3)), jnp.zeros(3), jnp.ones(3), jnp.ones(4))


def test_reward_stats_match_two_pass_moments_over_batches():
    rng = np.random.default_rng(1)
    stats = est.reward_stats_init(3)
    update = jax.jit(est.reward_stats_update)
    kept = []
    for b in range(5):
        r = rng.normal(loc=[1.0, -2.0, 0.5], scale=[1.0, 3.0, 0.2], size=(4, 6, 3))
        m = rng.random((4, 6)) < 0.6
        if b == 2:
            m[:] = False  # an empty batch changes nothing
        stats = update(stats, r.astype(np.float32), m)
        kept.extend(r[m])
    mean, std = est.reward_stats_mean_std(stats)
    want_mean, want_std = ref.running_moments(kept)
    assert float(stats.count) == len(kept)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, want_std, rtol=1e-4, atol=1e-5)


def test_reward_stats_before_data_are_identity():
    mean, std = est.reward_stats_mean_std(est.reward_stats_init(2))
    np.testing.assert_array_equal(mean, [0.0, 0.0])
    np.testing.assert_array_equal(std, [1.0, 1.0])


def test_reward_stats_mask_shape_error():
    with pytest.raises(ValueError, match="has shape \\(3, 2\\).*`mask` must have shape \\(3, 4\\)"):
        est.reward_stats_update(est.reward_stats_init(2), jnp.ones((3, 4, 2)), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="components"):
        est.reward_stats_update(est.reward_stats_init(2), jnp.ones((3, 4, 3)), jnp.ones((3, 4)))


def test_nan_rewards_are_reported_eagerly_and_under_checked():
    r = jnp.array([1.0, jnp.nan, 2.0])
    with pytest.raises(ValueError, match="`rewards` contains 1 NaN/inf value.*index \\(1,\\)"):
        est.reward_to_go(r, jnp.ones(3))
    with pytest.raises(ValueError, match="`rewards` contains NaN or inf"):
        est.checked(est.reward_to_go)(r, jnp.ones(3))
    # finite input passes through `checked` unchanged
    np.testing.assert_allclose(est.checked(est.reward_to_go)(jnp.ones(3), jnp.ones(3)), [3, 2, 1])


@pytest.mark.parametrize("gamma", [1.0, 0.95])
def test_reward_to_go_long_horizon_branch(gamma):
    # horizons beyond the matmul threshold go through cumsum / scan
    rng = np.random.default_rng(3)
    r = rng.normal(size=(2, 80)).astype(np.float32)
    m = (np.arange(80) < np.array([[50], [80]])).astype(np.float32)
    got = jax.jit(lambda a, b: est.reward_to_go(a, b, gamma))(r, m)
    np.testing.assert_allclose(got, ref.reward_to_go(r, m, gamma), rtol=1e-4, atol=1e-4)


def test_center_rewards_many_components_matches_formula():
    rng = np.random.default_rng(4)
    r = rng.normal(size=(5, 12)).astype(np.float32)
    mean, std, w = rng.normal(size=12), rng.uniform(0.01, 2, size=12), rng.normal(size=12)
    want = [sum(w[k] * (row[k] - mean[k]) / max(std[k], 0.1) for k in range(12)) for row in r]
    np.testing.assert_allclose(est.center_rewards(r, mean, std, w), want, rtol=1e-4, atol=1e-5)


def test_reward_to_go_is_differentiable_in_the_discount():
    r, m = jnp.array([1.0, 2.0, 4.0]), jnp.ones(3)
    # G_0 = 1 + 2 g + 4 g^2  =>  dG_0/dg = 2 + 8 g
    g = jax.grad(lambda d: est.reward_to_go(r, m, d)[0])(0.5)
    np.testing.assert_allclose(g, 6.0, rtol=1e-6)
