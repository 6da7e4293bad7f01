"""Simulator training tests: windows, leave-one-out metrics vs slow counts, learning, I/O."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from recrl.data.prorl import ProRLConfig, ProRLData
from recrl.data.sequences import Sequences
from recrl.prs.simulator import SimConfig, build_simulator, next_item_logits, score_paths
from recrl.prs.train_simulator import (
    evaluate,
    leave_one_out,
    load_simulator,
    ranking_metrics,
    save_simulator,
    train_simulator,
    training_windows,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def markov_data(num_users=200, num_items=40, length=24, p_next=0.7, seed=0,
                lengths=None) -> ProRLData:
    """Users follow ``i -> i + 1 (mod I)`` with probability ``p_next``, else a Zipf draw."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, num_items + 1)
    pop /= pop.sum()
    lengths = np.full(num_users, length) if lengths is None else np.asarray(lengths)
    seqs = []
    for n in lengths:
        s = [rng.choice(num_items, p=pop)]
        for _ in range(n - 1):
            nxt = (s[-1] + 1) % num_items
            s.append(nxt if rng.random() < p_next else rng.choice(num_items, p=pop))
        seqs.append(s)
    items = np.concatenate(seqs).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    sq = Sequences(offsets, items, np.arange(len(items)), np.ones(len(items), np.float32),
                   np.arange(len(lengths), dtype=np.int32), np.arange(num_items, dtype=np.int32))
    perm = rng.permutation(len(lengths))
    cut = [int(0.8 * len(perm)), int(0.9 * len(perm))]
    splits = dict(zip(("train", "val", "test"), map(np.sort, np.split(perm, cut)), strict=True))
    return ProRLData(sq, np.zeros(num_items, np.uint64), np.array([""] * num_items), splits,
                     {}, ProRLConfig())


def tiny_cfg(kind, num_items, **kw):
    base = dict(max_len=10, dim=16, n_heads=2, n_layers=1, ffn_dim=32, dropout=0.1, gru_hidden=16)
    return SimConfig(kind, num_items=num_items, **{**base, **kw})


def test_training_windows_match_a_python_loop():
    data = markov_data(num_users=6, lengths=[2, 5, 11, 12, 1, 25], seed=1)
    seqs, L = data.sequences, 4
    x, y, n = training_windows(seqs, np.arange(6), L)
    want = []  # from each user's end backwards: inputs s[a:e], labels s[a+1:e+1]
    for u in range(6):
        s, e = seqs.sequence(u), seqs.lengths[u] - 1
        while e > 0:
            a = max(e - L, 0)
            want.append((s[a:e], s[a + 1:e + 1]))
            e -= L
    assert len(n) == len(want) and x.shape == y.shape == (len(want), L)
    for xi, yi, ni, (wx, wy) in zip(x, y, n, want, strict=True):
        assert ni == len(wx)
        np.testing.assert_array_equal(xi, np.pad(wx, (0, L - ni), constant_values=-1))
        np.testing.assert_array_equal(yi, np.pad(wy, (0, L - ni), constant_values=-1))
    assert n.sum() == sum(max(m - 1, 0) for m in seqs.lengths)  # every label exactly once


def test_leave_one_out_is_the_last_item():
    data = markov_data(num_users=5, lengths=[3, 1, 15, 4, 2], seed=2)
    seqs = data.sequences
    x, n, t, users = leave_one_out(seqs, np.arange(5), 6)
    np.testing.assert_array_equal(users, [0, 2, 3, 4])
    for xi, ni, ti, u in zip(x, n, t, users, strict=True):
        s = seqs.sequence(u)
        assert ti == s[-1]
        np.testing.assert_array_equal(xi[:ni], s[:-1][-6:])
        assert (xi[ni:] == -1).all()


def test_ranking_metrics_by_hand():
    m = ranking_metrics(np.array([1, 2, 11, 5]), k=10)
    assert m["hr@10"] == pytest.approx(3 / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(6)) / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4)
    assert m["n"] == 4


@pytest.mark.parametrize("exclude_history", [False, True])
def test_evaluate_matches_explicit_rank_counting(exclude_history):
    data = markov_data(num_users=40, num_items=30, length=14, seed=3)
    seqs = data.sequences
    model = build_simulator(tiny_cfg("gru4rec", 30), seed=1)
    users = data.splits["train"][:13]
    got = evaluate(model, seqs, users, exclude_history=exclude_history, batch_size=4)
    ranks = []
    for u in users:
        s = seqs.sequence(u)
        ctx = s[:-1][-10:]
        logits = np.asarray(next_item_logits(model, ctx[None], np.array([len(ctx)]))[0])
        competitors = np.ones(30, bool)
        if exclude_history:
            competitors[s[:-1]] = False
        competitors[s[-1]] = False
        ranks.append(1 + np.sum(competitors & (logits > logits[s[-1]])))
    ranks = np.array(ranks)
    assert got["n"] == len(users)
    assert got["hr@10"] == pytest.approx(np.mean(ranks <= 10))
    assert got["ndcg@10"] == pytest.approx(np.mean((ranks <= 10) / np.log2(1 + ranks)))
    assert got["mrr@10"] == pytest.approx(np.mean((ranks <= 10) / ranks))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = markov_data()
    ckpt = tmp_path_factory.mktemp("sim")
    cfg = tiny_cfg("sasrec", data.sequences.num_items)
    model, metrics = train_simulator(data, cfg, epochs=5, batch_size=64, seed=0, patience=5,
                                     log_every=2, checkpoint_dir=ckpt, lr=1e-2)
    return data, model, metrics, ckpt


