"""benchmarks/lm.py --compare transformers: the skip message without torch, and (where torch
and transformers are installed, e.g. the [bench] environment) the weight mapping into
transformers.LlamaForCausalLM checked against recrl's logits and log-probs."""

import importlib.util
import os

import numpy as np
import pytest
from flax import nnx

from benchmarks import lm, lm_transformers
from recrl import models

HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


@pytest.fixture(autouse=True)
def _unpinned(monkeypatch):
    """``lm.main(--threads N)`` pins the calling process to ``N`` cores and sets XLA_FLAGS;
    undo both so the rest of the test session keeps every core."""
    cores = os.sched_getaffinity(0)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    yield
    os.sched_setaffinity(0, cores)


@pytest.mark.skipif(HAVE_TORCH, reason="torch is installed: the comparison runs instead")
def test_compare_without_torch_says_what_is_missing(capsys):
    cores = os.sched_getaffinity(0)
    lm.main(["--model", "tiny", "--compare", "transformers"])
    out = capsys.readouterr().out
    assert "skipped" in out and "torch" in out and "[bench]" in out
    assert "greedy" not in out  # nothing was timed
    assert os.sched_getaffinity(0) == cores  # a skipped comparison pins nothing


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch + transformers (the [bench] extra)")
def test_transformers_model_has_the_same_outputs():
    cfg = models.tiny_config(vocab_size=300, n_kv_heads=2, n_heads=4, tie_embeddings=False)
    model = models.create_model(cfg, seed=3)
    graphdef, params = nnx.split(model)
    hf = lm_transformers.hf_model(model)
    ids = list(np.random.default_rng(0).integers(0, 300, size=12))
    assert lm_transformers.max_logit_difference(graphdef, params, hf, ids) < 1e-4
    prompt = np.asarray([ids] * 2)
    comp = np.random.default_rng(1).integers(0, 300, size=(2, 5))
    ours = models.logprobs(graphdef, params, prompt, np.ones(prompt.shape, bool), comp,
                           np.ones(comp.shape, bool))
    np.testing.assert_allclose(lm_transformers._hf_score(hf, prompt, comp), ours, atol=1e-4)
    greedy = models.SamplingConfig(max_new_tokens=6, temperature=0.0)
    toks = models.sample(graphdef, params, prompt, np.ones(prompt.shape, bool),
                         __import__("jax").random.key(0), config=greedy).tokens
    np.testing.assert_array_equal(lm_transformers._hf_generate(hf, prompt, 6, False), toks)


def test_accuracy_columns_by_hand():
    ours, ref = np.array([[-1.0, -2.0]]), np.array([[-1.5, -2.0]])
    # max |diff| 0.5, mean 0.25, sequence sums -3 vs -3.5: relative 0.5 / 3.5
    assert lm_transformers._vs_reference("score", ours, ref) == (
        "|log-prob diff| max 0.500 mean 0.2500, sums rel 1.4e-01")
    assert lm_transformers._vs_reference("greedy", np.array([[1, 2, 3, 4]]),
                                         np.array([[1, 2, 5, 6]])) == "tokens equal 50%"
    assert lm_transformers._vs_transformers("greedy", np.array([[7, 8]]),
                                            np.array([[7, 9]])) == "tokens equal 50%"


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch + transformers (the [bench] extra)")
def test_bf16_compare_rows_label_both_dtypes(capsys):
    lm.main(["--model", "tiny", "--compare", "transformers", "--dtype", "bfloat16",
             "--batch", "1", "--new", "3", "--completion", "4", "--threads", "1"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()
            if line.split()[:1] in (["greedy"], ["sample"], ["score"])]
    # one row per op and transformers dtype, recrl in bf16 against fp32 and bf16
    assert sorted((r[0], r[3], r[4]) for r in rows) == sorted(
        (op, "bf16", d) for op in ("greedy", "sample", "score") for d in ("fp32", "bf16"))
    score = [" ".join(r) for r in rows if r[0] == "score"]
    assert all("| |log-prob diff| max" in r for r in score)  # recrl-bf16 vs recrl-fp32
    assert "recrl bfloat16 vs recrl float32, teacher-forced" in out
    greedy = [" ".join(r) for r in rows if r[0] == "greedy"]
    assert all(r.count("tokens equal") == 2 for r in greedy)


def test_teacher_forced_agreement_is_zero_for_the_same_model_and_not_for_another():
    cfg = models.tiny_config(vocab_size=300)
    a = nnx.split(models.create_model(cfg, seed=0))
    b = nnx.split(models.create_model(cfg, seed=1))
    ids = list(range(3, 11))
    same = lm_transformers.teacher_forced_agreement(a, a, ids, 4)
    assert "(12 positions): KL(fp32 || ours) mean 0.0e+00 max 0.0e+00, argmax equal 100%" in same
    other = lm_transformers.teacher_forced_agreement(a, b, ids, 4)
    kl_mean = float(other.split("mean ")[1].split()[0])
    assert kl_mean > 1e-3  # two random models differ


def test_profile_classifies_every_matmul_of_the_compiled_model():
    """benchmarks.lm_profile groups the compiled HLO's fusions: 7 weight matmuls and 2
    attention products per block, one LM head (so its per-group times cover them all)."""
    import collections

    from benchmarks import lm_profile

    cfg = models.tiny_config(vocab_size=300)
    graphdef, params = nnx.split(models.create_model(cfg))
    ids = np.ones((2, 6), np.int32)
    mask = np.ones(ids.shape, bool)
    hlo = models.logprobs.lower(graphdef, params, ids, mask, ids, mask).compile().as_text()
    kinds = collections.Counter(lm_profile._hlo_kinds(hlo, cfg.vocab_size).values())
    assert kinds["weights"] == 7 * cfg.n_layers
    assert kinds["attention"] == 2 * cfg.n_layers
    assert kinds["lm head"] == 1
