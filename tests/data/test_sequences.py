"""k-core, chronological sequences, user splits, unseen-item sampling."""

import dataclasses
import itertools
from collections import Counter

import numpy as np
import pytest

from recrl.data.movielens import from_arrays
from recrl.data.sequences import build_sequences, kcore_mask, sample_unseen, split_users
from tests.data import reference


@pytest.mark.parametrize("min_user,min_item", [(0, 0), (20, 10), (30, 15), (50, 10), (40, 20)])
def test_kcore_matches_slow_loop(synthetic, min_user, min_item):
    rows = reference.interactions(synthetic)
    pairs = [(u, i) for u, i, _, _ in rows]
    want = reference.kcore_ref(pairs, min_user, min_item)
    got = kcore_mask(synthetic.column("user"), synthetic.column("item"),
                     min_user=min_user, min_item=min_item)
    assert set(np.flatnonzero(got).tolist()) == want
    if min_user:
        assert len(want) < len(pairs)  # the thresholds bite ((40, 20) empties it all)
    # fixed point: every remaining user / item meets its threshold
    kept = [pairs[k] for k in want]
    assert all(c >= min_user for c in Counter(u for u, _ in kept).values())
    assert all(c >= min_item for c in Counter(i for _, i in kept).values())


def test_kcore_cascade_by_hand():
    # user 2 has 1 interaction -> removed -> item 2 drops to 1 -> removed -> user 1 drops
    # to 1 -> removed; users 0 and 3 and items 0, 1 remain (2 each).
    users = np.array([0, 0, 1, 1, 2, 3, 3])
    items = np.array([0, 1, 1, 2, 2, 0, 1])
    keep = kcore_mask(users, items, min_user=2, min_item=2)
    np.testing.assert_array_equal(keep, [1, 1, 0, 0, 0, 1, 1])


def test_sequences_chronological_with_stable_ties():
    # user 7: timestamps 5, 3, 3, 1 in file order -> 1, then the two 3s in file order, then 5
    ml = from_arrays(
        "ties", user=np.array([1, 1, 1, 1, 0]), item=np.array([0, 1, 2, 3, 2]),
        rating=np.array([1, 2, 3, 4, 5]), timestamp=np.array([5, 3, 3, 1, 0]),
        titles=list("abcd"), years=np.zeros(4), item_genres=[[]] * 4,
        user_ids=["u0", "u7"], item_ids=list("abcd"))
    s = build_sequences(ml)
    np.testing.assert_array_equal(s.offsets, [0, 1, 5])
    np.testing.assert_array_equal(s.sequence(1), [3, 1, 2, 0])
    np.testing.assert_array_equal(s.timestamps[1:], [1, 3, 3, 5])
    np.testing.assert_array_equal(s.ratings[1:], [4, 2, 3, 1])
    np.testing.assert_array_equal(s.position(), [0, 0, 1, 2, 3])


def test_sequences_match_reference_after_kcore(synthetic):
    s = build_sequences(synthetic, min_user=30, min_item=25)
    rows = reference.interactions(synthetic)
    keep = reference.kcore_ref([(u, i) for u, i, _, _ in rows], 30, 25)
    want = reference.sequences_ref(rows, keep)
    assert sorted(want) == s.user_ids.tolist()
    for r, u in enumerate(s.user_ids):
        assert s.item_ids[s.sequence(r)].tolist() == want[u]
    assert np.all(np.diff(s.item_ids) > 0) and s.num_items == len({rows[k][1] for k in keep})


def test_split_users_disjoint_sizes_and_seeded():
    parts = split_users(1003, seed=5)
    assert [len(p) for p in parts] == [802, 101, 100]  # round(802.4), round(902.7) - 802
    assert sorted(np.concatenate(parts).tolist()) == list(range(1003))
    again = split_users(1003, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not np.array_equal(parts[1], split_users(1003, seed=6)[1])
    with pytest.raises(ValueError):
        split_users(10, (-1, 1, 1))


def test_sample_unseen_valid_and_seeded(synthetic):
    s = build_sequences(synthetic)
    users = np.repeat(np.arange(s.num_users), 3)
    neg = sample_unseen(s, users, 50, seed=1)
    assert neg.shape == (len(users), 50) and neg.dtype == np.int32
    for row, u in zip(neg, users, strict=True):
        assert len(set(row.tolist())) == 50
        assert not set(row.tolist()) & set(s.sequence(u).tolist())
    np.testing.assert_array_equal(neg, sample_unseen(s, users, 50, seed=1))
    assert not np.array_equal(neg, sample_unseen(s, users, 50, seed=2))
    with pytest.raises(ValueError, match="unseen items"):
        sample_unseen(s, users, s.num_items, seed=0)


def test_sample_unseen_uniform_without_replacement():
    # one user who saw items 0 and 1 of 6 (sequence cut to 2): pairs from {2, 3, 4, 5}
    # must be uniform (1/6 each)
    ml = from_arrays("u", user=np.zeros(6, int), item=np.arange(6), rating=np.ones(6),
                     timestamp=np.arange(6), titles=list("abcdef"), years=np.zeros(6),
                     item_genres=[[]] * 6, user_ids=["u"], item_ids=list("abcdef"))
    s = build_sequences(ml)
    s = dataclasses.replace(s, offsets=np.array([0, 2]), items=s.items[:2])  # saw 0 and 1
    n = 60_000
    draws = sample_unseen(s, np.zeros(n, int), 2, seed=0)
    assert draws.min() >= 2
    counts = Counter(tuple(sorted(r)) for r in draws.tolist())
    assert set(counts) == set(itertools.combinations(range(2, 6), 2))
    freq = np.array([counts[k] for k in sorted(counts)]) / n
    np.testing.assert_allclose(freq, 1 / 6, atol=4 * np.sqrt(1 / 6 * 5 / 6 / n))
