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
