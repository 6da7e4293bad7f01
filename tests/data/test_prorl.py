"""ProRL preprocessing: path mining against a slow reference, splits, unseen targets, stats."""

import time

import numpy as np
import pytest

from recrl.data import prorl
from recrl.data.movielens import from_arrays, load_movielens
from recrl.data.prorl import PAD, SPLITS, ProRLConfig, mine_paths, prepare_prorl
from recrl.data.sequences import build_sequences
from tests.data import reference

SMALL = dict(min_user=5, min_item=5)


def _as_raw(data, samples):
    """``(movielens user, start, history, path + (target,))`` tuples of mined samples."""
    ids, users = data.sequences.item_ids, data.sequences.user_ids
    out = []
    for k in range(len(samples.lengths)):
        path = samples.path[k, :samples.lengths[k]]
        run = ids[path].tolist() + [int(ids[samples.target[k]])]
        out.append((int(users[samples.user[k]]), int(samples.start[k]),
                    tuple(ids[samples.history[k]].tolist()), tuple(run)))
    return out


@pytest.mark.parametrize("long_runs", ["truncate", "split"])
@pytest.mark.parametrize("history,max_len", [(10, 10), (3, 4)])
def test_mining_matches_slow_reference(synthetic, long_runs, history, max_len):
    config = ProRLConfig(**SMALL, history=history, max_len=max_len, long_runs=long_runs)
    data = prepare_prorl(synthetic, config)
    rows = reference.interactions(synthetic)
    keep = reference.kcore_ref([(u, i) for u, i, _, _ in rows], 5, 5)
    seqs = reference.sequences_ref(rows, keep)
    genres = {i: set(g) for i, g in enumerate(synthetic.items["genres"])}
    for split in SPLITS:
        users = set(data.sequences.user_ids[data.splits[split]].tolist())
        # the reference mines whole runs (target included) of up to max_len + 1 items; a
        # sample needs 2 intermediates before its target
        runs = reference.mine_ref({u: s for u, s in seqs.items() if u in users}, genres,
                                  history=history, max_len=max_len + 1, long_runs=long_runs,
                                  ignore={"Drama"})
        want = [r for r in runs if len(r[3]) >= 3]
        assert want and _as_raw(data, data.paths[split]) == want


def test_mining_by_hand():
    # genres: 0 Comedy, 1 Comedy+Drama, 2 Drama (alone), 3 Action, 4 Action+Comedy
    g = [["Comedy"], ["Comedy", "Drama"], ["Drama"], ["Action"], ["Action", "Comedy"]]
    seq = [3, 3, 2, 0, 1, 2, 2, 3, 4, 0, 1, 3]  # positions 0..11; history H = 2
    n = len(seq)
    ml = from_arrays("hand", user=np.zeros(n, int), item=np.array(seq), rating=np.ones(n),
                     timestamp=np.arange(n), titles=list("abcde"), years=np.zeros(5),
                     item_genres=g, user_ids=["u"], item_ids=list("abcde"))
    s = build_sequences(ml)
    masks = ml.genre_masks(ignore=("Drama",))
    # region from position 2: [2] [0 1] [2] [2] [3 4 0 1] [3]: Drama-Drama is no link.
    # A sample is a run of >= 3 items: the intermediates, then the target (not in the path).
    p = mine_paths(s, masks, history=2, max_len=3)
    np.testing.assert_array_equal(p.start, [7])
    np.testing.assert_array_equal(p.lengths, [3])
    np.testing.assert_array_equal(p.path, [[3, 4, 0]])
    np.testing.assert_array_equal(p.target, [1])
    np.testing.assert_array_equal(p.history, [[2, 2]])
    q = mine_paths(s, masks, history=2, max_len=2)  # truncated to [3 4] -> 0
    np.testing.assert_array_equal(q.path, [[3, 4]])
    np.testing.assert_array_equal(q.target, [0])
    r = mine_paths(s, masks, history=2, max_len=2, long_runs="split")  # [3 4 0] + [1] dropped
    np.testing.assert_array_equal(r.start, [7])
    np.testing.assert_array_equal(r.target, [0])
    seq2 = [3, 3, 0, 1, 0, 1, 0, 1]  # one run of 6 items from position 2
    ml2 = from_arrays("hand2", user=np.zeros(8, int), item=np.array(seq2), rating=np.ones(8),
                      timestamp=np.arange(8), titles=list("abcde"), years=np.zeros(5),
                      item_genres=g, user_ids=["u"], item_ids=list("abcde"))
    s2 = build_sequences(ml2)
    masks2 = ml2.genre_masks(ignore=("Drama",))[s2.item_ids]  # compact ids: a b d -> 0 1 2
    m = mine_paths(s2, masks2, history=2, max_len=2, long_runs="split")  # [0 1 | 0] [1 0 | 1]
    np.testing.assert_array_equal(m.start, [2, 5])
    np.testing.assert_array_equal(m.path, [[0, 1], [1, 0]])
    np.testing.assert_array_equal(m.target, [0, 1])
    np.testing.assert_array_equal(m.history, [[2, 2], [1, 0]])


