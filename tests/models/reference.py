"""An independent float64 NumPy Llama forward, written from the architecture's formulas.

Weights use the Hugging Face / GGUF convention: matrices ``[out, in]`` (``y = W x``), names

    embed [V, d], norm [d], head [V, d] or None (tied),
    layers[i] = dict(attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down)

``rope="half"`` pairs dimensions ``(i, i + D/2)`` of each head (HF), ``rope="interleaved"``
pairs ``(2i, 2i + 1)`` (llama.cpp / GGUF, original Meta layout). Nothing here imports
``recrl.models``.
"""

from __future__ import annotations

import numpy as np


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, base, layout):
    """x [T, H, D]; rotates each pair by angle pos * base^(-2i/D)."""
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = positions[:, None].astype(np.float64) * inv  # [T, D/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if layout == "half":
        a, b = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = b * c + a * s
    return out


def silu(x):
    return x / (1.0 + np.exp(-x))


def np_forward(w, tokens, *, n_heads, n_kv_heads, rope_base, eps, rope_layout="half",
               positions=None):
    """Logits ``[T, V]`` of one unpadded sequence (causal attention over all of it)."""
    tokens = np.asarray(tokens)
    t = len(tokens)
    positions = np.arange(t) if positions is None else np.asarray(positions)
    f = lambda a: np.asarray(a, np.float64)
    x = f(w["embed"])[tokens]
    causal = np.tril(np.ones((t, t), bool))
    group = n_heads // n_kv_heads
    for lw in w["layers"]:
        h = rms_norm(x, f(lw["attn_norm"]), eps)
        q = (h @ f(lw["wq"]).T).reshape(t, n_heads, -1)
        k = (h @ f(lw["wk"]).T).reshape(t, n_kv_heads, -1)
        v = (h @ f(lw["wv"]).T).reshape(t, n_kv_heads, -1)
        d = q.shape[-1]
        q = rope(q, positions, rope_base, rope_layout)
        k = rope(k, positions, rope_base, rope_layout)
        heads = []
        for j in range(n_heads):
            kv = j // group
            s = q[:, j] @ k[:, kv].T / np.sqrt(d)
            s = np.where(causal, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            heads.append(p @ v[:, kv])
        x = x + np.concatenate(heads, axis=-1) @ f(lw["wo"]).T
        h = rms_norm(x, f(lw["mlp_norm"]), eps)
        x = x + (silu(h @ f(lw["w_gate"]).T) * (h @ f(lw["w_up"]).T)) @ f(lw["w_down"]).T
    x = rms_norm(x, f(w["norm"]), eps)
    head = f(w["embed"]) if w.get("head") is None else f(w["head"])
    return x @ head.T


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_token_logprobs(w, tokens, **kw):
    """``[T-1]``: log p(tokens[t] | tokens[:t]) for t >= 1."""
    lp = log_softmax(np_forward(w, tokens, **kw))
    return lp[np.arange(len(tokens) - 1), np.asarray(tokens)[1:]]


def to_interleaved(w_half, n_heads):
    """Inverse of the HF permutation: rotate-half q/k rows -> interleaved rows (test-side)."""
    out_dim = w_half.shape[0]
    hd = out_dim // n_heads
    res = np.empty_like(w_half)
    for h in range(n_heads):
        blk = w_half[h * hd:(h + 1) * hd]
        res[h * hd:(h + 1) * hd][0::2] = blk[: hd // 2]
        res[h * hd:(h + 1) * hd][1::2] = blk[hd // 2:]
    return res


def reference_weights_from_canonical(canon, n_layers):
    """Turns ``recrl.models.model_weights`` output ([in, out] kernels) into [out, in] form."""
    w = {"embed": canon["embed"], "norm": canon["final_norm"],
         "head": canon["lm_head"].T if "lm_head" in canon else None, "layers": []}
    for i in range(n_layers):
        p = f"layers.{i}."
        w["layers"].append(dict(
            attn_norm=canon[p + "attn_norm"], mlp_norm=canon[p + "mlp_norm"],
            wq=canon[p + "attn.q_proj"].T, wk=canon[p + "attn.k_proj"].T,
            wv=canon[p + "attn.v_proj"].T, wo=canon[p + "attn.o_proj"].T,
            w_gate=canon[p + "mlp.gate_proj"].T, w_up=canon[p + "mlp.up_proj"].T,
            w_down=canon[p + "mlp.down_proj"].T,
        ))
    return w