def popularity_ndcg(data: ProRLData, split: str) -> float:
    """NDCG@10 of ranking all items by their train-user interaction count."""
    seqs = data.sequences
    counts = np.zeros(seqs.num_items)
    for u in data.splits["train"]:
        np.add.at(counts, seqs.sequence(u), 1)
    scores = []
    for u in data.splits[split]:
        target = seqs.sequence(u)[-1]
        rank = 1 + np.sum(counts > counts[target])
        scores.append(1 / np.log2(1 + rank) if rank <= 10 else 0.0)
    return float(np.mean(scores))


def test_training_lowers_loss_and_beats_popularity(trained):
    data, model, metrics, _ = trained
    losses = [h["loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0] - 0.5, losses
    for split in ("val", "test"):
        pop = popularity_ndcg(data, split)
        assert metrics[split]["ndcg@10"] > pop + 0.15, (split, metrics[split], pop)
    # the returned model is the best-validation one, and its metrics are reproducible
    assert metrics["val"]["ndcg@10"] == pytest.approx(max(h["val_ndcg@10"]
                                                          for h in metrics["history"]))
    again = evaluate(model, data.sequences, data.splits["test"])
    assert again == pytest.approx(metrics["test"])
    assert metrics["history"][metrics["best_epoch"] - 1]["val_ndcg@10"] == pytest.approx(
        metrics["val"]["ndcg@10"])


def test_checkpoint_round_trip_gives_identical_scores(trained, tmp_path):
    data, model, metrics, ckpt = trained
    rng = np.random.default_rng(0)
    I = data.sequences.num_items
    args = (rng.integers(0, I, (3, 6)), rng.integers(0, I, (3, 4)), np.array([4, 2, 0]),
            rng.integers(0, I, 3))
    want = score_paths(model, *args)
    for directory in (ckpt, tmp_path / "again"):
        if directory != ckpt:
            save_simulator(directory, model, model.cfg)
            save_simulator(directory, model, model.cfg)  # overwriting keeps one loadable copy
        loaded = load_simulator(directory)
        assert type(loaded) is type(model) and loaded.cfg == model.cfg
        for a, b in zip(want, score_paths(loaded, *args), strict=True):
            np.testing.assert_array_equal(a, b)
    saved = json.loads((ckpt / "simulator.json").read_text())
    assert saved["metrics"]["test"] == pytest.approx(metrics["test"])


def test_gru4rec_round_trip(tmp_path):
    model = build_simulator(tiny_cfg("gru4rec", 17), seed=5)
    save_simulator(tmp_path, model, model.cfg)
    loaded = load_simulator(tmp_path)
    seq, n = np.array([[1, 2, 3, 16]]), np.array([4])
    np.testing.assert_array_equal(next_item_logits(loaded, seq, n), next_item_logits(model, seq, n))


def test_early_stopping_with_patience(tmp_path):
    data = markov_data(num_users=30, num_items=20, length=12, seed=4)
    cfg = tiny_cfg("gru4rec", 20)
    _, metrics = train_simulator(data, cfg, epochs=6, batch_size=32, seed=0, patience=1,
                                 log_every=1, lr=0.0)  # no learning: flat val NDCG
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] == 1


def test_errors(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match="no simulator checkpoint in .*nothing"):
        load_simulator(missing)
    assert not missing.exists()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "simulator.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="params/"):
        load_simulator(tmp_path / "half")
    data = markov_data(num_users=10, num_items=20, length=12)
    with pytest.raises(ValueError, match="num_items = 21 but the data has 20"):
        train_simulator(data, tiny_cfg("sasrec", 21), epochs=1, batch_size=4, seed=0,
                        patience=1, log_every=1)
    with pytest.raises(ValueError, match=">= 1"):
        train_simulator(data, tiny_cfg("sasrec", 20), epochs=0, batch_size=4, seed=0,
                        patience=1, log_every=1)
    model = build_simulator(tiny_cfg("sasrec", 20))
    with pytest.raises(ValueError, match="does not match"):
        save_simulator(tmp_path / "x", model, tiny_cfg("sasrec", 20, dim=8))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_cli_on_ml1m(kind, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train_simulator", "--dataset=ml-1m",
         f"--kind={kind}", "--epochs=1", f"--out={tmp_path}"], cwd=REPO,
        capture_output=True, text=True, check=True,
        env={**os.environ, "TQDM_DISABLE": "1",
             "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])})
    assert "NDCG@10" in out.stdout
    model = load_simulator(tmp_path)
    assert model.cfg.kind == kind


def test_data_parallel_training_equals_one_device():
    # without dropout the 4-device step (batch split over the mesh) is the 1-device step
    from flax import nnx

    from recrl import parallel

    data = markov_data(num_users=40, num_items=20, length=12, seed=5)
    cfg = tiny_cfg("sasrec", 20, dropout=0.0)
    kw = dict(epochs=2, batch_size=32, seed=0, patience=5, lr=1e-2)
    m1, r1 = train_simulator(data, cfg, **kw)
    m4, r4 = train_simulator(data, cfg, mesh=parallel.data_mesh(4), **kw)
    np.testing.assert_allclose([h["loss"] for h in r4["history"]],
                               [h["loss"] for h in r1["history"]], rtol=1e-5)
    # atol: Adam divides by sqrt(v), so a gradient entry that is ~0 up to summation order
    # moves its parameter by a noise-signed amount (seen: 1.7e-5 on 2 of 48 entries)
    for a, b in zip(jax.tree.leaves(nnx.state(m4)), jax.tree.leaves(nnx.state(m1)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    assert r1["history"][0]["loss"] != r1["history"][1]["loss"]  # it trained
    with pytest.raises(ValueError, match="batch_size=30 is not a multiple of the 4 devices"):
        train_simulator(data, cfg, mesh=parallel.data_mesh(4), **{**kw, "batch_size": 30})