def test_no_mined_path_contains_its_target(synthetic):
    data = prepare_prorl(synthetic, ProRLConfig(**SMALL))
    for split in SPLITS:
        p = data.paths[split]
        assert len(p.lengths) > 0
        assert not np.any(p.path == p.target[:, None]), split


def test_path_invariants(synthetic):
    data = prepare_prorl(synthetic, ProRLConfig(**SMALL))
    s, masks = data.sequences, data.genre_masks
    for split in SPLITS:
        p = data.paths[split]
        assert p.history.shape == (len(p.lengths), 10) and p.path.shape[1] == 10
        assert all(x.dtype == np.int32 for x in p)
        assert p.lengths.min() >= 2 and p.lengths.max() <= 10
        assert (p.start >= 10).all()
        for k in range(len(p.lengths)):
            seq = s.sequence(p.user[k])
            L, st = p.lengths[k], p.start[k]
            np.testing.assert_array_equal(p.history[k], seq[st - 10:st])
            np.testing.assert_array_equal(p.path[k, :L], seq[st:st + L])
            assert p.target[k] == seq[st + L]  # the run's last item, after the path
            assert (p.path[k, L:] == PAD).all()
            run = np.append(p.path[k, :L], p.target[k])
            assert (masks[run[1:]] & masks[run[:-1]]).all()
            assert p.target[k] not in p.history[k]


def test_splits_disjoint_and_seeded(synthetic):
    data = prepare_prorl(synthetic, ProRLConfig(**SMALL, seed=3))
    parts = [set(data.splits[k].tolist()) for k in SPLITS]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(data.sequences.num_users))
    for k in SPLITS:
        assert set(data.paths[k].user.tolist()) <= set(data.splits[k].tolist())
    again = prepare_prorl(synthetic, ProRLConfig(**SMALL, seed=3))
    for k in SPLITS:
        for a, b in zip(data.paths[k], again.paths[k], strict=True):
            np.testing.assert_array_equal(a, b)
    other = prepare_prorl(synthetic, ProRLConfig(**SMALL, seed=4))
    assert not np.array_equal(data.splits["test"], other.splits["test"])


def test_random_unseen_targets(synthetic):
    data = prepare_prorl(synthetic, ProRLConfig(**SMALL))
    u = prorl.random_unseen_targets(data, "test", seed=7)
    p = data.paths["test"]
    np.testing.assert_array_equal(u.history, p.history)
    np.testing.assert_array_equal(u.start, p.start)
    for k in range(len(u.target)):
        assert u.target[k] not in data.sequences.sequence(u.user[k])
    np.testing.assert_array_equal(u.target, prorl.random_unseen_targets(data, "test",
                                                                        seed=7).target)
    assert not np.array_equal(u.target, prorl.random_unseen_targets(data, "test", seed=8).target)


def test_stats_and_cli(synthetic, capsys):
    data = prepare_prorl(synthetic, ProRLConfig(**SMALL))
    st = prorl.prorl_stats(data)
    assert st["interactions"] == sum(v["interactions"] for v in st["splits"].values())
    assert st["users"] == sum(v["users"] for v in st["splits"].values())
    for k in SPLITS:
        assert sum(st["splits"][k]["length_hist"].values()) == st["splits"][k]["paths"]
        assert st["splits"][k]["paths"] == len(data.paths[k].lengths)
    table = prorl.format_stats(st)
    assert "paths" in table and "length 10" in table
    from experiments import prorl_data

    assert prorl_data.stats("synthetic", min_user=5, min_item=5) == 0
    assert "k-core + split + mining" in capsys.readouterr().out
    assert prorl_data.stats("ml-20m") == 1


def test_config_validation():
    with pytest.raises(ValueError, match="long_runs"):
        ProRLConfig(long_runs="chunk")
    with pytest.raises(ValueError):
        ProRLConfig(max_len=1)


def test_real_ml1m_pipeline_time_and_shape(ml1m_dir):
    t0 = time.perf_counter()
    data = prepare_prorl(load_movielens("ml-1m"))
    elapsed = time.perf_counter() - t0
    assert elapsed < 120, f"ML-1M ProRL pipeline took {elapsed:.1f} s"
    st = prorl.prorl_stats(data)
    # k-core leaves every user >= 20 and every item >= 40 interactions
    s = data.sequences
    assert s.lengths.min() >= 20 and np.bincount(s.items).min() >= 40
    for k in SPLITS:
        hist = st["splits"][k]["length_hist"]
        assert max(hist, key=hist.get) == 2  # the paper's mode
    assert st["splits"]["train"]["users"] == round(0.8 * st["users"])
