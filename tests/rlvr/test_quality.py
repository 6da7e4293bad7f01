"""EG as a quality signal: the chunked, padded pipeline against one direct EG batch."""

import ml_collections
import numpy as np
import pytest
from flax import nnx

from recrl import models
from recrl.models.char_tokenizer import CharTokenizer
from recrl.rlvr import evidence, quality, tasks


def scripted_traces(problems, copies=3):
    """Reference solutions, every 3rd with a wrong first step, every 4th with a wrong answer."""
    probs = [p for p in problems for _ in range(copies)]
    texts = []
    for i, p in enumerate(probs):
        steps = list(p.steps)
        if i % 3 == 2:
            steps[0] = (*steps[0][:3], steps[0][3] + 1)
        texts.append(tasks.format_steps(steps, p.answer + (i % 4 == 3)))
    return probs, texts


def test_quality_experiment_matches_a_direct_computation(monkeypatch):
    tok = CharTokenizer()
    cfg = models.tiny_config(vocab_size=tok.vocab_size, dim=32, ffn_dim=64, n_layers=1)
    graphdef, params = nnx.split(models.create_model(cfg, seed=3))
    splits = tasks.make_splits(4, 1, 2, 0, seed=7, num_ops=(2,))
    qcfg = ml_collections.ConfigDict(dict(shots=1, n_questions=4, samples=3, n_probes=2,
                                          temperature=1.0, max_new_tokens=8))
    # 9 of the 12 scripted traces are correct: two EG chunks of 8, the second padded
    probs, texts = scripted_traces(splits.train)
    length, mean_lp = np.arange(12) % 5 + 1, -0.1 * (np.arange(12) % 7)
    monkeypatch.setattr(quality, "sample_texts", lambda *a, **k: (texts, length, mean_lp))
    out = quality.quality_experiment(qcfg, splits, tok, graphdef, params)

    ok = [i for i, p in enumerate(probs) if tasks.answer_reward(texts[i], p) == 1.0]
    assert (out["n_traces"], out["n_correct"]) == (12, 9) and len(ok) == 9
    sc = np.array([tasks.step_correctness(texts[i], probs[i]) for i in ok])
    assert out["n_flawed"] == int(np.sum(sc < 1)) > 0
    direct = evidence.evidence_gain_batch(graphdef, params, tok, [probs[i].question for i in ok],
                                          [texts[i] for i in ok], splits.probe[:2])
    np.testing.assert_allclose(out["per_trace"]["eg"], direct.eg, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["per_trace"]["log_weight"], direct.log_weight, rtol=1e-4,
                               atol=1e-4)
    assert out["rho"]["length"] == pytest.approx(quality.spearman(length[ok], sc))
    assert out["rho"]["mean_logprob"] == pytest.approx(quality.spearman(mean_lp[ok], sc))
    for k, (lo, hi) in out["rho_ci95"].items():
        assert lo <= hi, k
    assert out["n_probes"] == 2 and out["eg_seconds_per_trace_probe"] > 0
