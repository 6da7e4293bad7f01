"""Advantage estimators against slow loops, hand cases, jit/vmap, and the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recrl import estimators as est
from tests.estimators import reference as ref


def _batch(seed=0, P=4, G=6, T=5):
    rng = np.random.default_rng(seed)
    r = rng.normal(0.3, 1.0, size=(P, G, T)).astype(np.float32)
    lengths = rng.integers(0, T + 1, size=(P, G))
    lengths[0, 0], lengths[0, 1] = 0, T  # an invalid path and a full-length one
    item, eos = ref.lengths_to_masks(lengths, T)
    return r, lengths, item.astype(np.float32), eos.astype(np.float32)


def test_psae_hand_case():
    # two paths: [1, 1] then EOS; [1] then EOS.  G = [2, 1, 0] and [1, 0]
    r = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    item, eos = est.path_masks(jnp.array([2, 1]), 3)
    np.testing.assert_allclose(est.psae_advantages(r, item, eos), [[0.5, 0.5, 0], [-0.5, -0.5, 0]])
    # leave-one-out: the baseline of each is the other's return at that position;
    # position 2 has a single actor (the EOS of path 0), so its baseline is 0.
    np.testing.assert_allclose(
        est.psae_advantages(r, item, eos, leave_one_out=True), [[1, 1, 0], [-1, -1, 0]]
    )


@pytest.mark.parametrize("gamma", [1.0, 0.8])
@pytest.mark.parametrize("loo", [False, True])
def test_psae_matches_loop(gamma, loo):
    r, lengths, item, eos = _batch()
    want = ref.psae(r, lengths, gamma, leave_one_out=loo)
    fn = jax.jit(lambda a, b, c: est.psae_advantages(a, b, c, gamma, leave_one_out=loo))
    np.testing.assert_allclose(fn(r, item, eos), want, rtol=1e-5, atol=1e-5)
    # invalid path gets exactly no gradient
    assert np.all(np.asarray(fn(r, item, eos))[0, 0] == 0)


def test_psae_vmap_over_prompts_equals_batched():
    r, _, item, eos = _batch(seed=3)
    batched = est.psae_advantages(r, item, eos)
    mapped = jax.vmap(est.psae_advantages)(r, item, eos)
    np.testing.assert_allclose(mapped, batched, rtol=1e-6)


def test_position_baseline_hand_case():
    g = jnp.array([[[3.0, 1.0], [1.0, 5.0], [9.0, 9.0]]])
    a = jnp.array([[[1, 1], [1, 0], [0, 0]]])
    np.testing.assert_allclose(est.position_baseline(g, a), [[2.0, 1.0]])
    empty = est.position_baseline(g, jnp.zeros_like(a))
    np.testing.assert_array_equal(empty, [[0.0, 0.0]])


def test_reinforce_and_rtg_match_loops():
    r, lengths, item, eos = _batch(seed=5)
    np.testing.assert_allclose(
        jax.jit(est.reinforce_advantages)(r, item, eos), ref.reinforce(r, lengths), rtol=1e-5
    )
    np.testing.assert_allclose(
        jax.jit(lambda a, b, c: est.rtg_advantages(a, b, c, 0.9))(r, item, eos),
        ref.rtg(r, lengths, 0.9), rtol=1e-5, atol=1e-6,
    )


@pytest.mark.parametrize("scale", ["std", "none"])
def test_grpo_matches_loop_with_ragged_validity(scale):
    rng = np.random.default_rng(2)
    R = rng.normal(size=(5, 8)).astype(np.float32)
    valid = rng.random((5, 8)) < 0.7
    valid[0] = False
    valid[1] = [True] + [False] * 7  # one valid sample: no signal
    R[2] = 3.0  # zero variance
    got = jax.jit(lambda a, v: est.grpo_advantages(a, scale=scale, valid=v))(R, valid)
    want = ref.grpo(R, valid, scale)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(got)))
    assert np.all(np.asarray(got)[:3] == 0)


def test_grpo_hand_case():
    # mean 0.5, population std 0.5
    np.testing.assert_allclose(
        est.grpo_advantages(jnp.array([1.0, 0.0, 0.0, 1.0]), eps=0.0), [1, -1, -1, 1]
    )


def test_rloo_matches_loop():
    rng = np.random.default_rng(4)
    R = rng.normal(size=(6, 5)).astype(np.float32)
    valid = rng.random((6, 5)) < 0.8
    valid[0] = [False, False, False, True, False]
    np.testing.assert_allclose(
        jax.jit(est.rloo_advantages)(R, valid), ref.rloo(R, valid), rtol=1e-5, atol=1e-6
    )


def test_registry_names_and_unknown_name():
    names = est.advantage_estimator_names()
    assert names == ["drgrpo", "grpo", "psae", "psae_loo", "reinforce", "rloo", "rtg"]
    # estimators only: pipeline method names (SRC, aggregation) live in the methods tables
    with pytest.raises(ValueError, match="unknown advantage estimator 'prorl'.*known: drgrpo"):
        est.get_advantage_estimator("prorl")
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'.*known: .*psae"):
        est.get_advantage_estimator("ppo")
    # registered on the function itself
    assert est.get_advantage_estimator("psae") is est.psae_advantages
    with pytest.raises(ValueError, match="'rtg' is already registered"):
        est.register_advantage_estimator("rtg")(est.rtg_advantages)


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo"])
def test_registry_path_level_estimators_broadcast_to_actions(name):
    r, lengths, item, eos = _batch(seed=7)
    adv = jax.jit(est.get_advantage_estimator(name))(r, item, eos)
    R = (r * item).sum(-1)
    valid = lengths > 0
    path = {
        "grpo": ref.grpo(R, valid, "std"),
        "drgrpo": ref.grpo(R, valid, "none"),
        "rloo": ref.rloo(R, valid),
    }[name]
    want = path[..., None] * (item + eos) * valid[..., None]
    np.testing.assert_allclose(adv, want, rtol=1e-4, atol=1e-5)


def test_mismatched_shapes_name_the_argument():
    r = jnp.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"different shapes: \[\(2, 3, 4\), \(2, 3, 4\), "
                       r"\(2, 3, 5\)\].*`step_rewards`, `item_mask`, `eos_mask` must have one"):
        est.psae_advantages(r, jnp.ones((2, 3, 4)), jnp.ones((2, 3, 5)))
    with pytest.raises(ValueError,
                       match=r"has shape \(4,\).*`step_rewards` must have shape \[..., G, T\]"):
        est.rtg_advantages(jnp.ones(4), jnp.ones(4), jnp.ones(4))
    with pytest.raises(ValueError, match="`scale` must be"):
        est.grpo_advantages(jnp.ones((2, 3)), scale="mad")


def test_nan_step_rewards_rejected():
    r = np.ones((1, 2, 3), np.float32)
    r[0, 1, 2] = np.inf
    item, eos = est.path_masks(jnp.array([[3, 3]]), 3)
    with pytest.raises(ValueError, match="`step_rewards` contains 1 NaN/inf"):
        est.psae_advantages(r, item, eos)
    with pytest.raises(ValueError, match="`step_rewards` contains NaN or inf"):
        est.checked(est.get_advantage_estimator("psae"))(r, item, eos)
