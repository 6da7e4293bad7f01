"""Baselines: sizes, seeding, scores, strata coverage, k-center radius."""

import itertools

import numpy as np
import pytest

from recrl import coreset


def test_random_and_full():
    a, b = coreset.random_subset(50, 10, seed=1), coreset.random_subset(50, 10, seed=1)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 10 and a.max() < 50
    assert not np.array_equal(a, coreset.random_subset(50, 10, seed=2))
    np.testing.assert_array_equal(coreset.full_data(4), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="budget"):
        coreset.random_subset(5, 6)


def test_top_score_is_el2n_and_grand():
    s = np.array([0.1, 0.9, 0.5, 0.9, 0.2])
    np.testing.assert_array_equal(coreset.grand(s, 3), [1, 2, 3])
    np.testing.assert_array_equal(coreset.el2n(s, 1, seed=0).shape, (1,))
    assert coreset.el2n(s, 1)[0] in (1, 3)
    with pytest.raises(ValueError, match="finite"):
        coreset.grand(np.array([1.0, np.nan]), 1)


def test_ccs_prunes_hardest_and_covers_strata():
    s = np.repeat(np.arange(10.0), 20)  # 10 strata of 20 samples
    out = coreset.ccs(s, 30, prune_hard=0.1, bins=10, seed=0)
    assert len(set(out.tolist())) == 30
    assert np.all(s[out] < 9)  # the 20 hardest (score 9) were pruned
    counts = np.bincount(s[out].astype(int), minlength=10)[:9]
    assert counts.min() >= 3 and counts.max() <= 4  # 30 over 9 strata
    d = coreset.dealrec(s, 30, bins=10, seed=0)
    assert np.bincount(s[d].astype(int), minlength=10).tolist() == [3] * 10


def test_kcenter_is_within_twice_the_optimal_radius():
    x = np.random.default_rng(0).normal(size=(12, 2))
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))

    def radius(s):
        return dist[:, list(s)].min(1).max()

    got = coreset.kcenter_greedy(x, 3, seed=0)
    best = min(radius(s) for s in itertools.combinations(range(12), 3))
    assert best <= radius(got) <= 2 * best + 1e-9


def test_influence_scores_match_finite_differences_of_a_quadratic_risk():
    # least squares with residuals +-1 at theta0: the empirical Fisher is then the exact
    # Hessian, and I_i must equal the first-order rise of the mean loss when a Newton step
    # downweights sample i:  I_i = -(d/de) R(theta0 - e H^-1 g_i)
    rng = np.random.default_rng(0)
    x, theta0 = rng.normal(size=(40, 5)), rng.normal(size=5)
    r0 = rng.choice([-1.0, 1.0], 40)
    y = x @ theta0 - r0

    def risk(t):
        return 0.5 * np.mean((x @ t - y) ** 2)

    g = x * r0[:, None]
    hess = x.T @ x / 40
    eps, want = 1e-6, []
    for i in range(40):
        step = np.linalg.solve(hess, g[i])
        want.append(-(risk(theta0 - eps * step) - risk(theta0 + eps * step)) / (2 * eps))
    got = coreset.influence_scores(g, damping=1e-9)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="finite"):
        coreset.influence_scores(np.full((3, 2), np.nan))


def test_dealrec_with_influence_uses_both_terms():
    g = np.linspace(1.0, 2.0, 100)
    inf = np.zeros(100)
    inf[:10] = 5.0  # the 10 lowest-effort samples become the most influential
    plain, mixed = coreset.dealrec(g, 20, bins=2, seed=0), coreset.dealrec(
        g, 20, influence=inf, bins=2, seed=0)
    assert np.isin(np.arange(10), mixed).sum() == 10  # a stratum of their own
    assert np.isin(np.arange(10), plain).sum() < 10
    with pytest.raises(ValueError, match="differ in shape"):
        coreset.dealrec(g, 20, influence=inf[:5])


def _d2_reference(x, s, n, k, gf, gr):
    """Plain loops over an all-pairs distance matrix (D2-Pruning's two passes)."""
    m = len(s)
    d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(m)] for i in range(m)])
    nbrs = []
    for i in range(m):
        order = sorted((j for j in range(m) if j != i), key=lambda j: (d[i, j], j))
        nbrs.append(order[:k])
    scale = np.median([d[i, j] for i in range(m) for j in nbrs[i]])
    val = [s[i] + sum(np.exp(-gf * d[i, j] / scale) * s[j] for j in nbrs[i])
           for i in range(m)]
    chosen = []
    for _ in range(n):
        i = max((j for j in range(m) if j not in chosen), key=lambda j: (val[j], -j))
        chosen.append(i)
        for j in nbrs[i]:
            val[j] -= np.exp(-gr * d[i, j] / scale) * val[i]
    return sorted(chosen)


def test_d2_pruning_message_passing_by_hand_and_by_loops():
    # 1-D points 0, 1, 3, 10 with difficulty 1, 2, 3, 0.5; k = 1; median 1-NN distance 1.5
    x, s = np.array([[0.0], [1.0], [3.0], [10.0]]), np.array([1.0, 2.0, 3.0, 0.5])
    # forward: s' = [1 + e^{-1/1.5}·2, 2 + e^{-1/1.5}·1, 3 + e^{-2/1.5}·2, 0.5 + e^{-7/1.5}·3]
    e1, e2 = np.exp(-1 / 1.5), np.exp(-2 / 1.5)
    fwd = [1 + 2 * e1, 2 + e1, 3 + 2 * e2, 0.5 + 3 * np.exp(-7 / 1.5)]
    assert int(np.argmax(fwd)) == 2  # first pick: point 3; it lowers its neighbour (point 1)
    after = fwd[1] - e2 * fwd[2]
    second = 0 if fwd[0] > after else 1
    np.testing.assert_array_equal(coreset.d2_pruning(x, s, 2, k=1), sorted([2, second]))
    rng = np.random.default_rng(0)
    x, s = rng.normal(size=(40, 3)), rng.random(40)
    for n, k, gf, gr in ((8, 4, 1.0, 1.0), (15, 6, 0.5, 2.0)):
        got = coreset.d2_pruning(x, s, n, k=k, gamma_forward=gf, gamma_reverse=gr)
        assert got.tolist() == _d2_reference(x, s, n, k, gf, gr)
    hard = coreset.d2_pruning(x, s, 8, k=4, prune_hard=0.25)
    assert np.all(s[hard] < np.sort(s)[-10])  # the 10 hardest were pruned
    with pytest.raises(ValueError, match="matching"):
        coreset.d2_pruning(x[:5], s, 3)
