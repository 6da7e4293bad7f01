"""Evidence Gain, exact in-context log-weights and EG weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recrl import estimators as est


def _loop_eg(with_demo, without, mask, ntok):
    out = []
    for n in range(with_demo.shape[0]):
        ds = [
            (with_demo[n, e] - without[e]) / (ntok[e] if ntok is not None else 1.0)
            for e in range(with_demo.shape[1]) if mask[n, e]
        ]
        out.append(sum(ds) / len(ds) if ds else 0.0)
    return np.array(out)


def test_evidence_gain_hand_case():
    with_demo = jnp.array([[-2.0, -4.0], [-1.0, -1.0]])
    without = jnp.array([-3.0, -3.0])
    np.testing.assert_allclose(est.evidence_gain(with_demo, without), [0.0, 2.0])
    # per-token with answers of 2 and 4 tokens: ((1/2) + (-1/4)) / 2
    np.testing.assert_allclose(
        est.evidence_gain(with_demo, without, num_tokens=jnp.array([2, 4]))[0], 0.125
    )


@pytest.mark.parametrize("per_token", [False, True])
def test_evidence_gain_matches_loop_with_masks(per_token):
    rng = np.random.default_rng(0)
    N, E = 7, 9
    with_demo = rng.normal(-20, 5, size=(N, E)).astype(np.float32)
    without = rng.normal(-21, 5, size=E).astype(np.float32)
    mask = rng.random((N, E)) < 0.7
    mask[3] = False
    ntok = rng.integers(1, 30, size=E) if per_token else None
    got = jax.jit(est.evidence_gain)(with_demo, without, mask, ntok)
    np.testing.assert_allclose(got, _loop_eg(with_demo, without, mask, ntok), rtol=1e-5)
    assert float(got[3]) == 0.0


def test_evidence_log_weight_is_log_mean_exp_and_above_eg():
    rng = np.random.default_rng(1)
    with_demo = rng.normal(-10, 2, size=(5, 6)).astype(np.float64)
    without = rng.normal(-10, 2, size=6)
    mask = np.ones((5, 6), bool)
    mask[1, :3] = False
    got = np.asarray(est.evidence_log_weight(with_demo, without, mask))
    for n in range(5):
        d = (with_demo[n] - without)[mask[n]]
        np.testing.assert_allclose(got[n], np.log(np.mean(np.exp(d))), rtol=1e-5)
    assert np.all(got >= np.asarray(est.evidence_gain(with_demo, without, mask)) - 1e-6)


def test_evidence_gain_shape_errors():
    with pytest.raises(ValueError,
                       match=r"has shape \(4,\).*`logp_without` must have shape \[E\] = \(3,\)"):
        est.evidence_gain(jnp.zeros((2, 3)), jnp.zeros(4))
    with pytest.raises(ValueError, match="`probe_mask` must have shape"):
        est.evidence_gain(jnp.zeros((2, 3)), jnp.zeros(3), probe_mask=jnp.ones((3, 2)))


def test_evidence_gain_weights_hand_case_and_properties():
    w = est.evidence_gain_weights(jnp.array([[0.0, jnp.log(3.0)]]))
    np.testing.assert_allclose(w, [[0.5, 1.5]], rtol=1e-6)
    rng = np.random.default_rng(2)
    eg = rng.normal(size=(4, 8)).astype(np.float32) * 5
    valid = rng.random((4, 8)) < 0.6
    valid[0] = False
    eg[1, ~valid[1]] = 1e4  # huge values on invalid samples must not leak in
    w = np.asarray(jax.jit(est.evidence_gain_weights)(eg, 2.0, valid))
    assert np.all(w[0] == 0) and np.all(w[~valid] == 0)
    for p in range(1, 4):
        v = valid[p]
        if v.sum():
            np.testing.assert_allclose(w[p][v].mean(), 1.0, rtol=1e-5)
            i, j = np.flatnonzero(v)[:2] if v.sum() > 1 else (np.flatnonzero(v)[0],) * 2
            np.testing.assert_allclose(w[p, i] / w[p, j], np.exp((eg[p, i] - eg[p, j]) / 2.0),
                                       rtol=1e-4)
    grad = jax.grad(lambda e: jnp.sum(est.evidence_gain_weights(e, 2.0, valid) ** 2))(eg)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_evidence_gain_weights_rejects_bad_temperature_and_nan():
    with pytest.raises(ValueError, match="`temperature` must be > 0"):
        est.evidence_gain_weights(jnp.zeros((1, 2)), temperature=0.0)
    with pytest.raises(ValueError, match="`eg` contains"):
        est.evidence_gain_weights(jnp.array([[0.0, jnp.nan]]))


# ---------------------------------------------------------------- exp(EG)-weighted objective

THETA = np.array([0.3, -0.2, 0.1], np.float32)  # softmax policy over 3 outcomes
R3 = np.array([1.0, 1.0, 0.0], np.float32)
ELL = np.array([0.5, -0.3, 0.2], np.float32)  # fixed log-weights of the outcomes


def _objective(theta):  # J(theta) = sum_r pi(r) R(r) exp(ell(r)), weights held fixed
    return jnp.sum(jax.nn.softmax(theta) * R3 * jnp.exp(ELL))


def _enumerated_expectation(group, **kw):
    """E over all 3^G groups of (1/G) sum_g A_g grad log pi(r_g), computed exactly."""
    pi = np.asarray(jax.nn.softmax(THETA), np.float64)
    glogp = np.eye(3) - pi[None, :]  # grad_theta log softmax(theta)[r] = e_r - pi
    outcomes = np.array(np.meshgrid(*[np.arange(3)] * group, indexing="ij")).reshape(group, -1).T
    adv = np.asarray(est.evidence_weighted_advantages(R3[outcomes], ELL[outcomes], **kw),
                     np.float64)
    prob = np.prod(pi[outcomes], axis=1)
    per_group = np.einsum("ng,ngk->nk", adv, glogp[outcomes]) / group
    return prob @ per_group


@pytest.mark.parametrize("group", [2, 4])
def test_weighted_estimator_expectation_is_the_reweighted_gradient(group):
    exact = np.asarray(jax.grad(_objective)(jnp.asarray(THETA)), np.float64)
    loo = _enumerated_expectation(group, normalize=False, baseline="loo", scale="none")
    np.testing.assert_allclose(loo, exact, rtol=1e-5, atol=1e-7)
    mean = _enumerated_expectation(group, normalize=False, baseline="mean", scale="none")
    np.testing.assert_allclose(mean, exact * (group - 1) / group, rtol=1e-5, atol=1e-7)
    # the old form (weights on advantages) is a different estimator: not this gradient
    pi = np.asarray(jax.nn.softmax(THETA), np.float64)
    outcomes = np.array(np.meshgrid(*[np.arange(3)] * group, indexing="ij")).reshape(group, -1).T
    r = R3[outcomes]
    old = np.asarray(est.rloo_advantages(r)) * np.exp(ELL[outcomes])
    old_e = np.prod(pi[outcomes], 1) @ (np.einsum("ng,ngk->nk", old,
                                                   (np.eye(3) - pi)[outcomes]) / group)
    assert np.abs(old_e - exact).max() > 0.01


def test_normalised_weights_monte_carlo():
    # weights with E_pi[w] = 1 (the implicit in-context weight's property): the group-normalised
    # estimator's expectation approaches grad E[R w] (self-normalised: O(1/G) bias)
    pi = np.asarray(jax.nn.softmax(THETA), np.float64)
    ell = ELL - np.log(pi @ np.exp(ELL))
    exact = np.asarray(jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * R3 * jnp.exp(ell)))(
        jnp.asarray(THETA)), np.float64)
    g, n = 64, 4000
    draws = np.asarray(jax.random.categorical(jax.random.key(0), jnp.log(pi), shape=(n, g)))
    adv = np.asarray(est.evidence_weighted_advantages(R3[draws], ell[draws].astype(np.float32),
                                                      baseline="loo", scale="none"), np.float64)
    per_group = np.einsum("ng,ngk->nk", adv, (np.eye(3) - pi)[draws]) / g
    mean, se = per_group.mean(0), per_group.std(0) / np.sqrt(n)
    assert np.all(np.abs(mean - exact) < 4 * se + 0.02 * np.abs(exact).max()), (mean, exact, se)


def test_weighted_advantages_by_hand():
    # w = (1.5, 0.5, 1, 1) after normalisation (mean 1 over all four rollouts)
    ell = jnp.log(jnp.array([[3.0, 1.0, 2.0, 2.0]]))
    r = jnp.array([[1.0, 1.0, 0.0, 0.0]])
    got = est.evidence_weighted_advantages(r, ell, scale="none")
    np.testing.assert_allclose(got, [[1.5 - 0.5, 0.5 - 0.5, -0.5, -0.5]], rtol=1e-6)
    std = np.std([1.5, 0.5, 0.0, 0.0])
    got = jax.jit(est.evidence_weighted_advantages)(r, ell)
    np.testing.assert_allclose(got, [[1.0 / std, 0.0, -0.5 / std, -0.5 / std]], rtol=1e-5)
    # temperature 2 halves the log-weights: w = sqrt(3, 1, 2, 2) / mean
    w = np.sqrt([3.0, 1.0, 2.0, 2.0])
    w /= w.mean()
    got = est.evidence_weighted_advantages(r, ell, temperature=2.0, scale="none")
    np.testing.assert_allclose(got, [[w[0] - (w[0] + w[1]) / 4, w[1] - (w[0] + w[1]) / 4,
                                      -(w[0] + w[1]) / 4, -(w[0] + w[1]) / 4]], rtol=1e-5)
    with pytest.raises(ValueError, match="loo"):
        est.evidence_weighted_advantages(r, ell, baseline="loo")
    with pytest.raises(ValueError,
                       match=r"\[\(1, 4\), \(1, 3\)\].*`reward`, `log_weight` must have one"):
        est.evidence_weighted_advantages(r, ell[:, :3])
