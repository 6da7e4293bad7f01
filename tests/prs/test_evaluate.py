"""User-level evaluation: the clustered bootstrap against independent computations, the
user-stratified prompt subset, and the heuristics' target exclusion."""

import numpy as np
import pytest

from recrl.prs import evaluate as ev


def _slow_cluster_bootstrap(values, clusters, n_boot, seed):
    """Loop reference with the same draws: resample users, pool their prompts."""
    users = np.unique(clusters)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(users), (n_boot, len(users)))
    reps = []
    for row in draws:
        pooled = np.concatenate([values[clusters == users[j]] for j in row])
        reps.append(pooled.mean())
    return np.array(reps)


def test_cluster_bootstrap_equals_a_loop_over_resampled_users():
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 12, 80) * 7 + 3  # arbitrary user ids, unequal sizes
    values = rng.normal(size=80) + clusters * 0.01
    got = ev.cluster_bootstrap(values, clusters, n_boot=300, seed=5, level=0.9)
    reps = _slow_cluster_bootstrap(values, clusters, 300, 5)
    np.testing.assert_allclose(got["lo"], np.quantile(reps, 0.05), rtol=1e-12)
    np.testing.assert_allclose(got["hi"], np.quantile(reps, 0.95), rtol=1e-12)
    np.testing.assert_allclose(got["se"], reps.std(ddof=1), rtol=1e-12)
    assert got["mean"] == pytest.approx(values.mean()) and got["clusters"] == 12


def test_cluster_bootstrap_se_matches_the_analytic_clustered_se():
    """Equal-size clusters with a strong user effect: the bootstrap SE of the mean is the SE
    of the mean of C cluster means, sqrt(var_pop(cluster means) / C), and far above the
    i.i.d. SE that treats the prompts as independent."""
    rng = np.random.default_rng(1)
    C, m = 60, 20
    user_effect = rng.normal(size=C)
    values = (user_effect[:, None] + 0.3 * rng.normal(size=(C, m))).ravel()
    clusters = np.repeat(np.arange(C), m)
    got = ev.cluster_bootstrap(values, clusters, n_boot=4000, seed=2)
    analytic = values.reshape(C, m).mean(1).std() / np.sqrt(C)
    assert got["se"] == pytest.approx(analytic, rel=0.05)
    iid = values.std() / np.sqrt(len(values))
    assert got["se"] > 3 * iid
    assert got["lo"] < values.mean() < got["hi"]


def test_cluster_bootstrap_bad_input():
    with pytest.raises(ValueError, match="equal-length 1-d arrays"):
        ev.cluster_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="level must be in"):
        ev.cluster_bootstrap(np.zeros(3), np.zeros(3), level=1.5)


def test_stratified_prompts_spread_over_users():
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(30), rng.integers(1, 40, 30))
    rng.shuffle(users)
    idx = ev.stratified_prompts(users, 100, seed=0)
    assert len(idx) == 100 and len(np.unique(idx)) == 100
    counts = np.bincount(users[idx], minlength=30)
    avail = np.bincount(users, minlength=30)
    assert (counts >= 1).all()  # 100 >= 30 users: everyone is in
    # balanced: a user below the top count has run out of prompts
    top = counts.max()
    assert np.all((counts >= top - 1) | (counts == avail))
    np.testing.assert_array_equal(idx, ev.stratified_prompts(users, 100, seed=0))
    assert not np.array_equal(idx, ev.stratified_prompts(users, 100, seed=1))
    np.testing.assert_array_equal(ev.stratified_prompts(users, 0), np.arange(len(users)))
