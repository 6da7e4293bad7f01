"""Loaders on tiny checkpoints the tests write themselves: HF safetensors and GGUF, tokenizers."""

import json

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from flax import nnx
from safetensors.numpy import save_file
from tokenizers import decoders, models, pre_tokenizers

from recrl.models import (
    Tokenizer,
    forward,
    gguf_config,
    hf_config,
    hf_tokenizer,
    load_gguf,
    load_hf_llama,
)
from tests.models.reference import np_forward, to_interleaved

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ALPHABET = sorted(pre_tokenizers.ByteLevel.alphabet())
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("o", "r")]
VOCAB = {t: i for i, t in enumerate(SPECIALS + ALPHABET + ["".join(m) for m in MERGES])}
SIZES = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn=64)
TEXTS = ["hello world 123", "Hello, wor1d!\n<|im_start|>user", "héllo 2024 ☃"]


def _test_tokenizer():
    """Byte-level BPE built directly with the tokenizers API (digits split individually)."""
    tok = tokenizers.Tokenizer(models.BPE(vocab=VOCAB, merges=MERGES))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def _random_hf_weights(seed, tied):
    rng = np.random.default_rng(seed)
    d, h, kvh, hd, f = (SIZES[k] for k in ("dim", "n_heads", "n_kv_heads", "head_dim", "ffn"))
    v = len(VOCAB)
    mat = lambda *s: (0.3 * rng.standard_normal(s)).astype(np.float32)
    norm = lambda: (1 + 0.3 * rng.standard_normal(d)).astype(np.float32)
    t = {"model.embed_tokens.weight": mat(v, d), "model.norm.weight": norm()}
    if not tied:
        t["lm_head.weight"] = mat(v, d)
    for i in range(SIZES["n_layers"]):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
              p + "self_attn.q_proj.weight": mat(h * hd, d),
              p + "self_attn.k_proj.weight": mat(kvh * hd, d),
              p + "self_attn.v_proj.weight": mat(kvh * hd, d),
              p + "self_attn.o_proj.weight": mat(d, h * hd),
              p + "mlp.gate_proj.weight": mat(f, d), p + "mlp.up_proj.weight": mat(f, d),
              p + "mlp.down_proj.weight": mat(d, f)}
    return t


def _reference_weights(t, tied, qk=lambda w, heads: w):
    layers = []
    for i in range(SIZES["n_layers"]):
        p = f"model.layers.{i}."
        layers.append(dict(
            attn_norm=t[p + "input_layernorm.weight"],
            mlp_norm=t[p + "post_attention_layernorm.weight"],
            wq=qk(t[p + "self_attn.q_proj.weight"], SIZES["n_heads"]),
            wk=qk(t[p + "self_attn.k_proj.weight"], SIZES["n_kv_heads"]),
            wv=t[p + "self_attn.v_proj.weight"], wo=t[p + "self_attn.o_proj.weight"],
            w_gate=t[p + "mlp.gate_proj.weight"], w_up=t[p + "mlp.up_proj.weight"],
            w_down=t[p + "mlp.down_proj.weight"]))
    return {"embed": t["model.embed_tokens.weight"], "norm": t["model.norm.weight"],
            "head": None if tied else t["lm_head.weight"], "layers": layers}


def _hf_config(tied):
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "vocab_size": len(VOCAB), "hidden_size": SIZES["dim"],
            "intermediate_size": SIZES["ffn"], "num_hidden_layers": SIZES["n_layers"],
            "num_attention_heads": SIZES["n_heads"], "num_key_value_heads": SIZES["n_kv_heads"],
            "rope_theta": 300.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": tied,
            "max_position_embeddings": 128, "hidden_act": "silu", "bos_token_id": 1,
            "eos_token_id": 2, "rope_scaling": None, "attention_bias": False}


def _jax_logits(model, tokens):
    g, s = nnx.split(model)
    tokens = jnp.asarray(tokens)[None]
    return np.asarray(forward(g, s, tokens, jnp.arange(tokens.shape[1])[None])[0][0])


@pytest.mark.parametrize("tied,sharded", [(False, False), (True, True)])
def test_hf_safetensors_checkpoint(tmp_path, tied, sharded):
    tensors = _random_hf_weights(0, tied)
    if sharded:
        names = sorted(tensors)
        halves = {"model-00001-of-00002.safetensors": names[::2],
                  "model-00002-of-00002.safetensors": names[1::2]}
        for fname, keys in halves.items():
            save_file({k: tensors[k] for k in keys}, tmp_path / fname)
        index = {"weight_map": {k: f for f, ks in halves.items() for k in ks}}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(tied)))
    _test_tokenizer().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "bos_token": {"content": "<|im_start|>"},
         "pad_token": "<|endoftext|>",
         "chat_template": "<|im_start|>system\nBe brief.<|im_end|>\n{{...}}"}))

    model = load_hf_llama(tmp_path)
    assert model.config.tie_embeddings == tied and model.config.rope_base == 300.0
    tokens = [5, 70, 263, 1, 99, 3, 40, 41]
    ref = np_forward(_reference_weights(tensors, tied), tokens, n_heads=4, n_kv_heads=2,
                     rope_base=300.0, eps=1e-6)
    np.testing.assert_allclose(_jax_logits(model, tokens), ref, atol=2e-4, rtol=1e-4)

    tok = hf_tokenizer(tmp_path)
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (2, 1, 0)
    assert tok.default_system == "Be brief."
    for text in TEXTS:
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text


