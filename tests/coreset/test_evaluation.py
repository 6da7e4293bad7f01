"""Decisive-comparison statistics against independent computations."""

import numpy as np
import pytest
import scipy.stats

from recrl.coreset import evaluation


def test_user_bootstrap_equals_an_explicit_resampling_loop():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 12, 60)
    v = rng.normal(size=60) + users * 0.3
    got = evaluation.user_bootstrap(v, users, num=300, seed=5)
    # the same user draws, but each resample built explicitly from the drawn users' windows
    ids = np.unique(users)
    picks = np.random.default_rng(5).integers(0, ids.size, size=(300, ids.size))
    want = [np.mean(np.concatenate([v[users == ids[k]] for k in row])) for row in picks]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_user_bootstrap_spread_matches_the_analytic_standard_error():
    rng = np.random.default_rng(1)
    v = rng.normal(size=2000)
    boot = evaluation.user_bootstrap(v, np.arange(2000), num=4000, seed=2)
    se = v.std(ddof=1) / np.sqrt(2000)  # one window per user: the usual SE of a mean
    assert abs(boot.std() / se - 1) < 0.05
    # clustered: 40 users x 50 identical windows -> the SE of a mean of 40 user values
    users = np.repeat(np.arange(40), 50)
    u = rng.normal(size=40)
    boot = evaluation.user_bootstrap(u[users], users, num=4000, seed=3)
    assert abs(boot.std() / (u.std(ddof=0) / np.sqrt(40)) - 1) < 0.06
    iv = evaluation.user_interval(u[users], users, num=4000, seed=3)
    naive = 1.96 * u[users].std() / np.sqrt(2000)
    assert iv.lo < iv.mean < iv.hi and (iv.hi - iv.lo) / 2 > 5 * naive


def test_spearman_equals_scipy_and_permutation_p():
    rng = np.random.default_rng(4)
    x = rng.normal(size=19)
    y = x + rng.normal(size=19)
    y[3] = y[4]  # a tie
    rho, p = evaluation.spearman(x, y, permutations=5000)
    assert rho == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    want = scipy.stats.permutation_test((x, y), lambda a, b: scipy.stats.spearmanr(a, b)
                                        .statistic, permutation_type="pairings",
                                        alternative="greater", n_resamples=5000,
                                        random_state=0).pvalue
    assert p == pytest.approx(want, abs=0.015)
    rho_n, p_n = evaluation.spearman(x, -y)
    assert rho_n == pytest.approx(-rho) and p_n > 0.9
    with pytest.raises(ValueError, match="equal-length"):
        evaluation.spearman(x, y[:5])


def test_percentile_and_input_errors():
    assert evaluation.percentile(0.5, np.array([0.1, 0.2, 0.6, 0.9])) == 50.0
    assert evaluation.percentile(0.0, np.array([0.1, 0.2])) == 0.0
    with pytest.raises(ValueError, match="finite"):
        evaluation.user_bootstrap(np.array([1.0, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="equal-length"):
        evaluation.user_bootstrap(np.ones(3), np.arange(2))
