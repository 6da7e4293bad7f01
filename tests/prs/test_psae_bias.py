"""The variable-length bias of self-inclusive PSAE, exactly, on an enumerable tabular case.

A path of at most T = 3 items: the first action is always an item (EOS is not allowed
first); at position t = 1, 2 the policy continues with probability p_t = sigmoid(θ_t) or
emits EOS. Step rewards are fixed numbers c_t, so R(L) = Σ_{t<L} c_t. With G paths per
prompt, every G-tuple of lengths is enumerated (3^G tuples), which gives the exact
expectation of each estimator; the true gradient of E[R] comes from differentiating the
length distribution (no estimator involved).

Self-inclusive PSAE scales position t's gradient by E[1 − 1/n_t], n_t = paths acting at t:
at t = 1 every path acts (n_t = G: a uniform 1 − 1/G), at t = 2 only those still going, so
the factor is smaller and depends on the policy — a direction change, not a rescale.
The leave-one-out baseline (``psae_loo``) is exactly unbiased.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from recrl import estimators as est

T, G = 3, 3
C = np.array([0.7, -0.4, 0.9])  # centred step rewards c_t


def _length_probs(theta):
    p1, p2 = jax.nn.sigmoid(theta[0]), jax.nn.sigmoid(theta[1])
    return jnp.stack([1 - p1, p1 * (1 - p2), p1 * p2])  # P(L = 1), P(L = 2), P(L = 3)


def _true_gradient(theta):
    returns = jnp.asarray(np.cumsum(C))  # R(L) for L = 1, 2, 3
    return np.asarray(jax.grad(lambda th: jnp.sum(_length_probs(th) * returns))(theta))


def _score(L, theta):
    """d log π(actions of a length-L path) / dθ, per action position ``[T, 2]``."""
    p = np.asarray(jax.nn.sigmoid(theta))
    s = np.zeros((T, 2))
    for t in (1, 2):  # position t decides with θ_{t-1}: continue (item) or EOS
        if t < L:
            s[t, t - 1] = 1 - p[t - 1]
        elif t == L:
            s[t, t - 1] = -p[t - 1]
    return s


def _expected_estimate(name, theta):
    probs = np.asarray(_length_probs(theta), np.float64)
    fn = est.get_advantage_estimator(name)
    total = np.zeros(2)
    for lengths in itertools.product((1, 2, 3), repeat=G):
        w = np.prod([probs[L - 1] for L in lengths])
        item, eos = est.path_masks(jnp.array([lengths]), T)
        r = jnp.broadcast_to(jnp.asarray(C, jnp.float32), item.shape) * item
        adv = np.asarray(fn(r, item, eos), np.float64)[0]  # [G, T]
        g = sum(np.einsum("t,tj->j", adv[i], _score(L, theta))
                for i, L in enumerate(lengths)) / G
        total += w * g
    return total


def test_self_inclusive_psae_bias_depends_on_the_position():
    for theta in (jnp.array([0.3, -0.8]), jnp.array([1.5, 0.4]), jnp.array([-1.0, 2.0])):
        true = _true_gradient(theta)
        assert np.all(np.abs(true) > 1e-3)
        # leave-one-out: exactly unbiased at every position
        np.testing.assert_allclose(_expected_estimate("psae_loo", theta), true, rtol=1e-5,
                                   atol=1e-7)
        ratio = _expected_estimate("psae", theta) / true
        # position 1: every path acts, the factor is the uniform 1 - 1/G
        np.testing.assert_allclose(ratio[0], 1 - 1 / G, rtol=1e-5)
        # position 2: fewer paths act, E[1 - 1/n_t] < 1 - 1/G; a lone path gets 0
        p1 = float(jax.nn.sigmoid(theta[0]))
        # n_2 ~ 1 + Binomial(G - 1, p1) given that the path itself acts at position 2
        n = np.arange(1, G + 1)
        pn = np.array([math.comb(G - 1, k - 1) * p1 ** (k - 1) * (1 - p1) ** (G - k)
                       for k in n])
        np.testing.assert_allclose(ratio[1], np.sum(pn * (1 - 1 / n)), rtol=1e-5)
        assert ratio[1] < ratio[0] - 0.02  # the per-position slope: not a uniform rescale
