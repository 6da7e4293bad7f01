"""Log-prob scoring: NumPy reference, padding invariance, shared-prompt prefix reuse."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recrl.models import (
    logprobs,
    logprobs_from_prefix,
    pad_batch,
    prefix_cache,
    score_completions,
    sequence_nll,
    token_logprobs,
)
from tests.models.conftest import make_tiny, ref_kwargs, ref_weights
from tests.models.reference import log_softmax, np_forward, np_token_logprobs

PROMPTS = [[3, 14, 15, 92, 65], [35, 89], [7, 9, 3]]
COMPLETIONS = [[2, 71, 82, 81], [8, 28], [1, 8, 2, 8]]


def _reference(model, prompts, completions):
    """[B, C] reference log-probs of each completion token given prompt + earlier tokens."""
    w, kw = ref_weights(model), ref_kwargs(model.config)
    out = []
    for p, c in zip(prompts, completions, strict=True):
        out.append(np_token_logprobs(w, p + c, **kw)[len(p) - 1:])
    return out


def _check(got, ref, completions):
    for b, (r, c) in enumerate(zip(ref, completions, strict=True)):
        np.testing.assert_allclose(got[b, :len(c)], r, atol=2e-4, rtol=1e-4)
        assert np.all(got[b, len(c):] == 0.0)


def test_logprobs_match_reference_left_and_right_padded_prompts(tiny):
    model, graphdef, state = tiny
    ref = _reference(model, PROMPTS, COMPLETIONS)
    comp, cmask = pad_batch(COMPLETIONS, side="right", pad_id=0)
    for side in ("left", "right"):
        prompt, pmask = pad_batch(PROMPTS, side=side, pad_id=0)
        got = np.asarray(logprobs(graphdef, state, prompt, pmask, comp, cmask))
        _check(got, ref, COMPLETIONS)
    # a padding token id different from 0 changes nothing
    prompt, pmask = pad_batch(PROMPTS, side="left", pad_id=42)
    comp42, _ = pad_batch(COMPLETIONS, side="right", pad_id=42)
    got42 = np.asarray(logprobs(graphdef, state, prompt, pmask, comp42, cmask))
    _check(got42, ref, COMPLETIONS)


def test_temperature_divides_logits(tiny):
    model, graphdef, state = tiny
    prompt, pmask = pad_batch(PROMPTS, side="left")
    comp, cmask = pad_batch(COMPLETIONS, side="right")
    got = np.asarray(logprobs(graphdef, state, prompt, pmask, comp, cmask, 2.0))
    w, kw = ref_weights(model), ref_kwargs(model.config)
    for b, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS, strict=True)):
        lsm = log_softmax(np_forward(w, p + c, **kw) / 2.0)
        ref = lsm[np.arange(len(p) - 1, len(p) + len(c) - 1), c]
        np.testing.assert_allclose(got[b, :len(c)], ref, atol=2e-4, rtol=1e-4)


def test_token_logprobs_and_sequence_nll(tiny):
    model, graphdef, state = tiny
    seqs = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    tokens, mask = pad_batch(seqs, side="right")
    lp = np.asarray(token_logprobs(graphdef, state, tokens, mask))
    w, kw = ref_weights(model), ref_kwargs(model.config)
    for b, s in enumerate(seqs):
        np.testing.assert_allclose(lp[b, 1:len(s)], np_token_logprobs(w, s, **kw),
                                   atol=2e-4, rtol=1e-4)
        assert lp[b, 0] == 0 and np.all(lp[b, len(s):] == 0)
    loss_mask = np.zeros_like(mask)
    for b, p in enumerate(PROMPTS):
        loss_mask[b, len(p):len(p) + len(COMPLETIONS[b])] = True
    nll = np.asarray(sequence_nll(graphdef, state, tokens, mask, loss_mask))
    ref = [-np.mean(r) for r in _reference(model, PROMPTS, COMPLETIONS)]
    np.testing.assert_allclose(nll, ref, atol=2e-4, rtol=1e-4)
    # answer-only head (max_targets = the largest answer, or more): the same values, also
    # for left-padded rows
    for a in (4, 7):
        got = np.asarray(sequence_nll(graphdef, state, tokens, mask, loss_mask, a))
        np.testing.assert_allclose(got, ref, atol=2e-4, rtol=1e-4)
    lt, lm = pad_batch(seqs, side="left")
    lloss = np.zeros_like(lm)
    for b, c in enumerate(COMPLETIONS):
        lloss[b, lt.shape[1] - len(c):] = True
    got = np.asarray(sequence_nll(graphdef, state, lt, lm, lloss, 4))
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=1e-4)


def test_shared_prompt_scoring_equals_repeated_prompt(tiny_tied):
    model, graphdef, state = tiny_tied
    prompt = PROMPTS[0]
    comps = [[2, 71, 82, 81, 5], [8, 28], [60], [1, 8, 2, 8, 4]]
    ref = _reference(model, [prompt] * len(comps), comps)
    comp, cmask = pad_batch(comps, side="right")
    got = np.asarray(score_completions(graphdef, state, jnp.asarray(prompt), comp, cmask))
    _check(got, ref, comps)
    # chunked over completions, and with a padded prompt
    padded = jnp.asarray([0, 0] + prompt)
    pmask = jnp.asarray([False, False] + [True] * len(prompt))
    prefix = prefix_cache(graphdef, state, padded, pmask)
    assert int(prefix.next_position) == len(prompt)
    # the prefix has no batch axis: P x kv_heads x head_dim per block, whatever N is
    cfg = model.config
    assert prefix.k[0].shape == (len(prompt) + 2, cfg.n_kv_heads, cfg.head_dim)
    assert len(prefix.k) == cfg.n_layers and prefix.last_hidden.shape == (cfg.dim,)
    chunked = np.asarray(logprobs_from_prefix(graphdef, state, prefix, comp, cmask, batch_size=3))
    _check(chunked, ref, comps)



def test_chunked_logprobs_and_their_gradient_equal_unchunked():
    model = make_tiny(tied=False, n_layers=1)
    graphdef, state = nnx.split(model)
    prompt, pmask = pad_batch(PROMPTS, side="left")
    comp, cmask = pad_batch(COMPLETIONS, side="right")

    def total(st, batch_size):
        lp = logprobs(graphdef, st, prompt, pmask, comp, cmask, batch_size=batch_size)
        return (lp * jnp.arange(1.0, 5.0)).sum(), lp

    vg = jax.jit(jax.value_and_grad(total, has_aux=True), static_argnums=1)
    (v1, lp1), g1 = vg(state, None)
    (v2, lp2), g2 = vg(state, 1)  # 3 chunks of 1 row
    np.testing.assert_allclose(lp2, lp1, atol=1e-5)
    np.testing.assert_allclose(v2, v1, rtol=1e-5)
    _check(np.asarray(lp2), _reference(model, PROMPTS, COMPLETIONS), COMPLETIONS)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_vocabulary_chunked_normaliser_and_its_gradient(monkeypatch):
    """Scoring never forms [rows, vocab] logits: its normaliser runs over vocabulary slices.
    With 10-column slices of a 103-entry vocabulary (11 slices, the last padded), the
    log-probs equal the NumPy reference and their gradient the one through the full logits."""
    from recrl.models import forward, positions_from_mask, scoring

    monkeypatch.setattr(scoring, "VOCAB_CHUNK", 10)
    seqs = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    tokens, mask = pad_batch(seqs, side="right")
    weights = jnp.asarray(np.random.default_rng(3).normal(size=tokens.shape[1] - 1), jnp.float32)
    for tied in (True, False):
        model = make_tiny(tied=tied, seed=7, vocab_size=103)
        graphdef, state = nnx.split(model)
        ref = _reference(model, PROMPTS, COMPLETIONS)
        comp, cmask = pad_batch(COMPLETIONS, side="right")
        prompt, pmask = pad_batch(PROMPTS, side="left")
        _check(np.asarray(logprobs(graphdef, state, prompt, pmask, comp, cmask)), ref, COMPLETIONS)

        def chunked(st, graphdef=graphdef):
            return (token_logprobs(graphdef, st, tokens, mask)[:, 1:] * weights).sum()

        def full(st, graphdef=graphdef):  # right-padded rows: slot t predicts slot t + 1
            logits, _ = forward(graphdef, st, tokens, positions_from_mask(mask), mask=mask)
            lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
            lp = jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1)[..., 0]
            return (jnp.where(mask[:, 1:], lp, 0.0) * weights).sum()

        (v1, g1), (v2, g2) = jax.value_and_grad(chunked)(state), jax.value_and_grad(full)(state)
        np.testing.assert_allclose(v1, v2, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
