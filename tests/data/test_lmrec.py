"""LM-recommender samples: windows, chronological split, prompts, click labels, negatives."""

import numpy as np
import pyarrow as pa
import pytest

from recrl.data import lmrec
from recrl.data.lmrec import PAD, SPLITS, LMRecConfig, prepare_lmrec
from recrl.data.movielens import load_movielens
from tests.data import reference


@pytest.fixture(scope="module")
def data(synthetic):
    return prepare_lmrec(synthetic, LMRecConfig(num_val=300, num_test=200))


def _raw(d, s):
    ids, users = d.sequences.item_ids, d.sequences.user_ids
    return sorted((int(users[s.user[k]]), int(s.position[k]),
                   tuple(ids[s.history[k, :s.history_len[k]]].tolist()), int(ids[s.target[k]]))
                  for k in range(len(s.target)))


@pytest.mark.parametrize("max_history,min_history", [(10, 1), (4, 2)])
def test_windows_match_slow_reference(synthetic, max_history, min_history):
    d = prepare_lmrec(synthetic, LMRecConfig(max_history=max_history, min_history=min_history,
                                             num_val=0, num_test=0))
    want = reference.windows_ref(reference.sequences_ref(reference.interactions(synthetic)),
                                 max_history, min_history)
    assert _raw(d, d.splits["train"]) == sorted(want)
    s = d.splits["train"]
    k = np.arange(max_history)[None, :]
    assert (s.history[k >= s.history_len[:, None]] == PAD).all()
    assert (s.history[k < s.history_len[:, None]] >= 0).all()


def test_chronological_split(data):
    sizes = {k: len(data.splits[k].target) for k in SPLITS}
    assert sizes["val"] == 300 and sizes["test"] == 200
    n = len(data.sequences.items) - data.sequences.num_users  # one sample per non-first item
    assert sum(sizes.values()) == n
    tr, va, te = (data.splits[k] for k in SPLITS)
    assert tr.timestamp.max() <= va.timestamp.min() and va.timestamp.max() <= te.timestamp.min()
    for s in (tr, va, te):
        assert (np.diff(s.timestamp) >= 0).all()
    keys = {(int(u), int(p)) for s in (tr, va, te) for u, p in zip(s.user, s.position,
                                                                    strict=True)}
    assert len(keys) == n  # a partition: nothing lost or duplicated


def test_no_target_leaks_into_its_history(data):
    s, seqs = data.splits["test"], data.sequences
    for k in range(len(s.target)):
        h = s.history[k, :s.history_len[k]]
        assert s.target[k] not in h
        seq = seqs.sequence(s.user[k])
        np.testing.assert_array_equal(h, seq[s.position[k] - len(h):s.position[k]])
        assert seq[s.position[k]] == s.target[k]


def test_next_item_text(data):
    ds = lmrec.next_item_dataset(data, "val")
    s = data.splits["val"]
    assert ds.num_rows == 300
    for k in (0, 17, 299):
        titles = [data.titles[i] for i in s.history[k, :s.history_len[k]]]
        assert ds[k]["prompt"] == "The user watched: " + "; ".join(titles) + ". Next:"
        assert ds[k]["answer"] == data.titles[s.target[k]]
        assert ds[k]["history"] == s.history[k].tolist() and ds[k]["target"] == s.target[k]


def test_click_labels(data):
    ds = lmrec.click_dataset(data, "test")
    s = data.splits["test"]
    rows = ds.to_dict()
    np.testing.assert_array_equal(rows["label"], s.rating > 3)
    assert rows["answer"] == ["Yes" if r > 3 else "No" for r in s.rating]
    title = data.titles[s.target[5]]
    assert rows["prompt"][5].endswith(f". Will the user like {title}? Answer:")
    assert 0 < np.mean(rows["label"]) < 1


def test_render_template():
    out = lmrec.render("<{a}|{b}>", a=pa.array(["x", "y"]), b=pa.array(["1", "2"]))
    assert out.to_pylist() == ["<x|1>", "<y|2>"]
    with pytest.raises(ValueError, match="format specs"):
        lmrec.render("{a:>3}", a=pa.array(["x"]))


def test_ranking_candidates(data):
    c = lmrec.ranking_candidates(data, "test", num_negatives=99, seed=3)
    s = data.splits["test"]
    assert c.shape == (200, 100)
    np.testing.assert_array_equal(c[:, 0], s.target)
    for k in range(len(c)):
        seen = set(data.sequences.sequence(s.user[k]).tolist())
        assert len(set(c[k].tolist())) == 100 and not set(c[k, 1:].tolist()) & seen
    np.testing.assert_array_equal(c, lmrec.ranking_candidates(data, "test", seed=3))
    assert not np.array_equal(c, lmrec.ranking_candidates(data, "test", seed=4))


def test_seen_before_mask(data):
    m = lmrec.seen_before_mask(data, "test")
    s = data.splits["test"]
    for k in range(len(s.target)):
        before = set(data.sequences.sequence(s.user[k])[:s.position[k]].tolist())
        before.discard(int(s.target[k]))
        assert set(np.flatnonzero(m[k]).tolist()) == before


def test_split_too_small(synthetic):
    with pytest.raises(ValueError, match="cannot hold"):
        prepare_lmrec(synthetic, LMRecConfig(num_val=10**6))


def test_real_ml1m_samples(ml1m_dir):
    d = prepare_lmrec(load_movielens("ml-1m"))
    assert {k: len(d.splits[k].target) for k in SPLITS} == {
        "train": 1_000_209 - 6040 - 10_000, "val": 5000, "test": 5000}
    ds = lmrec.next_item_dataset(d, "test")
    assert ds[0]["prompt"].startswith("The user watched: ") and ds[0]["answer"].endswith(")")
    assert d.splits["train"].timestamp.max() <= d.splits["test"].timestamp.min()


def test_user_holdout_split_by_a_per_user_loop(synthetic):
    d = prepare_lmrec(synthetic, LMRecConfig(max_history=4, num_val=0, num_test=0))
    s = d.splits["train"]
    out = lmrec.user_holdout_split(s, num_val_users=30, seed=3)
    # independent: a plain loop over users, last window = the one with the largest position
    last = {}
    for k in range(len(s.target)):
        u = int(s.user[k])
        if u not in last or s.position[k] > s.position[last[u]]:
            last[u] = k
    users = set(last)
    val_users = {int(u) for u in out["val"].user}
    test_users = {int(u) for u in out["test"].user}
    assert len(val_users) == 30 and val_users.isdisjoint(test_users)
    assert val_users | test_users == users
    assert len(out["val"].target) == 30 and len(out["test"].target) == len(users) - 30
    for name in ("val", "test"):
        got = {(int(u), int(p)) for u, p in zip(out[name].user, out[name].position,
                                                strict=True)}
        want = {(u, int(s.position[last[u]])) for u in (val_users if name == "val"
                                                        else test_users)}
        assert got == want
    tr = out["train"]
    assert len(tr.target) == len(s.target) - len(users)
    for u in users:  # every training window of a user is earlier than the held-out one
        assert (tr.position[tr.user == u] < s.position[last[u]]).all()
    again = lmrec.user_holdout_split(s, num_val_users=30, seed=3)
    np.testing.assert_array_equal(again["val"].user, out["val"].user)
    other = lmrec.user_holdout_split(s, num_val_users=30, seed=4)
    assert {int(u) for u in other["val"].user} != val_users
    with pytest.raises(ValueError, match="num_val_users"):
        lmrec.user_holdout_split(s, num_val_users=len(users))
