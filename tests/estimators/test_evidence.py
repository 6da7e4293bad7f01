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
    with pytest.raises(ValueError, match="`logp_without` must have shape \\(3,\\)"):
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
