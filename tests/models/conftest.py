"""Fixtures for recrl.models tests: tiny random Llama models with non-trivial weights."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recrl.models import LlamaConfig, create_model, model_weights
from tests.models.reference import reference_weights_from_canonical

TINY = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=48,
            rope_base=500.0, norm_eps=1e-5, init_std=0.3, max_seq_len=64)


def randomize_norms(model, seed=1):
    """Norm weights 1 + 0.3 N(0, 1) so the test sees them (they start at exactly 1)."""
    rng = np.random.default_rng(seed)
    norms = [model.final_norm] + [n for b in model.layers for n in (b.attn_norm, b.mlp_norm)]
    for norm in norms:
        w = norm.weight[...]
        norm.weight[...] = jnp.asarray(1.0 + 0.3 * rng.normal(size=w.shape), w.dtype)


def make_tiny(tied=True, seed=0, **changes):
    cfg = LlamaConfig(**{**TINY, "tie_embeddings": tied, **changes})
    model = create_model(cfg, seed=seed)
    randomize_norms(model, seed + 1)
    return model


def ref_kwargs(cfg):
    return dict(n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, rope_base=cfg.rope_base,
                eps=cfg.norm_eps)


def ref_weights(model):
    return reference_weights_from_canonical(model_weights(model), model.config.n_layers)


@pytest.fixture(scope="session")
def tiny():
    """(model, graphdef, state) of an untied tiny model."""
    model = make_tiny(tied=False)
    graphdef, state = nnx.split(model)
    return model, graphdef, state


@pytest.fixture(scope="session")
def tiny_tied():
    model = make_tiny(tied=True, seed=5)
    graphdef, state = nnx.split(model)
    return model, graphdef, state


def rand_tokens(seed, shape, vocab=TINY["vocab_size"]):
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


def as_jnp(*xs):
    return tuple(jnp.asarray(x) for x in xs)
