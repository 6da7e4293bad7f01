"""Monte-Carlo checks: policy-gradient estimates against the exact gradient of a tabular policy.

The policy acts over T = 3 positions with 2 items + EOS; its state is (position, previous
item). Every path is enumerable, so the exact gradient of the expected centred return
J(θ) = Σ_path π(path) R̃(path) comes from autodiff through the enumeration, independently of
the estimators. Each estimate is averaged over many independent groups; the mean must fall
within a few standard errors of the exact value.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recrl import estimators as est

T, V = 3, 2
EOS = V
P_GROUPS, G = 20_000, 4


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    theta = jnp.asarray(rng.normal(0, 0.7, size=(T, V + 1, V + 1)), jnp.float32)
    # two reward components per (position, previous item, item), positive on average: the
    # setting in which uncentred REINFORCE prefers long paths
    comps = rng.normal([0.6, 0.2], [0.5, 0.3], size=(T, V + 1, V, 2)).astype(np.float32)
    mean, std = comps.reshape(-1, 2).mean(0), comps.reshape(-1, 2).std(0)
    r = est.center_rewards(comps, mean, std)  # [T, V+1, V] centred step reward
    return theta, jnp.asarray(r)


def _log_policy(theta, allow_eos=True):
    # EOS is never allowed first (a path needs an item); optionally never at all.
    mask = np.ones((T, V + 1, V + 1), bool)
    mask[0, :, EOS] = False
    if not allow_eos:
        mask[:, :, EOS] = False
    return jnp.where(mask, jax.nn.log_softmax(jnp.where(mask, theta, -1e9), -1), -jnp.inf)


def _exact_objective(theta, r, allow_eos):
    logpi = _log_policy(theta, allow_eos)
    total = 0.0
    for L in range(1, T + 1):
        for items in itertools.product(range(V), repeat=L):
            lp, ret, prev = 0.0, 0.0, V  # "previous item" V = none yet
            for t, a in enumerate(items):
                lp = lp + logpi[t, prev, a]
                ret = ret + r[t, prev, a]
                prev = a
            if L < T:
                lp = lp + logpi[L, prev, EOS]
            total = total + jnp.exp(lp) * ret
    return total


def _sample(theta, key, n, allow_eos):
    logpi = _log_policy(theta, allow_eos)
    prev = jnp.full((n,), V)
    done = jnp.zeros((n,), bool)
    acts, prevs, lengths = [], [], jnp.zeros((n,), jnp.int32)
    for t in range(T):
        key, sub = jax.random.split(key)
        a = jax.random.categorical(sub, logpi[t, prev])
        a = jnp.where(done, EOS, a)
        acts.append(a)
        prevs.append(prev)
        lengths = lengths + ((a != EOS) & ~done)
        done = done | (a == EOS)
        prev = jnp.where(done, prev, a)
    return jnp.stack(acts, -1), jnp.stack(prevs, -1), lengths


def _group_gradients(name, theta, r, key, allow_eos=True):
    acts, prevs, lengths = _sample(theta, key, P_GROUPS * G, allow_eos)
    item, eos = est.path_masks(lengths, T)
    t_idx = jnp.arange(T)
    step_r = jnp.where(item > 0, r[t_idx, prevs, jnp.minimum(acts, V - 1)], 0.0)
    shape = (P_GROUPS, G, T)
    adv = est.get_advantage_estimator(name)(
        step_r.reshape(shape), item.reshape(shape), eos.reshape(shape)
    )
    act_mask = (item + eos).reshape(shape)

    def surrogate(th, a, p, adv_g, m_g):  # one group: (1/G) Σ_g Σ_t log π(a_t) A_t
        lp = _log_policy(th, allow_eos)[t_idx, p, a]
        lp = jnp.where(m_g > 0, lp, 0.0)
        return jnp.sum(lp * adv_g * m_g) / G

    grads = jax.vmap(jax.grad(surrogate), in_axes=(None, 0, 0, 0, 0))(
        theta, acts.reshape(shape), prevs.reshape(shape), adv, act_mask
    )
    return np.asarray(grads.reshape(P_GROUPS, -1), np.float64)


def _z_scores(grads, exact):
    mean = grads.mean(0)
    se = grads.std(0) / np.sqrt(grads.shape[0]) + 1e-9
    keep = grads.std(0) > 1e-7  # parameters of impossible actions never move
    return np.abs(mean - exact)[keep] / se[keep]


@pytest.fixture(scope="module")
def problem():
    theta, r = _setup()
    exact = np.asarray(jax.grad(_exact_objective)(theta, r, True), np.float64).ravel()
    return theta, r, exact


@pytest.mark.parametrize("name", ["reinforce", "rtg", "psae_loo", "rloo"])
def test_estimators_are_unbiased(problem, name):
    theta, r, exact = problem
    grads = _group_gradients(name, theta, r, jax.random.key(1))
    z = _z_scores(grads, exact)
    assert z.max() < 5.0, (name, z.max())


def test_group_mean_psae_scales_gradient_by_one_minus_one_over_g():
    """With every sample acting at every position, the paper's self-inclusive position mean
    gives E[ĝ] = (1 − 1/G) ∇J exactly; the check also shows the test's power (it rejects
    the unscaled gradient)."""
    theta, r = _setup(seed=3)
    exact = np.asarray(jax.grad(_exact_objective)(theta, r, False), np.float64).ravel()
    grads = _group_gradients("psae", theta, r, jax.random.key(2), allow_eos=False)
    assert _z_scores(grads, (1 - 1 / G) * exact).max() < 5.0
    assert _z_scores(grads, exact).max() > 5.0


def test_psae_has_lower_variance_than_reinforce(problem):
    theta, r, _ = problem
    key = jax.random.key(4)
    total_var = {
        n: _group_gradients(n, theta, r, key).var(0).sum() for n in ("reinforce", "rtg", "psae")
    }
    assert total_var["psae"] < total_var["rtg"] < total_var["reinforce"], total_var
