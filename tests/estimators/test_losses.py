"""Loss aggregation, PG / clipped surrogate losses and KL penalties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from recrl import estimators as est


def _tokens(seed=0, B=(3, 4), T=6):
    rng = np.random.default_rng(seed)
    logp = rng.normal(-1.5, 0.5, size=(*B, T))
    old = logp + rng.normal(0, 0.3, size=logp.shape)
    adv = rng.normal(size=logp.shape)
    lengths = rng.integers(0, T + 1, size=B)
    mask = (np.arange(T) < lengths[..., None]).astype(np.float64)
    return logp, old, adv, mask


def _loop_aggregate(x, m, how):
    seqs = [(x[idx], m[idx]) for idx in np.ndindex(x.shape[:-1])]
    if how == "token_mean":
        return sum((a * b).sum() for a, b in seqs) / sum(b.sum() for _, b in seqs)
    if how == "seq_sum":
        return sum((a * b).sum() for a, b in seqs) / len(seqs)
    per = [(a * b).sum() / b.sum() for a, b in seqs if b.sum() > 0]
    return sum(per) / len(per)


@pytest.mark.parametrize("how", est.AGGREGATIONS)
def test_aggregate_matches_loop(how):
    x, _, _, m = _tokens()
    got = jax.jit(lambda a, b: est.aggregate_loss(a, b, how))(x, m)
    np.testing.assert_allclose(got, _loop_aggregate(x, m, how), rtol=1e-5)


def test_unknown_aggregation():
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        est.aggregate_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), "mean")


def test_policy_gradient_loss_gradient_is_minus_masked_advantage():
    logp, _, adv, m = _tokens(1)
    g = jax.grad(lambda lp: est.policy_gradient_loss(lp, adv, m))(logp)
    np.testing.assert_allclose(g, -adv * m / m.sum(), rtol=1e-5, atol=1e-8)
    g = jax.grad(lambda lp: est.policy_gradient_loss(lp, adv, m, "seq_sum"))(logp)
    np.testing.assert_allclose(g, -adv * m / 12, rtol=1e-5, atol=1e-8)


def _loop_clipped(logp, old, adv, eps_lo, eps_hi, c):
    out = np.zeros_like(logp)
    for idx in np.ndindex(logp.shape):
        ratio = np.exp(np.clip(logp[idx] - old[idx], -20, 20))
        a = adv[idx]
        loss = max(-a * ratio, -a * min(max(ratio, 1 - eps_lo), 1 + eps_hi))
        if c is not None and a < 0:
            loss = min(loss, -c * a)
        out[idx] = loss
    return out


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_clipped_surrogate_matches_loop(dual_clip):
    logp, old, adv, m = _tokens(2)
    logp = logp + np.where(np.arange(logp.size).reshape(logp.shape) % 5 == 0, 1.5, 0.0)
    fn = jax.jit(lambda a, b, c, d: est.clipped_surrogate_loss(
        a, b, c, d, 0.2, 0.28, dual_clip, "seq_mean_token_mean"))
    want = _loop_aggregate(_loop_clipped(logp, old, adv, 0.2, 0.28, dual_clip), m,
                           "seq_mean_token_mean")
    np.testing.assert_allclose(fn(logp, old, adv, m), want, rtol=1e-5)


def test_clipped_surrogate_gradients():
    logp, old, adv, m = _tokens(3)
    # away from the clip kinks, finite differences are valid
    f = lambda lp: est.clipped_surrogate_loss(lp, old, adv, m, 0.2, 0.28, 3.0)
    check_grads(f, (logp,), order=1, modes=["rev"], eps=1e-4)
    # on-policy, the clipped loss has the plain PG gradient
    g_clip = jax.grad(lambda lp: est.clipped_surrogate_loss(lp, lp, adv, m))(logp)
    g_pg = jax.grad(lambda lp: est.policy_gradient_loss(lp, adv, m))(logp)
    np.testing.assert_allclose(g_clip, g_pg, rtol=1e-6, atol=1e-9)


def test_policy_gradient_loss_check_grads():
    logp, _, adv, m = _tokens(4)
    check_grads(lambda lp: est.policy_gradient_loss(lp, adv, m), (logp,), order=2, eps=1e-4)


def test_bad_dual_clip():
    with pytest.raises(ValueError, match="`dual_clip` must be > 1"):
        est.clipped_surrogate_loss(jnp.ones(3), jnp.ones(3), jnp.ones(3), jnp.ones(3),
                                   dual_clip=0.5)


def test_kl_estimators_hand_values():
    lp, lq = jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25]))
    d = np.log(0.25 / 0.5)
    np.testing.assert_allclose(est.kl_penalty(lp, lq, "k1"), [-d], rtol=1e-6)
    np.testing.assert_allclose(est.kl_penalty(lp, lq, "k2"), [0.5 * d * d], rtol=1e-6)
    np.testing.assert_allclose(est.kl_penalty(lp, lq, "k3"), [np.exp(d) - d - 1], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        est.kl_penalty(lp, lq, "k4")


def test_k1_k3_are_unbiased_for_exact_kl_by_monte_carlo():
    p_logits = jnp.array([0.3, -1.0, 1.2, 0.0])
    q_logits = jnp.array([0.0, 0.5, 0.2, -0.7])
    exact = float(est.full_kl(p_logits, q_logits))
    a = jax.random.categorical(jax.random.key(0), p_logits, shape=(400_000,))
    lp = jax.nn.log_softmax(p_logits)[a]
    lq = jax.nn.log_softmax(q_logits)[a]
    for kind in ("k1", "k3"):
        vals = np.asarray(est.kl_penalty(lp, lq, kind))
        se = vals.std() / np.sqrt(vals.size)
        assert abs(vals.mean() - exact) < 4 * se + 1e-4, (kind, vals.mean(), exact)


def test_full_kl_matches_numpy_and_handles_masks():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    p = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    q = np.exp(y) / np.exp(y).sum(-1, keepdims=True)
    np.testing.assert_allclose(est.full_kl(x, y), (p * np.log(p / q)).sum(-1), rtol=1e-5)
    where = np.ones((3, 7), bool)
    where[:, 0] = False  # e.g. EOS not allowed at this position
    p2 = np.where(where, np.exp(x), 0)
    p2 /= p2.sum(-1, keepdims=True)
    q2 = np.where(where, np.exp(y), 0)
    q2 /= q2.sum(-1, keepdims=True)
    want = np.where(where, p2 * np.log(np.where(where, p2 / np.where(where, q2, 1), 1)), 0).sum(-1)
    np.testing.assert_allclose(est.full_kl(x, y, where), want, rtol=1e-5)
    # -inf logits are impossible actions, not NaNs
    x_inf = x.copy()
    x_inf[:, 0] = -np.inf
    assert np.all(np.isfinite(np.asarray(est.full_kl(x_inf, y))))
    g = jax.grad(lambda a: jnp.sum(est.full_kl(a, y, where)))(x)
    assert np.all(np.isfinite(np.asarray(g)))
    check_grads(lambda a: jnp.sum(est.full_kl(a, y)), (x,), order=2, eps=1e-4)
