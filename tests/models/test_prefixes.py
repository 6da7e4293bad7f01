"""Shared-prefix batches: sampling and scoring with U prefixes gathered into the rows' caches
equal the plain functions on the concatenated, unpadded prompts."""

import jax
import jax.numpy as jnp
import numpy as np

from recrl.models import (
    SamplingConfig,
    logprobs,
    logprobs_with_prefixes,
    pad_batch,
    sample,
    sample_prefix_groups,
    sample_with_prefixes,
)

PREFIXES = [[5, 6, 7, 8, 9], [11, 12], [40, 41, 42]]
ROWS = [(0, [20, 21]), (1, [22]), (-1, [1, 23, 24, 25]), (2, [26, 27]), (0, [28])]
# (prefix, own prompt); -1: a bare row (no prefix)


def _inputs():
    pt, pm = pad_batch(PREFIXES, side="left", length=6)
    qt, qm = pad_batch([q for _, q in ROWS], side="left", length=4)
    idx = jnp.array([i for i, _ in ROWS])
    return jnp.asarray(pt), jnp.asarray(pm), idx, jnp.asarray(qt), jnp.asarray(qm)


def test_sampling_with_prefixes_equals_full_prompts(tiny):
    _, graphdef, state = tiny
    cfg = SamplingConfig(max_new_tokens=5, temperature=1.0)
    out = sample_with_prefixes(graphdef, state, *_inputs(), jax.random.key(3), config=cfg)
    # the plain sampler on the same rows (row b uses fold_in(key, b) in both)
    fulls, fm = pad_batch([(PREFIXES[i] if i >= 0 else []) + q for i, q in ROWS], side="left")
    ref = sample(graphdef, state, jnp.asarray(fulls), jnp.asarray(fm), jax.random.key(3),
                 config=cfg)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=2e-5)
    np.testing.assert_array_equal(out.lengths, ref.lengths)


def test_scoring_with_prefixes_equals_logprobs_and_gradient(tiny):
    _, graphdef, state = tiny
    pt, pm, idx, qt, qm = _inputs()
    comp, cm = pad_batch([[30, 31, 32], [33], [34, 35], [36, 37, 38], [39]], side="right",
                         length=4)
    comp, cm = jnp.asarray(comp), jnp.asarray(cm)
    fulls, fm = pad_batch([(PREFIXES[i] if i >= 0 else []) + q for i, q in ROWS], side="left")
    fulls, fm = jnp.asarray(fulls), jnp.asarray(fm)
    got = logprobs_with_prefixes(graphdef, state, pt, pm, idx, qt, qm, comp, cm, 0.7)
    ref = logprobs(graphdef, state, fulls, fm, comp, cm, 0.7)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert np.all(np.asarray(got)[~np.asarray(cm)] == 0)
    f_got = lambda s: jnp.sum(logprobs_with_prefixes(graphdef, s, pt, pm, idx, qt, qm, comp, cm))
    f_ref = lambda s: jnp.sum(logprobs(graphdef, s, fulls, fm, comp, cm))
    g_got, g_ref = jax.grad(f_got)(state), jax.grad(f_ref)(state)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3)


def test_prefix_groups_equal_full_prompts(tiny):
    _, graphdef, state = tiny
    pre, pre_m = pad_batch([[5, 6, 7, 8, 9], [11, 12], []], side="left", length=6)  # 3rd: none
    own = [[[20, 21], [22]], [[23, 24, 25], [26]], [[1, 27], [1, 28, 29]]]
    pt = np.stack([pad_batch(g, side="left", length=4)[0] for g in own])
    pm = np.stack([pad_batch(g, side="left", length=4)[1] for g in own])
    args = (jnp.asarray(pre), jnp.asarray(pre_m), jnp.asarray(pt), jnp.asarray(pm))
    greedy = SamplingConfig(max_new_tokens=5, temperature=0.0)
    out = sample_prefix_groups(graphdef, state, *args, jax.random.key(0), config=greedy)
    prefixes = [[5, 6, 7, 8, 9], [11, 12], []]
    fulls = [prefixes[u] + q for u in range(3) for q in own[u]]
    ft, fm = pad_batch(fulls, side="left")
    ref = sample(graphdef, state, jnp.asarray(ft), jnp.asarray(fm), jax.random.key(0),
                 config=greedy)
    np.testing.assert_array_equal(out.tokens.reshape(6, -1), ref.tokens)
    np.testing.assert_allclose(out.logprobs.reshape(6, -1), ref.logprobs, atol=2e-5)
    # sampled rows: their log-probs are those of the full prompt
    cfg = SamplingConfig(max_new_tokens=5, temperature=0.8)
    out = sample_prefix_groups(graphdef, state, *args, jax.random.key(1), config=cfg)
    toks = out.tokens.reshape(6, -1)
    mask = jnp.arange(5)[None] < out.lengths.reshape(6)[:, None]
    lp = logprobs(graphdef, state, jnp.asarray(ft), jnp.asarray(fm), toks, mask, 0.8)
    np.testing.assert_allclose(out.logprobs.reshape(6, -1), lp, atol=2e-5)
