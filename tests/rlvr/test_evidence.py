"""Explicit Evidence Gain: batched/shared-prefix computation vs a per-(trace, probe) loop."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from recrl import models
from recrl.models.char_tokenizer import CharTokenizer
from recrl.rlvr import evidence, tasks


def _setup():
    tok = CharTokenizer()
    cfg = models.tiny_config(vocab_size=tok.vocab_size, dim=32, ffn_dim=64, n_layers=1)
    graphdef, params = nnx.split(models.create_model(cfg, seed=1))
    splits = tasks.make_splits(3, 0, 3, 0, seed=5)
    return tok, graphdef, params, splits


def _slow_sum_logp(graphdef, params, tok, prefix_text, problem):
    # plain `logprobs` on one full sequence: bos + prefix + "Q: e_q\nA: " | e_r + eos
    prompt = tok.encode(prefix_text + tasks.format_prompt(problem.question), add_bos=True)
    ans = tasks.encode_solution(tok, problem.solution)
    # padded to fixed shapes (one compile; padding is exact for `logprobs`, see tests/models)
    pt, pm = models.pad_batch([prompt], side="left", length=96)
    at, am = models.pad_batch([ans], side="right", length=40)
    lp = models.logprobs(graphdef, params, jnp.asarray(pt), jnp.asarray(pm), jnp.asarray(at),
                         jnp.asarray(am))
    return float(lp.sum()), len(ans)


def test_evidence_gain_matches_per_pair_loop():
    tok, graphdef, params, splits = _setup()
    qs = [p.question for p in splits.train]
    # traces of different lengths: a reference, a flawed one, a malformed one
    traces = [splits.train[0].solution, "1+1=3\nanswer: 2", "??"]
    res = evidence.evidence_gain_batch(graphdef, params, tok, qs, traces, splits.probe)
    n, e = len(qs), len(splits.probe)
    without = np.zeros(e)
    ntok = np.zeros(e)
    with_demo = np.zeros((n, e))
    for j, pr in enumerate(splits.probe):
        without[j], ntok[j] = _slow_sum_logp(graphdef, params, tok, "", pr)
        for i in range(n):
            with_demo[i, j], _ = _slow_sum_logp(
                graphdef, params, tok, tasks.format_example(qs[i], traces[i]), pr)
    delta = with_demo - without
    np.testing.assert_allclose(res.logp_without, without, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(res.logp_with, with_demo, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(res.eg, delta.mean(1), atol=2e-3)
    np.testing.assert_allclose(res.eg_per_token, (delta / ntok).mean(1), atol=2e-4)
    np.testing.assert_allclose(res.log_weight, np.log(np.exp(delta).mean(1)), atol=2e-3)
    assert np.all(np.asarray(res.log_weight) >= np.asarray(res.eg) - 1e-5)  # Jensen
    # reuse of the bare term gives the same answer
    again = evidence.evidence_gain_batch(graphdef, params, tok, qs, traces, splits.probe,
                                         logp_without=res.logp_without)
    np.testing.assert_allclose(again.eg, res.eg, atol=1e-6)
