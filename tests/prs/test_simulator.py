"""Simulator tests: NumPy reference forwards, causality / padding, one-pass prefix scoring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recrl.prs.simulator import (
    GRU4Rec,
    SASRec,
    SimConfig,
    StepScores,
    build_simulator,
    next_item_logits,
    score_paths,
    sequence_representation,
)

I = 23


def tiny(kind: str, seed: int = 0, max_len: int = 16) -> SASRec | GRU4Rec:
    cfg = SimConfig(kind, num_items=I, max_len=max_len, dim=8, n_heads=2, n_layers=2, ffn_dim=16,
                    dropout=0.5, gru_hidden=12)
    model = build_simulator(cfg, seed=seed)
    # Spread the small default init so that scores and ranks are far from ties.
    emb = model.item_embed.embedding
    emb[...] = emb[...] * 10.0
    return model


def params(model) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))


def np_layernorm(x, p, eps=1e-8):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_sasrec_states(model: SASRec, items: np.ndarray) -> np.ndarray:
    """Eval-mode SASRec on one unpadded sequence, written from the paper's equations."""
    p, cfg = params(model), model.cfg
    n, heads = len(items), cfg.n_heads
    x = p["item_embed"]["embedding"][items + 1] + p["pos_embed"]["embedding"][:n]
    for b in range(cfg.n_layers):
        blk = p["blocks"][b]
        qkv = np_layernorm(x, blk["norm1"]) @ blk["qkv"]["kernel"] + blk["qkv"]["bias"]
        q, k, v = qkv.reshape(n, 3, heads, -1).transpose(1, 2, 0, 3)  # [heads, n, dh] each
        s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
        s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(1, 0, 2).reshape(n, -1)
        x = x + y @ blk["out"]["kernel"] + blk["out"]["bias"]
        f = np_gelu(np_layernorm(x, blk["norm2"]) @ blk["fc1"]["kernel"] + blk["fc1"]["bias"])
        x = x + f @ blk["fc2"]["kernel"] + blk["fc2"]["bias"]
    return np_layernorm(x, p["final_norm"])


def np_gru_states(model: GRU4Rec, items: np.ndarray) -> np.ndarray:
    """Eval-mode GRU4Rec as a Python loop over time (PyTorch GRU equations)."""
    p = params(model)
    sig = lambda z: 1 / (1 + np.exp(-z))
    wi, bi, wh, bh = p["w_i"]["kernel"], p["w_i"]["bias"], p["w_h"]["kernel"], p["w_h"]["bias"]
    hdim = wh.shape[0]
    h, out = np.zeros(hdim), []
    for item in items:
        x = p["item_embed"]["embedding"][item + 1]
        gx, gh = x @ wi + bi, h @ wh + bh
        r = sig(gx[:hdim] + gh[:hdim])
        z = sig(gx[hdim:2 * hdim] + gh[hdim:2 * hdim])
        n = np.tanh(gx[2 * hdim:] + r * gh[2 * hdim:])
        h = (1 - z) * n + z * h
        out.append(h @ p["proj"]["kernel"] + p["proj"]["bias"])
    return np.array(out)


def np_logits(model, items: np.ndarray) -> np.ndarray:
    ref = np_sasrec_states if isinstance(model, SASRec) else np_gru_states
    h = ref(model, np.asarray(items))[-1]
    return h @ params(model)["item_embed"]["embedding"][1:].T


def right_pad(rows: list[np.ndarray], width: int, fill: int = -1) -> np.ndarray:
    return np.array([np.concatenate([r, np.full(width - len(r), fill)]) for r in rows], np.int32)


KINDS = ["sasrec", "gru4rec"]


