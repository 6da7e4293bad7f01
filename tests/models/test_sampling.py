"""Sampling: greedy vs NumPy recomputation, stop tokens, keys, prefix groups, distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recrl.models import SamplingConfig, logprobs, pad_batch, sample, sample_group
from recrl.models.sampling import choose_tokens, top_p_filter
from tests.models.conftest import ref_kwargs, ref_weights
from tests.models.reference import log_softmax, np_forward

PROMPTS = [[3, 14, 15, 92, 65], [35, 89]]


def _greedy_reference(model, prompt, n):
    w, kw = ref_weights(model), ref_kwargs(model.config)
    seq, toks, lps = list(prompt), [], []
    for _ in range(n):
        lsm = log_softmax(np_forward(w, seq, **kw)[-1])
        tok = int(np.argmax(lsm))
        toks.append(tok)
        lps.append(lsm[tok])
        seq.append(tok)
    return toks, lps


@pytest.fixture(scope="module")
def greedy_ref(tiny):
    return [_greedy_reference(tiny[0], p, 6) for p in PROMPTS]


def test_greedy_sampling_equals_numpy_recomputation(tiny, greedy_ref):
    _, graphdef, state = tiny
    prompt, pmask = pad_batch(PROMPTS, side="left")
    out = sample(graphdef, state, prompt, pmask, jax.random.key(0),
                 config=SamplingConfig(max_new_tokens=6, temperature=0.0))
    for b, (toks, lps) in enumerate(greedy_ref):
        assert out.tokens[b].tolist() == toks
        np.testing.assert_allclose(out.logprobs[b], lps, atol=2e-4, rtol=1e-4)
    assert out.lengths.tolist() == [6, 6]


def test_per_sequence_stop_tokens(tiny, greedy_ref):
    _, graphdef, state = tiny
    stop = greedy_ref[0][0][2]  # row 0 emits it at step 2
    expected = []
    for toks, _ in greedy_ref:
        expected.append(toks.index(stop) + 1 if stop in toks else 6)
    assert expected[0] == 3
    prompt, pmask = pad_batch(PROMPTS, side="right")  # right-padded prompts work too
    out = sample(graphdef, state, prompt, pmask, jax.random.key(0),
                 config=SamplingConfig(max_new_tokens=6, temperature=0.0, stop_tokens=(stop,),
                                       pad_id=-1))
    assert out.lengths.tolist() == expected
    for b, n in enumerate(expected):
        assert out.tokens[b, :n].tolist() == greedy_ref[b][0][:n]
        assert np.all(np.asarray(out.tokens[b, n:]) == -1)
        assert np.all(np.asarray(out.logprobs[b, n:]) == 0)
        assert out.mask[b].tolist() == [i < n for i in range(6)]


def test_group_sampling_keys_and_recomputed_logprobs(tiny):
    _, graphdef, state = tiny
    cfg = SamplingConfig(max_new_tokens=5, temperature=0.7, top_p=0.9)
    prompt = jnp.asarray(PROMPTS[0])
    group = sample_group(graphdef, state, prompt, jax.random.key(3), num_samples=3, config=cfg)
    again = sample_group(graphdef, state, prompt, jax.random.key(3), num_samples=3, config=cfg)
    other = sample_group(graphdef, state, prompt, jax.random.key(4), num_samples=3, config=cfg)
    np.testing.assert_array_equal(group.tokens, again.tokens)
    assert not np.array_equal(group.tokens, other.tokens)
    assert len({tuple(r) for r in np.asarray(group.tokens).tolist()}) > 1  # rows differ
    # the same rows as a padded batch of the repeated prompt (prefix reuse changes nothing)
    rep, rmask = pad_batch([PROMPTS[0]] * 3)
    batch = sample(graphdef, state, rep, rmask, jax.random.key(3), config=cfg)
    np.testing.assert_array_equal(batch.tokens, group.tokens)
    np.testing.assert_allclose(batch.logprobs, group.logprobs, atol=1e-5)
    # recorded log-probs equal a fresh teacher-forced computation at the same temperature
    recomputed = logprobs(graphdef, state, rep, rmask, group.tokens, group.mask, 0.7)
    np.testing.assert_allclose(group.logprobs, recomputed, atol=2e-5)


def test_top_p_filter_by_hand():
    logits = jnp.log(jnp.asarray([[0.15, 0.5, 0.05, 0.3]]))
    # mass strictly before each token (sorted): 0.5 -> 0, 0.3 -> .5, 0.15 -> .8, 0.05 -> .95
    keep = lambda p: np.isfinite(np.asarray(top_p_filter(logits, p)))[0].tolist()
    assert keep(0.5) == [False, True, False, False]
    assert keep(0.7) == [False, True, False, True]
    assert keep(0.81) == [True, True, False, True]
    assert keep(1.0) == [True, True, True, True]


def _top_p_by_sorting(logits, top_p):
    """NumPy nucleus: keep tokens whose strictly-more-likely mass (sorted order) is < top_p."""
    x = np.asarray(logits, np.float64)
    order = np.argsort(-x, axis=-1, kind="stable")
    srt = np.take_along_axis(x, order, -1)
    p = np.exp(srt - srt.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    cutoff = np.where(np.cumsum(p, -1) - p < top_p, srt, np.inf).min(-1, keepdims=True)
    return x >= cutoff


def test_top_p_candidates_equal_full_sort():
    rng = np.random.default_rng(0)
    # peaked rows (nucleus inside the top 16), flat rows (needs a larger tier or the full sort),
    # and a row with tied logits straddling the top-16 boundary
    peaked = rng.standard_normal((3, 300)) * 6.0
    flat = rng.standard_normal((3, 300)) * 0.3
    tied = np.concatenate([[5.0] * 12 + [4.0] * 10, rng.standard_normal(278) - 5])[None]
    for rows in (peaked, flat, tied, np.concatenate([peaked, flat])):
        x = jnp.asarray(rows, jnp.float32)
        for top_p in (0.3, 0.9, 0.99):
            want = _top_p_by_sorting(rows, top_p)
            for cand in ((), (16,), (16, 128), (4, 16, 64, 256)):
                got = np.isfinite(np.asarray(top_p_filter(x, top_p, cand)))
                np.testing.assert_array_equal(got, want, err_msg=f"{top_p} {cand}")
                np.testing.assert_array_equal(np.asarray(top_p_filter(x, top_p, cand))[want],
                                              np.asarray(x)[want])


def test_sampling_distribution_monte_carlo():
    n = 20000
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs)) * 2.0, (n, 4))  # T = 2 undoes the x2
    keys = jax.random.split(jax.random.key(0), n)
    nucleus = np.array([0, 0, 3, 4]) / 7
    # candidates: (3,) finds the nucleus among the top 3 logits (lax.top_k path), (2,) does not
    # (full-sort fallback), () always sorts
    for top_p, target, cand in [(1.0, probs, ()), (0.65, nucleus, ()), (0.65, nucleus, (3,)),
                                (0.65, nucleus, (2,))]:
        cfg = SamplingConfig(temperature=2.0, top_p=top_p)
        tok, lp = jax.jit(choose_tokens, static_argnums=(2, 3))(logits, keys, cfg, cand)
        freq = np.bincount(np.asarray(tok), minlength=4) / n
        sigma = np.sqrt(target * (1 - target) / n)
        assert np.all(np.abs(freq - target) <= 4 * sigma + 1e-9), (freq, target)
        # recorded log-probs are the untruncated tempered model's
        np.testing.assert_allclose(np.asarray(lp), np.log(probs)[np.asarray(tok)], rtol=1e-5)


def test_sampling_config_validation(tiny):
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1.0)
    _, graphdef, state = tiny
    prompt, pmask = pad_batch(PROMPTS)
    with pytest.raises(ValueError, match="max_seq_len"):
        sample(graphdef, state, prompt, pmask, jax.random.key(0),
               config=SamplingConfig(max_new_tokens=64))
