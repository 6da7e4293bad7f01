"""Building a ``Llama`` from named weight arrays (shared by the GGUF and safetensors loaders).

Canonical names (kernels ``[in, out]``, rotate-half RoPE layout for q/k)::

    embed                       [vocab, dim]
    layers.{i}.attn_norm        [dim]
    layers.{i}.attn.{q,k,v,o}_proj
    layers.{i}.mlp_norm         [dim]
    layers.{i}.mlp.{gate,up,down}_proj
    final_norm                  [dim]
    lm_head                     [dim, vocab]   (untied models only)
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from recrl.models.config import LlamaConfig
from recrl.models.llama import Llama


def interleaved_to_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorders the output rows of a q/k weight ``[n_heads·head_dim, in]`` from llama.cpp's
    interleaved RoPE pairs ``(2i, 2i+1)`` to the rotate-half pairs ``(i, i + head_dim/2)``.

    Within each head, new row ``j`` is old row ``2j`` for ``j < head_dim/2`` and old row
    ``2(j - head_dim/2) + 1`` otherwise (evens first, then odds).
    """
    out_dim = w.shape[0]
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _variables(model: Llama) -> dict[str, nnx.Variable]:
    cfg = model.config
    out: dict[str, nnx.Variable] = {"embed": model.embed, "final_norm": model.final_norm.weight}
    if not cfg.tie_embeddings:
        out["lm_head"] = model.lm_head.kernel
    for i, blk in enumerate(model.layers):
        out[f"layers.{i}.attn_norm"] = blk.attn_norm.weight
        out[f"layers.{i}.mlp_norm"] = blk.mlp_norm.weight
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"layers.{i}.attn.{name}"] = getattr(blk.attn, name).kernel
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"layers.{i}.mlp.{name}"] = getattr(blk.mlp, name).kernel
    return out


def model_from_weights(cfg: LlamaConfig, weights: Mapping[str, np.ndarray]) -> Llama:
    """A ``Llama`` whose parameters are ``weights`` (cast to ``cfg.param_dtype``).

    No random initialisation happens: the module is built abstractly (``nnx.eval_shape``) and
    every parameter is assigned from ``weights``.

    Args:
      cfg: model configuration.
      weights: canonical name -> array (see the module docstring).

    Returns:
      The model.

    Raises:
      ValueError: a weight is missing, unexpected or has the wrong shape.
    """
    model = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    variables = _variables(model)
    missing = sorted(set(variables) - set(weights))
    extra = sorted(set(weights) - set(variables))
    if missing or extra:
        raise ValueError(f"weights do not match the config: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}")
    for name, var in variables.items():
        arr = np.asarray(weights[name])
        if arr.shape != tuple(var.shape):
            raise ValueError(f"{name}: expected shape {tuple(var.shape)}, got {arr.shape}")
        var.set_value(jnp.asarray(arr, dtype=cfg.jnp_param_dtype))
    return model


def model_weights(model: Llama) -> dict[str, np.ndarray]:
    """The model's base parameters as float32 NumPy arrays under canonical names."""
    return {k: np.asarray(v[...], np.float32) for k, v in _variables(model).items()}