def test_config_validation():
    with pytest.raises(ValueError, match="kind"):
        SimConfig("bert4rec", num_items=10)
    with pytest.raises(ValueError, match="divisible"):
        SimConfig("sasrec", num_items=10, dim=10, n_heads=3)
    with pytest.raises(ValueError, match="dropout"):
        SimConfig("sasrec", num_items=10, dropout=1.0)
    with pytest.raises(ValueError, match="num_items"):
        SimConfig("gru4rec", num_items=0)
    with pytest.raises(ValueError, match="SASRec needs"):
        SASRec(SimConfig("gru4rec", num_items=10), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind", KINDS)
def test_next_item_logits_matches_numpy_reference(kind):
    model = tiny(kind)
    rng = np.random.default_rng(1)
    lengths = np.array([1, 5, 9, 3])
    rows = [rng.integers(0, I, n) for n in lengths]
    got = next_item_logits(model, right_pad(rows, 9), lengths)
    assert got.shape == (4, I)
    want = np.array([np_logits(model, r) for r in rows])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_prefix_scores_ignore_later_items_and_padding(kind):
    model = tiny(kind)
    rng = np.random.default_rng(2)
    seq = rng.integers(0, I, (3, 12)).astype(np.int32)
    lengths = np.array([4, 7, 12])
    other = rng.integers(0, I, (3, 12)).astype(np.int32)
    other[:, 8:] = -5  # garbage (even invalid ids) after the length is ignored
    mixed = np.where(np.arange(12) < lengths[:, None], seq, other)
    base = next_item_logits(model, seq, lengths)
    np.testing.assert_array_equal(next_item_logits(model, mixed, lengths), base)
    # the same prefixes in a narrower and a wider right-padded array
    for width in (12, 14):
        narrow = right_pad([seq[b, :lengths[b]] for b in range(3)], width, fill=0)
        np.testing.assert_allclose(next_item_logits(model, narrow, lengths), base,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_long_sequences_keep_the_last_max_len_items(kind):
    model = tiny(kind, max_len=6)
    rng = np.random.default_rng(3)
    seq = rng.integers(0, I, (2, 10)).astype(np.int32)
    lengths = np.array([9, 4])
    got = next_item_logits(model, seq, lengths)
    want = [np_logits(model, seq[0, 3:9]), np_logits(model, seq[1, :4])]
    np.testing.assert_allclose(got, np.array(want), rtol=1e-4, atol=1e-4)


def slow_scores(model, history, path, lengths, target):
    """Scores each prefix as its own sequence with next_item_logits (float64 softmax, counts).

    All prefixes go in one right-padded batch (padding invariance is tested above), so the
    reference compiles once.
    """
    B, T = path.shape
    keys = [(b, k) for b in range(B) for k in range(lengths[b] + 1)]
    rows = [np.concatenate([history[b], path[b, :k]]) for b, k in keys]
    n = np.array([len(r) for r in rows])
    seqs = right_pad(rows, n.max())
    s_all = np.asarray(next_item_logits(model, seqs, n), np.float64)
    h_all = np.asarray(sequence_representation(model, seqs, n), np.float64)
    emb = np.asarray(model.item_embeddings(), np.float64)
    logp, rank = np.zeros((B, T + 1)), np.zeros((B, T + 1), int)
    click = np.zeros((B, T))
    for (b, k), s, h in zip(keys, s_all, h_all, strict=True):
        p = np.exp(s - s.max())
        p /= p.sum()
        logp[b, k] = np.log(p[target[b]])
        rank[b, k] = 1 + np.sum(p > p[target[b]])
        if k < lengths[b]:
            click[b, k] = 1 / (1 + np.exp(-h @ emb[path[b, k]]))
    return logp, rank, click


def check_scores(got: StepScores, want, lengths):
    T = got.click.shape[1]
    pre = np.arange(T + 1) <= lengths[:, None]
    item = np.arange(T) < lengths[:, None]
    np.testing.assert_allclose(np.where(pre, got.logp_target, 0), np.where(pre, want[0], 0),
                               atol=2e-5)
    np.testing.assert_array_equal(np.where(pre, got.rank, 0), np.where(pre, want[1], 0))
    np.testing.assert_allclose(np.where(item, got.click, 0), np.where(item, want[2], 0),
                               atol=2e-6)
    for x in got:
        assert np.isfinite(np.asarray(x)).all()


@pytest.mark.parametrize("kind", KINDS)
def test_score_paths_equals_prefix_by_prefix_loop(kind):
    model = tiny(kind)
    rng = np.random.default_rng(4)
    history = rng.integers(0, I, (4, 5)).astype(np.int32)
    lengths = np.array([3, 0, 6, 1], np.int32)
    path = np.where(np.arange(6) < lengths[:, None], rng.integers(0, I, (4, 6)), -1)
    path = path.astype(np.int32)  # -1 padding, as in recrl.data.PathSamples
    target = rng.integers(0, I, 4).astype(np.int32)
    got = score_paths(model, history, path, lengths, target)
    assert got.logp_target.shape == (4, 7) and got.rank.shape == (4, 7)
    assert got.click.shape == (4, 6) and got.rank.dtype == jnp.int32
    check_scores(got, slow_scores(model, history, path, lengths, target), lengths)


@pytest.mark.parametrize("kind", KINDS)
def test_score_paths_truncates_the_oldest_history(kind):
    model = tiny(kind, max_len=8)
    rng = np.random.default_rng(5)
    history = rng.integers(0, I, (2, 6)).astype(np.int32)
    path = rng.integers(0, I, (2, 5)).astype(np.int32)
    lengths, target = np.array([5, 2]), np.array([0, 7])
    got = score_paths(model, history, path, lengths, target)  # H + T = 11 > 8: keep 3 history
    check_scores(got, slow_scores(model, history[:, 3:], path, lengths, target), lengths)


def test_score_paths_under_jit_with_split_model_and_reward_depends_on_path():
    model = tiny("sasrec")
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(6)
    history = rng.integers(0, I, (2, 4)).astype(np.int32)
    path = rng.integers(0, I, (2, 3)).astype(np.int32)
    lengths, target = np.array([3, 3]), np.array([1, 2])
    eager = score_paths(model, history, path, lengths, target)
    jitted = jax.jit(lambda st, *a: score_paths((graphdef, st), *a))(
        state, history, path, lengths, target)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    changed = path.copy()
    changed[:, 1] = (changed[:, 1] + 1) % I
    moved = score_paths(model, history, changed, lengths, target)
    np.testing.assert_array_equal(moved.logp_target[:, :2], eager.logp_target[:, :2])
    assert np.all(np.abs(moved.logp_target[:, 2:] - eager.logp_target[:, 2:]) > 1e-6)
    assert np.all(moved.click[:, 1] != eager.click[:, 1])


def test_dropout_only_with_a_key():
    model = tiny("sasrec")
    tokens = jnp.array([[3, 4, 5, 0]])
    run = jax.jit(lambda m, key: m(tokens, key=key))
    a, b = run(model, None), run(model, None)
    np.testing.assert_array_equal(a, b)
    c = run(model, jax.random.key(0, impl="rbg"))
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(c, run(model, jax.random.key(0, impl="rbg")))


def test_bad_inputs_give_clear_errors():
    model = tiny("sasrec", max_len=8)
    seq, ln = np.array([[1, 2, 3]]), np.array([3])
    with pytest.raises(ValueError, match=r"seq must have shape \[B, S\]"):
        next_item_logits(model, seq[0], ln)
    with pytest.raises(ValueError, match=r"lengths must have shape \[1\]"):
        next_item_logits(model, seq, np.array([3, 3]))
    with pytest.raises(ValueError, match="integer item ids"):
        next_item_logits(model, seq.astype(np.float32), ln)
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 3\]"):
        next_item_logits(model, seq, np.array([0]))
    with pytest.raises(ValueError, match=rf"item id {I} at index \(0, 1\) is outside \[0, {I}\)"):
        next_item_logits(model, np.array([[1, I, 3]]), ln)
    with pytest.raises(ValueError, match="item id -1"):
        next_item_logits(model, np.array([[1, -1, 3]]), ln)
    next_item_logits(model, np.array([[1, 2, -1]]), np.array([2]))  # after the length: fine
    with pytest.raises(TypeError, match="SASRec / GRU4Rec"):
        next_item_logits("model", seq, ln)

    hist, path, pl, tgt = np.array([[1, 2]]), np.array([[3, -1]]), np.array([1]), np.array([4])
    score_paths(model, hist, path, pl, tgt)
    with pytest.raises(ValueError, match=r"path must have shape \[1, S\]"):
        score_paths(model, hist, np.array([[3], [4]]), pl, tgt)
    with pytest.raises(ValueError, match=r"target must have shape \[1\]"):
        score_paths(model, hist, path, pl, np.array(4))
    with pytest.raises(ValueError, match=r"lengths must be in \[0, 2\]"):
        score_paths(model, hist, path, np.array([3]), tgt)
    with pytest.raises(ValueError, match="path: item id -1"):
        score_paths(model, hist, path, np.array([2]), tgt)
    with pytest.raises(ValueError, match="history: item id"):
        score_paths(model, np.array([[1, I + 4]]), path, pl, tgt)
    with pytest.raises(ValueError, match="target: item id"):
        score_paths(model, hist, path, pl, np.array([I]))
    with pytest.raises(ValueError, match="T < max_len"):
        score_paths(model, hist, np.zeros((1, 8), np.int32), pl, tgt)


def test_config_saved_with_the_former_size_names_is_rejected_clearly():
    saved = dict(kind="sasrec", num_items=10, max_len=12, hidden=8, heads=2, blocks=1, ffn=16,
                 dropout=0.1, gru_hidden=8)
    with pytest.raises(ValueError, match=r"x/simulator.json uses the former size names "
                                         r"\['blocks', 'ffn', 'heads', 'hidden'\].*retrain it"):
        SimConfig.from_dict(saved, "x/simulator.json")
    new = dict(saved, dim=8, n_heads=2, n_layers=1, ffn_dim=16)
    for k in ("hidden", "heads", "blocks", "ffn"):
        del new[k]
    assert SimConfig.from_dict(new) == SimConfig(**new)