def test_hf_config_rejects_unsupported_features():
    for change in ({"model_type": "qwen2"}, {"attention_bias": True},
                   {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
                   {"hidden_act": "gelu"}):
        with pytest.raises(NotImplementedError):
            hf_config({**_hf_config(False), **change})
    cfg = hf_config(_hf_config(False), dtype="bfloat16")
    assert cfg.dtype == "bfloat16" and cfg.head_dim == 8


def _write_gguf(path, tensors):
    """A llama GGUF as llama.cpp writes it: interleaved q/k rows, Q8_0 embedding, Q4_1 blocks."""
    q8, q41 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(SIZES["n_layers"])
    w.add_context_length(128)
    w.add_embedding_length(SIZES["dim"])
    w.add_feed_forward_length(SIZES["ffn"])
    w.add_head_count(SIZES["n_heads"])
    w.add_head_count_kv(SIZES["n_kv_heads"])
    w.add_rope_freq_base(300.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(SIZES["head_dim"])
    w.add_vocab_size(len(VOCAB))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(list(VOCAB))
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(VOCAB) - len(SPECIALS)))
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% if x %}<|im_start|>system\nYou are tiny.<|im_end|>\n{% endif %}")
    stored = {}

    def put(name, arr, qtype=None):
        if qtype is None:
            w.add_tensor(name, arr)
            stored[name] = arr
        else:
            q = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
            stored[name] = gguf.quants.dequantize(q, qtype).reshape(arr.shape)

    put("token_embd.weight", tensors["model.embed_tokens.weight"], q8)
    put("output_norm.weight", tensors["model.norm.weight"])
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(SIZES["n_layers"]):
        for g_name, hf_name in names.items():
            arr = tensors[f"model.layers.{i}.{hf_name}.weight"]
            if g_name in ("attn_q", "attn_k"):
                arr = to_interleaved(arr, SIZES["n_heads" if g_name == "attn_q" else "n_kv_heads"])
            put(f"blk.{i}.{g_name}.weight", arr, None if arr.ndim == 1 else q41)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def test_gguf_checkpoint_with_interleaved_rope_and_quantised_blocks(tmp_path):
    tensors = _random_hf_weights(1, tied=True)
    path = tmp_path / "tiny.gguf"
    stored = _write_gguf(path, tensors)
    cfg = gguf_config(path)
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.vocab_size) == (
        32, 2, 4, 2, 64, len(VOCAB))
    assert cfg.tie_embeddings and cfg.rope_base == 300.0 and cfg.norm_eps == 1e-5
    # reference: the dequantised GGUF arrays as stored, run with interleaved RoPE
    layers = []
    for i in range(SIZES["n_layers"]):
        s = lambda n, i=i: stored[f"blk.{i}.{n}.weight"]
        layers.append(dict(attn_norm=s("attn_norm"), mlp_norm=s("ffn_norm"), wq=s("attn_q"),
                           wk=s("attn_k"), wv=s("attn_v"), wo=s("attn_output"),
                           w_gate=s("ffn_gate"), w_up=s("ffn_up"), w_down=s("ffn_down")))
    ref_w = {"embed": stored["token_embd.weight"], "norm": stored["output_norm.weight"],
             "head": None, "layers": layers}
    tokens = [5, 70, 263, 1, 99, 3, 40, 41]
    ref = np_forward(ref_w, tokens, n_heads=4, n_kv_heads=2, rope_base=300.0, eps=1e-5,
                     rope_layout="interleaved")
    np.testing.assert_allclose(_jax_logits(load_gguf(path), tokens), ref, atol=2e-4, rtol=1e-4)

    tok = Tokenizer.from_gguf(path)
    ref_tok = _test_tokenizer()
    assert (tok.bos_id, tok.eos_id, tok.default_system) == (1, 2, "You are tiny.")
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref_tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.encode("123") == [VOCAB["1"], VOCAB["2"], VOCAB["3"]]
    assert tok.encode("hello") == [VOCAB["hell"], VOCAB["o"]]
    assert tok.encode("<|im_end|>") == [2]
    chat = tok.chat([{"role": "user", "content": "hi"}])
    assert chat == ("<|im_start|>system\nYou are tiny.<|im_end|>\n"
                    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.chat([{"role": "system", "content": "S"}], add_generation_prompt=False) == (
        "<|im_start|>system\nS<|im_end|>\n")
