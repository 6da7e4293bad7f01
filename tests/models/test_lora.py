"""LoRA adapters, per-sample gradients and parameter checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recrl.checkpoint import Checkpointer
from recrl.models import (
    LoRAParam,
    add_lora,
    config_from_meta,
    create_model,
    flatten_grads,
    forward,
    merge_lora,
    model_weights,
    nll_per_sample_grads,
    pad_batch,
    per_sample_grads,
    restore_model,
    save_model,
    sequence_nll,
    split_lora,
)
from tests.models.conftest import make_tiny, rand_tokens, ref_kwargs, ref_weights
from tests.models.reference import np_forward

SEQS = [[3, 14, 15, 92, 65, 35], [89, 79, 32], [38, 46, 26, 43], [7, 9, 1, 2, 3, 4]]
ANSWER_FROM = [3, 1, 2, 4]  # loss on tokens from this index on


def _batch():
    tokens, mask = pad_batch(SEQS, side="right")
    loss_mask = mask & (np.arange(tokens.shape[1])[None] >= np.array(ANSWER_FROM)[:, None])
    return tokens, mask, loss_mask


def _lora_model(seed=0, b_scale=0.0, n_layers=2):
    model = make_tiny(tied=False, seed=seed, n_layers=n_layers)
    n = add_lora(model, rank=2, alpha=4.0, targets=("q_proj", "v_proj", "down_proj"),
                 rngs=nnx.Rngs(seed))
    if b_scale:
        rng = np.random.default_rng(seed)
        for _, var in nnx.iter_graph(model):
            if isinstance(var, LoRAParam) and not np.any(np.asarray(var[...])):
                var[...] = jnp.asarray(b_scale * rng.standard_normal(var.shape), jnp.float32)
    return model, n


def _logits(model, tokens):
    graphdef, state = nnx.split(model)
    pos = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return np.asarray(forward(graphdef, state, jnp.asarray(tokens), pos)[0])


def test_zero_b_equals_base_and_parameter_count():
    base = make_tiny(tied=False)
    model, n = _lora_model()
    cfg = model.config
    per_layer = 2 * (cfg.dim + cfg.n_heads * cfg.head_dim) + 2 * (cfg.dim + cfg.n_kv_heads * 8) \
        + 2 * (cfg.ffn_dim + cfg.dim)
    assert n == cfg.n_layers * per_layer
    _, lora, rest = split_lora(model)
    assert sum(x.size for x in jax.tree.leaves(lora)) == n
    assert {path[-1] for path, _ in nnx.to_flat_state(lora)} == {"lora_a", "lora_b"}
    assert not any(path[-1].startswith("lora") for path, _ in nnx.to_flat_state(rest))
    tokens = rand_tokens(0, (2, 8))
    np.testing.assert_array_equal(_logits(model, tokens), _logits(base, tokens))


def test_lora_forward_matches_reference_with_merged_weights_and_merge_lora():
    model, _ = _lora_model(b_scale=0.3)
    tokens = rand_tokens(1, (2, 8))
    got = _logits(model, tokens)
    # reference: W_eff = W + (alpha / r) A B, in [out, in] form
    w = ref_weights(model)
    for i, blk in enumerate(model.layers):
        for lin, key in ((blk.attn.q_proj, "wq"), (blk.attn.v_proj, "wv"),
                         (blk.mlp.down_proj, "w_down")):
            delta = 2.0 * np.asarray(lin.lora_a[...]) @ np.asarray(lin.lora_b[...])
            w["layers"][i][key] = w["layers"][i][key] + delta.T
    for b in range(2):
        ref = np_forward(w, tokens[b], **ref_kwargs(model.config))
        np.testing.assert_allclose(got[b], ref, atol=2e-4, rtol=1e-4)
    assert np.abs(got - _logits(make_tiny(tied=False), tokens)).max() > 1e-2  # B != 0 matters
    assert merge_lora(model) == 3 * model.config.n_layers
    assert not jax.tree.leaves(nnx.state(model, LoRAParam))
    np.testing.assert_allclose(_logits(model, tokens), got, atol=1e-4, rtol=1e-4)


def test_training_lora_only_leaves_base_unchanged_and_lowers_loss():
    model, _ = _lora_model()
    tokens, mask, loss_mask = _batch()
    g, lora, base = split_lora(model)
    loss_and_grad = jax.jit(jax.value_and_grad(
        lambda lo, ba: sequence_nll(g, (lo, ba), tokens, mask, loss_mask).mean()))
    before, _ = loss_and_grad(lora, base)
    for _ in range(5):
        _, grad = loss_and_grad(lora, base)
        lora = jax.tree.map(lambda p, d: p - 0.5 * d, lora, grad)
    assert float(loss_and_grad(lora, base)[0]) < float(before) - 0.05
    merged = nnx.merge(g, lora, base)
    for k, v in model_weights(merged).items():
        np.testing.assert_array_equal(v, model_weights(model)[k])


def test_per_sample_grads_equal_a_loop_of_single_sample_grads():
    model, _ = _lora_model(b_scale=0.1, n_layers=1)  # one block keeps compile times short
    tokens, mask, loss_mask = _batch()
    g, lora, base = split_lora(model)
    grads = nll_per_sample_grads(g, lora, base, tokens, mask, loss_mask, chunk_size=2)
    single = jax.jit(jax.grad(lambda lo, ba, t, m, lm: sequence_nll(g, (lo, ba), t, m, lm)[0]))
    feats = np.asarray(flatten_grads(grads))
    assert feats.shape == (4, sum(x.size for x in jax.tree.leaves(lora)))
    for i in range(len(SEQS)):
        ref = single(lora, base, tokens[i:i + 1], mask[i:i + 1], loss_mask[i:i + 1])
        ref_flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ref)])
        np.testing.assert_allclose(feats[i], ref_flat, atol=1e-6, rtol=1e-4)
    assert np.all(np.linalg.norm(feats, axis=1) > 0)


def test_per_sample_grad_norms_on_a_parameter_subset():
    # GORACS's choice: only the last block's v_proj lora_b.
    model, _ = _lora_model(b_scale=0.1, n_layers=1)
    tokens, mask, loss_mask = _batch()
    subset = nnx.All(LoRAParam, nnx.PathContains("v_proj"), nnx.PathContains("lora_b"),
                     nnx.PathContains(model.config.n_layers - 1))
    g, wrt, rest = nnx.split(model, subset, ...)
    assert [x.shape for x in jax.tree.leaves(wrt)] == [(2, model.config.n_kv_heads * 8)]
    norms = nll_per_sample_grads(g, wrt, rest, tokens, mask, loss_mask, chunk_size=4,
                                 norms_only=True)
    gl, lora, base = split_lora(model)
    full = nll_per_sample_grads(gl, lora, base, tokens, mask, loss_mask, chunk_size=2)
    last = full["layers"][model.config.n_layers - 1]["attn"]["v_proj"]["lora_b"]
    ref = np.linalg.norm(np.asarray(last[...]).reshape(4, -1), axis=1)
    np.testing.assert_allclose(norms, ref, rtol=1e-5)
    # the generic helper on a toy loss (3 examples in chunks of 2: a remainder chunk):
    # grad of (w . x)^2 is 2 (w . x) x
    w = jnp.asarray([1.0, -2.0])
    xs = jnp.asarray([[1.0, 0.0], [0.5, 1.0], [2.0, 2.0]])
    got = per_sample_grads(lambda w, x: jnp.dot(w, x) ** 2, w, xs, chunk_size=2)
    np.testing.assert_allclose(got, 2 * (xs @ w)[:, None] * xs, rtol=1e-6)


def test_add_lora_rejects_bad_arguments():
    model = make_tiny()
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        add_lora(model, rank=2, alpha=1.0, targets=("qproj",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rank"):
        add_lora(model, rank=0, alpha=1.0, rngs=nnx.Rngs(0))
    add_lora(model, rank=2, alpha=1.0, layers=[-1], rngs=nnx.Rngs(0))
    assert model.layers[0].attn.q_proj.lora_a is None
    assert model.layers[-1].attn.q_proj.lora_a is not None
    with pytest.raises(ValueError, match="already present"):
        add_lora(model, rank=2, alpha=1.0, layers=[-1], rngs=nnx.Rngs(0))


def test_checkpoint_round_trip_with_lora(tmp_path):
    model, _ = _lora_model(b_scale=0.2)
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        save_model(ckpt, 7, model, meta={"note": "x"})
    fresh = create_model(model.config, seed=123)
    add_lora(fresh, rank=2, alpha=4.0, targets=("q_proj", "v_proj", "down_proj"),
             rngs=nnx.Rngs(9))
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        meta = restore_model(ckpt, fresh)
    assert meta["note"] == "x" and config_from_meta(meta) == model.config
    for (p1, v1), (p2, v2) in zip(nnx.iter_graph(model), nnx.iter_graph(fresh), strict=True):
        assert p1 == p2
        if isinstance(v1, nnx.Variable):
            np.testing.assert_array_equal(np.asarray(v1[...]), np.asarray(v2[...]))
