"""Forward pass: independent NumPy reference, KV cache, batching, RoPE layouts, bf16, config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recrl.models import (
    LlamaConfig,
    forward,
    init_cache,
    model_from_weights,
    model_weights,
    smollm2_135m_config,
)
from recrl.models.weights import interleaved_to_half
from tests.models.conftest import make_tiny, rand_tokens, ref_kwargs, ref_weights
from tests.models.reference import np_forward, rope, to_interleaved


def _full(graphdef, state, tokens):
    b, t = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    return forward(graphdef, state, jnp.asarray(tokens), pos)[0]


@pytest.mark.parametrize("fixture", ["tiny", "tiny_tied"])
def test_forward_matches_numpy_reference(fixture, request):
    model, graphdef, state = request.getfixturevalue(fixture)
    tokens = rand_tokens(0, (2, 11))
    logits = np.asarray(_full(graphdef, state, tokens))
    ref_w = ref_weights(model)
    for b in range(2):
        ref = np_forward(ref_w, tokens[b], **ref_kwargs(model.config))
        np.testing.assert_allclose(logits[b], ref, atol=2e-4, rtol=1e-4)
    assert np.std(logits) > 0.5  # the test model is far from uniform


def test_rope_is_relative():
    # <RoPE(q, m), RoPE(k, n)> depends on m - n only (reference implementation, both layouts).
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(1, 1, 8)), rng.normal(size=(1, 1, 8))
    for layout in ("half", "interleaved"):
        dots = [float((rope(q, np.array([m]), 100.0, layout) *
                       rope(k, np.array([m - 3]), 100.0, layout)).sum()) for m in (3, 7, 20)]
        np.testing.assert_allclose(dots, dots[0], rtol=1e-10)


def test_interleaved_permutation_matches_reference_layout(tiny):
    # Weights stored in the interleaved (GGUF) layout, run by the reference with interleaved
    # RoPE, equal the JAX model after interleaved_to_half.
    model, graphdef, state = tiny
    cfg = model.config
    w = ref_weights(model)
    for lw in w["layers"]:
        for name, heads in (("wq", cfg.n_heads), ("wk", cfg.n_kv_heads)):
            half = lw[name]
            lw[name] = to_interleaved(half, heads)
            assert not np.array_equal(lw[name], half)
            np.testing.assert_array_equal(interleaved_to_half(lw[name], heads), half)
    tokens = rand_tokens(1, (1, 9))
    ref = np_forward(w, tokens[0], rope_layout="interleaved", **ref_kwargs(cfg))
    np.testing.assert_allclose(np.asarray(_full(graphdef, state, tokens))[0], ref,
                               atol=2e-4, rtol=1e-4)


def test_kv_cache_decoding_equals_full_recomputation(tiny):
    model, graphdef, state = tiny
    tokens = rand_tokens(2, (2, 8))
    full = np.asarray(_full(graphdef, state, tokens))
    cache = init_cache(model.config, 2, 11)
    outs = []
    # prefill 4 tokens, then one token at a time
    for lo, hi in [(0, 4), (4, 5), (5, 6), (6, 7), (7, 8)]:
        pos = jnp.broadcast_to(jnp.arange(lo, hi), (2, hi - lo))
        logits, cache = forward(graphdef, state, jnp.asarray(tokens[:, lo:hi]), pos, cache)
        outs.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5, rtol=1e-5)
    assert int(cache.index) == 8 and cache.valid[:, :8].all() and not cache.valid[:, 8:].any()


def test_batched_equals_unbatched(tiny):
    _, graphdef, state = tiny
    tokens = rand_tokens(3, (2, 8))
    batched = np.asarray(_full(graphdef, state, tokens))
    for b in range(2):
        single = np.asarray(_full(graphdef, state, tokens[b:b + 1]))[0]
        np.testing.assert_allclose(batched[b], single, atol=1e-5, rtol=1e-5)


def test_left_padding_with_mask_matches_unpadded(tiny):
    model, graphdef, state = tiny
    seq = rand_tokens(4, (1, 5))
    padded = np.concatenate([np.full((1, 3), 5, np.int32), seq], 1)
    mask = np.array([[False] * 3 + [True] * 5])
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    padded, mask, pos = (np.repeat(a, 2, 0) for a in (padded, mask, pos))  # reuse (2, 8) shapes
    got = forward(graphdef, state, jnp.asarray(padded), pos, mask=jnp.asarray(mask))[0]
    ref = np_forward(ref_weights(model), seq[0], **ref_kwargs(model.config))
    np.testing.assert_allclose(np.asarray(got)[0, 3:], ref, atol=2e-4, rtol=1e-4)


def test_bf16_close_to_fp32(tiny):
    model, _, _ = tiny
    cfg16 = model.config.replace(dtype="bfloat16", param_dtype="bfloat16")
    m16 = model_from_weights(cfg16, model_weights(model))
    g16, s16 = nnx.split(m16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(s16))
    tokens = rand_tokens(5, (2, 8))
    ref = np.asarray(_full(*nnx.split(model), tokens))
    got = np.asarray(_full(g16, s16, tokens))
    assert got.dtype == np.float32
    lsm = lambda z: z - jax.scipy.special.logsumexp(z, axis=-1, keepdims=True)
    err = np.abs(np.asarray(lsm(got)) - np.asarray(lsm(ref)))
    print("bf16 max abs log-prob error", err.max(), "scale", np.abs(np.asarray(lsm(ref))).max())
    assert err.max() < 0.05 * np.abs(np.asarray(lsm(ref))).max()


def test_config_validation_and_sizes():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        LlamaConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="divisible"):
        LlamaConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError, match="even"):
        LlamaConfig(dim=12, n_heads=4, n_kv_heads=2)
    with pytest.raises(ValueError, match="dtype"):
        LlamaConfig(dtype="float64")
    with pytest.raises(ValueError, match="positive"):
        LlamaConfig(n_layers=0)
    assert LlamaConfig(dim=64, n_heads=4).head_dim == 16
    # SmolLM2-135M has 134,515,008 parameters (embedding 49152*576 + 30 blocks + final norm)
    assert smollm2_135m_config().n_params == 134_515_008
    cfg = make_tiny().config
    assert LlamaConfig(**cfg.to_dict()) == cfg
