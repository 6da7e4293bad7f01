"""DEALRec's surrogate influence against a dense Gauss-Newton solve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from recrl.coreset import surrogate


def _data(n=30, items=8, hist=3, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, items, (n, hist))
    m = np.arange(hist)[None] < rng.integers(1, hist + 1, n)[:, None]
    return np.where(m, h, -1), m, rng.integers(0, items, n)


def test_influence_equals_a_dense_gauss_newton_solve():
    h, m, t = _data()
    params = surrogate.train_surrogate(h, m, t, 8, dim=3, steps=30, batch_size=16)
    got = surrogate.surrogate_influence(params, h, m, t, damping=1e-2, batch_size=7)
    flat, unravel = ravel_pytree(params)
    hj, mj = jnp.asarray(h), jnp.asarray(m)
    jac = np.asarray(jax.jacrev(lambda th: surrogate.surrogate_logits(unravel(th), hj, mj))(
        flat), np.float64)  # [N, I, P]
    z = np.asarray(surrogate.surrogate_logits(params, hj, mj), np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(8)[t]
    grads = np.einsum("ni,nip->np", p - onehot, jac)  # per-sample CE gradients, by hand
    ggn = sum(jac[i].T @ (np.diag(p[i]) - np.outer(p[i], p[i])) @ jac[i]
              for i in range(len(t))) / len(t)
    x = np.linalg.solve(ggn + 1e-2 * np.eye(ggn.shape[0]), grads.mean(0))
    np.testing.assert_allclose(got, grads @ x, rtol=2e-3, atol=2e-4 * np.abs(grads @ x).max())


def test_training_lowers_the_loss_and_bad_ids_are_clear_errors():
    h, m, t = _data(n=200, seed=1)
    p0 = surrogate.init_surrogate(8, 4)
    p1 = surrogate.train_surrogate(h, m, t, 8, dim=4, steps=200, batch_size=64)

    def loss(p):
        return float(np.mean(surrogate._losses(p, jnp.asarray(h), jnp.asarray(m),
                                               jnp.asarray(t))))

    assert loss(p1) < loss(p0) - 0.1
    with pytest.raises(ValueError, match="item ids"):
        surrogate.train_surrogate(h, m, t + 8, 8)
    with pytest.raises(ValueError, match="expected"):
        surrogate.surrogate_influence(p1, h[:, :2], m, t)
