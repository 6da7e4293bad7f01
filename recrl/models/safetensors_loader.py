"""Loading Hugging Face Llama-family checkpoints (``config.json`` + safetensors + tokenizer).

A directory laid out like ``LlamaForCausalLM`` on the Hub: ``config.json``, ``model.safetensors``
(or shards listed in ``model.safetensors.index.json``), ``tokenizer.json`` and optionally
``tokenizer_config.json``. HF stores ``[out, in]`` matrices and already uses the rotate-half
RoPE layout, so loading only transposes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from recrl.models.config import LlamaConfig
from recrl.models.llama import Llama
from recrl.models.tokenizer import Tokenizer
from recrl.models.weights import model_from_weights

SUPPORTED_TYPES = ("llama", "mistral")

_HF_BLOCK = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm",
    "self_attn.q_proj": "attn.q_proj", "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj", "self_attn.o_proj": "attn.o_proj",
    "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}


def hf_config(config: dict, **overrides) -> LlamaConfig:
    """``LlamaConfig`` from an HF ``config.json`` dict.

    Raises:
      NotImplementedError: features this model does not implement (biases, RoPE scaling,
        sliding-window attention, other architectures).
    """
    mtype = config.get("model_type", "llama")
    if mtype not in SUPPORTED_TYPES:
        raise NotImplementedError(f"model_type {mtype!r} is not supported ({SUPPORTED_TYPES})")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise NotImplementedError("attention/MLP biases are not supported")
    scaling = config.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise NotImplementedError(f"rope_scaling {scaling} is not supported")
    if config.get("sliding_window"):
        raise NotImplementedError("sliding-window attention is not supported")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise NotImplementedError(f"hidden_act {act!r} is not supported (silu only)")
    n_heads = int(config["num_attention_heads"])
    fields = dict(
        vocab_size=int(config["vocab_size"]),
        dim=int(config["hidden_size"]),
        n_layers=int(config["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
        head_dim=int(config.get("head_dim") or config["hidden_size"] // n_heads),
        ffn_dim=int(config["intermediate_size"]),
        rope_base=float(config.get("rope_theta", 10000.0)),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        max_seq_len=int(config.get("max_position_embeddings", 2048)),
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def read_safetensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` (or its shards) as NumPy arrays, HF names/dtypes."""
    try:
        from safetensors import safe_open
    except ImportError as e:
        from recrl._extras import missing

        raise missing("recrl.models.read_safetensors", "lm", e) from e

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors(.index.json) in {directory}")
    out = {}
    for name in files:
        with safe_open(directory / name, framework="np") as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
    return out


def hf_to_weights(tensors: dict[str, np.ndarray], cfg: LlamaConfig) -> dict[str, np.ndarray]:
    """Maps HF ``LlamaForCausalLM`` tensor names to canonical ``Llama`` weights (transposed)."""
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    if layers and max(layers) >= cfg.n_layers:
        raise ValueError(f"the checkpoint has layers 0..{max(layers)} but its config has "
                         f"num_hidden_layers={cfg.n_layers}: refusing to load a truncated "
                         "model (fix config.json or pass n_layers=...)")
    missing = [i for i in range(cfg.n_layers) if i not in layers]
    if missing:
        raise ValueError(f"the config has num_hidden_layers={cfg.n_layers} but the checkpoint "
                         f"has no tensors for layers {missing[:5]}")
    w = {"embed": tensors["model.embed_tokens.weight"], "final_norm": tensors["model.norm.weight"]}
    if not cfg.tie_embeddings:
        head = tensors.get("lm_head.weight")
        if head is None:
            raise ValueError("untied config but no lm_head.weight in the checkpoint")
        w["lm_head"] = head.T
    for i in range(cfg.n_layers):
        for src, dst in _HF_BLOCK.items():
            a = tensors[f"model.layers.{i}.{src}.weight"]
            w[f"layers.{i}.{dst}"] = a if a.ndim == 1 else a.T
    return w


def load_hf_llama(directory: str | os.PathLike, **overrides) -> Llama:
    """Loads an HF Llama-family checkpoint directory as a ``Llama``.

    Args:
      directory: holds ``config.json`` and ``model.safetensors`` (or an index + shards).
      **overrides: config fields to replace (e.g. ``dtype="bfloat16"``, ``max_seq_len=4096``).

    Returns:
      The model; weights are cast to ``param_dtype``.
    """
    directory = Path(directory)
    cfg = hf_config(json.loads((directory / "config.json").read_text()), **overrides)
    return model_from_weights(cfg, hf_to_weights(read_safetensors(directory), cfg))


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def hf_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The ``tokenizer.json`` of an HF checkpoint with its special tokens.

    Special tokens come from ``tokenizer_config.json`` (``bos_token``, ``eos_token``,
    ``pad_token``) or, failing that, the ids in ``config.json``; a default system message is
    read from a ChatML ``chat_template`` when it has one.
    """
    import tokenizers

    directory = Path(directory)
    hf = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    tcfg_path = directory / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text()) if tcfg_path.exists() else {}
    mcfg_path = directory / "config.json"
    mcfg = json.loads(mcfg_path.read_text()) if mcfg_path.exists() else {}

    def resolve(key: str, id_key: str) -> int | None:
        text = _token_text(tcfg.get(key))
        if text is not None and hf.token_to_id(text) is not None:
            return hf.token_to_id(text)
        value = mcfg.get(id_key)
        return int(value[0] if isinstance(value, list) else value) if value is not None else None

    eos = resolve("eos_token", "eos_token_id")
    if eos is None:
        raise ValueError(f"no eos token found in {directory}")
    template = tcfg.get("chat_template") or ""
    found = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template)
    return Tokenizer(hf, bos_id=resolve("bos_token", "bos_token_id"), eos_id=eos,
                     pad_id=resolve("pad_token", "pad_token_id"),
                     default_system=found.group(1) if found else None)
