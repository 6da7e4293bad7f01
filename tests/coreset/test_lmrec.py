"""LM recommender pieces: encoding, grad norms vs direct jax.grad, embeddings, metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recrl import models
from recrl.coreset import lmrec
from recrl.models.tokenizers_small import ByteTokenizer, CompactTokenizer


@pytest.fixture(scope="module")
def model_and_batch():
    model = models.create_model(models.tiny_config(), seed=0)
    models.add_lora(model, rank=2, alpha=4, targets=("v_proj",), rngs=nnx.Rngs(0))
    tok = ByteTokenizer()
    batch = lmrec.encode_pairs(tok.encode, ["ab: ", "hello x: ", "q"], ["Yes", "No", "zz"],
                               max_prompt=6, max_answer=2)
    return model, batch


def test_encode_pairs_by_hand(model_and_batch):
    _, (tokens, mask, loss) = model_and_batch
    assert tokens[0, :6].tolist() == list(b"ab: Ye")
    assert tokens[1, :8].tolist() == list(b"lo x: No")  # last 6 prompt bytes, 2 answer
    assert loss[0].tolist()[:6] == [False] * 4 + [True] * 2
    assert mask[2].sum() == 3 and loss[2].sum() == 2


def test_grad_norms_match_direct_gradient(model_and_batch):
    model, (tokens, mask, loss) = model_and_batch
    got = lmrec.grad_norms(model, tokens, mask, loss, batch_size=2, chunk=1, progress=False)
    # nonzero lora_b gradient needs nonzero lora_a (it is): direct single-example grads
    subset = nnx.All(models.LoRAParam, nnx.PathContains("v_proj"), nnx.PathContains("lora_b"),
                     nnx.PathContains(1))
    graphdef, wrt, rest = nnx.split(model, subset, ...)
    one = jax.jit(jax.grad(lambda w, t, m, lm: models.sequence_nll(
        graphdef, (w, rest), t, m, lm)[0]))
    for i in range(3):
        g = one(wrt, tokens[i:i + 1], mask[i:i + 1], loss[i:i + 1])
        want = np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(g)))
        assert got[i] == pytest.approx(want, rel=1e-4)


def test_embeddings_ignore_padding(model_and_batch):
    model, (tokens, mask, _) = model_and_batch
    e = lmrec.embeddings(model, tokens, mask, progress=False)
    n = int(mask[2].sum())
    alone = lmrec.embeddings(model, tokens[2:3, :n], mask[2:3, :n], progress=False)
    np.testing.assert_allclose(e[2], alone[0], atol=1e-5)


def test_finetune_lowers_the_loss(model_and_batch):
    model, (tokens, mask, loss) = model_and_batch
    before = lmrec.answer_loglik(model, tokens, mask, loss)
    losses = lmrec.finetune(model, tokens, mask, loss, steps=15, batch_size=3, lr=1e-2,
                            progress=False)
    assert losses[-1] < losses[0]
    assert lmrec.answer_loglik(model, tokens, mask, loss).sum() > before.sum()


def test_ranking_and_click_metrics_by_hand():
    s = np.array([[5.0, 1, 2, 3, 4, 0, 0], [1.0, 2, 3, 4, 5, 6, 1]])  # ranks 0 and 6 (tie)
    m = lmrec.ranking_metrics(s, ks=(1, 5))
    assert m["HR@1"] == 0.5 and m["HR@5"] == 0.5
    assert m["NDCG@5"] == pytest.approx(0.5 * 1.0)
    s2 = np.array([[1.0, 2, 0], [1.0, 2, 3]])  # ranks 1 and 2
    assert lmrec.ranking_metrics(s2, ks=(3,))["NDCG@3"] == pytest.approx(
        0.5 * (1 / np.log2(3) + 1 / np.log2(4)))
    c = lmrec.click_metrics(np.array([2.0, 0.0, 0.0, -1.0]), np.array([1, 1, 0, 0]))
    assert c["AUC"] == pytest.approx((2 + 0.5 + 1) / 4)
    want = np.mean([np.log1p(np.exp(-2)), np.log(2), np.log(2), np.log1p(np.exp(-1))])
    assert c["logloss"] == pytest.approx(want)


def _fresh_lora_model():
    model = models.create_model(models.tiny_config(), seed=3)
    models.add_lora(model, rank=2, alpha=4, targets=("q_proj", "v_proj"), rngs=nnx.Rngs(1))
    # LoRA B starts at zero; give it values so the adapters change the scores
    for path, v in nnx.to_flat_state(nnx.state(model, models.LoRAParam)):
        if "lora_b" in path:
            v.set_value(0.1 * jax.random.normal(jax.random.key(len(path)), v.shape))
    return model


def test_grad_vectors_row_norms_are_grad_norms(model_and_batch):
    _, (tokens, mask, loss) = model_and_batch
    model = _fresh_lora_model()
    vec = lmrec.grad_vectors(model, tokens, mask, loss, batch_size=2, chunk=1, progress=False)
    norms = lmrec.grad_norms(model, tokens, mask, loss, batch_size=2, chunk=1, progress=False)
    assert vec.shape[0] == 3 and vec.shape[1] > 1
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), norms, rtol=1e-4)


def test_catalogue_scores_equal_pairwise_answer_loglik():
    model = _fresh_lora_model()
    enc = ByteTokenizer().encode
    prompts, titles = ["watched: a; bc. Next:", "x"], ["Up (2009)", "Heat", "Alien (1979)"]
    got = lmrec.catalogue_scores(model, enc, prompts, titles, max_prompt=12, max_answer=8,
                                 progress=False)
    pairs = lmrec.encode_pairs(enc, [p for p in prompts for _ in titles], titles * 2,
                               max_prompt=12, max_answer=8)
    want = lmrec.answer_loglik(model, *pairs).reshape(2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    picked = lmrec.catalogue_scores(model, enc, prompts, titles, np.array([[2, 0], [1, 1]]),
                                    max_prompt=12, max_answer=8, progress=False)
    np.testing.assert_allclose(picked, want[[[0], [1]], [[2, 0], [1, 1]]], rtol=1e-5)


def test_catalogue_metrics_by_hand():
    s = np.array([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.1, 0.0]])
    # row 0: target 2 (0.5) is beaten by items 1 and 3 -> rank 2; excluding item 1 -> rank 1
    # row 1: target 0 is the best -> rank 0
    got = lmrec.catalogue_metrics(s, np.array([2, 0]), ks=(1, 2))
    assert got["HR@1"] == 0.5 and got["HR@2"] == 0.5
    assert got["NDCG@1"] == pytest.approx(0.5)
    ex = np.zeros_like(s, bool)
    ex[0, 1] = True
    got = lmrec.catalogue_metrics(s, np.array([2, 0]), ex, ks=(1, 2))
    assert got["HR@1"] == 0.5 and got["HR@2"] == 1.0
    assert got["NDCG@2"] == pytest.approx((1 / np.log2(3) + 1) / 2)
    ex[1, 0] = True
    with pytest.raises(ValueError, match="never mask the target"):
        lmrec.catalogue_metrics(s, np.array([2, 0]), ex)


def test_compact_tokenizer_renumbers_and_maps_unknowns():
    base = ByteTokenizer().encode
    tok = CompactTokenizer(base, ["ba", "ab"])
    assert tok.encode("ab") == [2, 1] and tok.encode("b") == [1]
    assert tok.unk_id == 3 and tok.vocab_size == 4 and tok.encode("az") == [2, 3]
    with pytest.raises(ValueError, match="non-empty corpus"):
        CompactTokenizer(base, [""])


def test_el2n_scores_by_prefix_forward_passes(model_and_batch):
    model, (tokens, mask, loss) = model_and_batch
    got = lmrec.el2n_scores(model, tokens, mask, loss, batch_size=2)
    graphdef, state = nnx.split(model)

    @jax.jit
    def last_logits(state, prefix):
        m = nnx.merge(graphdef, state)
        t = prefix.shape[1]
        hidden, _ = m(prefix, jnp.arange(t)[None], mask=jnp.ones((1, t), bool))
        return m.logits(hidden[:, -1])

    for i in range(3):
        errs = []
        for t in np.flatnonzero(loss[i]):  # each answer token from its own prefix alone
            z = np.asarray(last_logits(state, jnp.asarray(tokens[i:i + 1, :t])),
                           np.float64)[0]
            p = np.exp(z - z.max())
            p /= p.sum()
            p[tokens[i, t]] -= 1.0
            errs.append(np.linalg.norm(p))
        assert got[i] == pytest.approx(np.mean(errs), rel=1e-4, abs=1e-5)


def test_lora_grad_norms_cover_every_adapter():
    model = models.create_model(models.tiny_config(), seed=0)
    models.add_lora(model, rank=2, alpha=4, targets=("q_proj", "v_proj"), rngs=nnx.Rngs(1))
    t = lmrec.encode_pairs(ByteTokenizer().encode, ["ab: ", "hello: "], ["Yes", "No"],
                           max_prompt=6, max_answer=3)
    got = lmrec.lora_grad_norms(model, *t, batch_size=1, chunk=1, progress=False)
    graphdef, wrt, rest = nnx.split(model, models.LoRAParam, ...)
    assert len(jax.tree.leaves(wrt)) == 2 * 2 * model.config.n_layers  # A and B, q and v
    for i in range(2):
        row = [jnp.asarray(x[i:i + 1]) for x in t]
        g = jax.grad(lambda w, row=row: models.sequence_nll(graphdef, (w, rest), *row)[0])(wrt)
        want = np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(g)))
        assert got[i] == pytest.approx(want, rel=1e-4)
    b_only = lmrec.grad_norms(model, *t, batch_size=2, chunk=1, progress=False)
    assert np.all(got > b_only)  # more than GORACS's single lora_b slice


def test_finetune_early_stopping_keeps_the_best_validation_point():
    model = models.create_model(models.tiny_config(), seed=0)
    models.add_lora(model, rank=2, alpha=4, targets=("q_proj", "v_proj"), rngs=nnx.Rngs(0))
    enc = ByteTokenizer().encode
    train = lmrec.encode_pairs(enc, ["a: "] * 8, ["Yes"] * 8, max_prompt=4, max_answer=3)
    val = lmrec.encode_pairs(enc, ["a: ", "b: "], ["Yes", "No"], max_prompt=4, max_answer=3)
    out = lmrec.finetune_early_stopping(model, train, val, max_steps=40, eval_every=5,
                                        patience=2, batch_size=4, lr=3e-2)
    curve = np.asarray(out["val_curve"])
    best = curve[np.argmin(curve[:, 1])]
    assert out["best_step"] == best[0] and out["steps_run"] == curve[-1, 0] <= 40
    # the model is left at the best point: its validation loss is the curve's minimum
    got = lmrec.mean_answer_nll(model, *val).mean()
    assert got == pytest.approx(best[1], rel=1e-5)
    if out["steps_run"] < 40:  # stopped early: the last `patience` evaluations were no better
        assert np.all(curve[-2:, 1] >= best[1])


class _Killed(Exception):
    pass


def test_early_stopped_finetune_resumes_from_its_last_evaluation(tmp_path, monkeypatch):
    def setup():
        model = models.create_model(models.tiny_config(), seed=0)
        models.add_lora(model, rank=2, alpha=4, targets=("q_proj", "v_proj"),
                        rngs=nnx.Rngs(0))
        return model

    enc = ByteTokenizer().encode
    train = lmrec.encode_pairs(enc, ["a: ", "b: ", "c: "] * 3, ["Yes", "No", "Hm"] * 3,
                               max_prompt=4, max_answer=3)
    val = lmrec.encode_pairs(enc, ["a: ", "b: "], ["Yes", "No"], max_prompt=4, max_answer=3)
    kw = dict(max_steps=12, eval_every=3, patience=10, batch_size=4, lr=3e-2, seed=1)
    ref_model = setup()
    ref = lmrec.finetune_early_stopping(ref_model, train, val, **kw)
    assert ref["steps_run"] == 12 and len(ref["val_curve"]) == 5
    nll, calls = lmrec.mean_answer_nll, []

    def dies_at_the_third_evaluation(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # step 6: steps 1-3 are saved
            raise _Killed
        return nll(*a, **k)

    monkeypatch.setattr(lmrec, "mean_answer_nll", dies_at_the_third_evaluation)
    with pytest.raises(_Killed):
        lmrec.finetune_early_stopping(setup(), train, val, checkpoint_dir=tmp_path, **kw)
    monkeypatch.undo()
    calls.clear()
    monkeypatch.setattr(lmrec, "mean_answer_nll", lambda *a, **k: calls.append(1) or nll(*a, **k))
    resumed_model = setup()
    got = lmrec.finetune_early_stopping(resumed_model, train, val, checkpoint_dir=tmp_path,
                                        **kw)
    assert len(calls) == 3  # evaluations at steps 6, 9, 12 only: steps 1-3 not redone
    assert got == ref
    for a, b in zip(jax.tree.leaves(nnx.state(ref_model)),
                    jax.tree.leaves(nnx.state(resumed_model)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
