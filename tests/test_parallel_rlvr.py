"""In-Context RLVR on the data mesh: 4 fake CPU devices (conftest.py) give one device's values.

The in-context methods (``num_demo > 0``): sampling with demonstration prefixes shared as KV
prefixes and the update with them, split over the ``P`` prompts; the EG quality study's
per-trace numbers with ``mesh=``.
"""

import random

import jax
import numpy as np
from flax import nnx

from recrl import models, parallel
from recrl.models.char_tokenizer import CharTokenizer
from recrl.rlvr import config, learner, loss, rollouts, tasks
from tests.rlvr.test_quality import scripted_traces

N_DEV = 4


def _tiny():
    tok = CharTokenizer()
    cfg = models.tiny_config(vocab_size=tok.vocab_size, dim=16, n_layers=1, n_heads=2,
                             n_kv_heads=1, head_dim=8, ffn_dim=32, max_seq_len=128)
    graphdef, params = nnx.split(models.create_model(cfg, seed=0))
    return tok, graphdef, params


def _splits():  # one demonstration pool shape for both tests: their compiled steps are shared
    return tasks.make_splits(8, 6, 0, 0, seed=0)


def _ic_config(**changes):
    # ic_grpo: 2 of the 4 rollouts per prompt continue a demonstration; a KL term so the
    # reference log-probs are split with the groups too
    return config.method_config(config.Method("grpo", in_context=True), num_demo=2,
                                **{**dict(group_size=4, prompts_per_step=4, max_prompt_len=32,
                                          max_new_tokens=8, lr=1e-2, warmup_steps=1,
                                          kl_weight=0.1), **changes})


def _reward(text, problem):  # varies within groups, so every update moves the parameters
    return float(len(text) % 2)


def test_in_context_sampling_on_the_mesh_equals_one_device():
    """The tokens, log-probs and rewards of a demo-prefix batch (2 of 4 slots after a
    demonstration) are one device's; the sampled rows come back split over the mesh, and the
    update's inputs and the KL reference log-probs are split too."""
    tok, graphdef, params = _tiny()
    splits = _splits()
    cfg = _ic_config()
    pool = rollouts.encode_demo_pool(tok, splits.demo)
    mesh = parallel.data_mesh(N_DEV)
    got = [rollouts.sample_rollouts(graphdef, params, tok, splits.train[4:], splits.demo,
                                    jax.random.key(3), cfg, random.Random(0), _reward, pool,
                                    mesh=m)[0] for m in (None, mesh)]
    want, on_mesh = got
    assert want.completion.shape == (4, 4, 8) and (want.demo[:, :2] >= 0).all()
    assert np.ptp(want.reward) > 0 and not np.array_equal(want.completion[:, 0],
                                                         want.completion[:, 1])
    for field in ("completion", "completion_mask", "reward", "step_correct", "demo", "prompt"):
        np.testing.assert_array_equal(getattr(on_mesh, field), getattr(want, field),
                                      err_msg=field)
    np.testing.assert_allclose(on_mesh.old_logp, want.old_logp, rtol=1e-5, atol=1e-6)
    # the sampling step itself returns rows split over the 4 devices
    pre = np.zeros((4, pool[0].shape[1]), np.int32)
    pt, pm = parallel.global_rows(lambda r: (want.prompt[r], want.prompt_mask[r]), 4, mesh)
    out = rollouts._prefix_groups(graphdef, parallel.replicate(params, mesh),
                                  *parallel.replicate((pre, pre != 0), mesh), pt, pm,
                                  jax.random.key(3), config=rollouts._sampling_config(tok, cfg))
    assert [s.data.shape for s in out.tokens.addressable_shards] == [(1, 4, 8)] * N_DEV
    # the update's inputs: the groups and their demo index split, the U prefixes replicated
    lrn = learner.Learner(graphdef, params, tok, cfg, splits.demo, mesh=mesh)
    demos = rollouts.demo_prefixes(pool, want.demo, 2)
    placed, d = lrn._place(want, demos)
    assert [s.data.shape for s in placed.completion.addressable_shards] == [(1, 4, 8)] * N_DEV
    ref = loss.rollout_logprobs(graphdef, lrn.ref_params, placed, cfg.temperature, d)
    assert [s.data.shape for s in ref.addressable_shards] == [(1, 4, 8)] * N_DEV
    np.testing.assert_allclose(parallel.to_host(ref), loss.rollout_logprobs(
        graphdef, params, want, cfg.temperature, demos), rtol=1e-5, atol=1e-5)
    assert [s.data.shape for s in d.index.addressable_shards] == [(1, 2)] * N_DEV
    assert d.tokens.sharding.is_equivalent_to(parallel.replicated(mesh), 2)
    for a, b in zip(parallel.to_host(d), demos, strict=True):
        np.testing.assert_array_equal(a, b)


def test_in_context_learner_on_the_mesh_equals_one_device():
    """Two ``ic_grpo`` learner steps (sampling, KL reference, update with demo prefixes): the
    rewards, losses and parameters on 4 devices equal one device's."""
    tok, graphdef, params = _tiny()
    splits = _splits()
    cfg = _ic_config()
    mesh = parallel.data_mesh(N_DEV)
    runs = []
    for m in (None, mesh):
        lrn = learner.Learner(graphdef, params, tok, cfg, splits.demo, reward_fn=_reward,
                              seed=0, mesh=m)
        for step in range(2):
            jax.block_until_ready(lrn.step(
                lambda n, step=step: splits.train[step * n:(step + 1) * n],
                jax.random.fold_in(jax.random.key(0), step)))
        runs.append((lrn.history, parallel.to_host(lrn.params)))
    (h1, p1), (h4, p4) = runs
    assert h1[0]["reward_demo"] == h1[0]["reward_demo"]  # demo rollouts were sampled
    for a, b in zip(h4, h1, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    init = jax.tree.leaves(parallel.to_host(params))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p1), init,
                                                           strict=True))
    assert moved > 1e-4, f"the updates did not move the parameters ({moved})"
    for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_eg_quality_study_on_the_mesh_equals_one_device(monkeypatch, tmp_path):
    """The quality experiment's per-trace EG numbers (9 correct traces: two EG chunks of 8,
    6 demos and 2 probes padded on the mesh) and the study's ``compute_eg`` rows are one
    device's; a process other than 0 computes them too but writes nothing."""
    import ml_collections

    from recrl.rlvr import evidence, quality, study

    tok, graphdef, params = _tiny()
    splits = tasks.make_splits(4, 1, 2, 0, seed=7, num_ops=(2,))
    probs, texts = scripted_traces(splits.train)
    length, mean_lp = np.arange(12) % 5 + 1, -0.1 * (np.arange(12) % 7)
    monkeypatch.setattr(quality, "sample_texts", lambda *a, **k: (texts, length, mean_lp))
    qcfg = ml_collections.ConfigDict(dict(shots=1, n_questions=4, samples=3, n_probes=2,
                                          temperature=1.0, max_new_tokens=8))
    mesh = parallel.data_mesh(N_DEV)
    want, got = (quality.quality_experiment(qcfg, splits, tok, graphdef, params, mesh=m)
                 for m in (None, mesh))
    assert want["n_correct"] == got["n_correct"] == 9
    assert np.ptp(want["per_trace"]["eg"]) > 1e-3
    for k in ("eg", "eg_per_token", "log_weight"):
        np.testing.assert_allclose(got["per_trace"][k], want["per_trace"][k], rtol=1e-5,
                                   atol=1e-5, err_msg=k)
        assert abs(got["rho"][k] - want["rho"][k]) < 1e-6 or np.isnan(want["rho"][k])

    traces = [dict(id=i, question=i // 3, text=t, reward=tasks.answer_reward(t, p))
              for i, (t, p) in enumerate(zip(texts, probs, strict=True))]
    # the quality experiment's shapes (its compiled steps are reused)
    demo_len = max(len(evidence.encode_demos(tok, [p.question], [t])[0][0])
                   for t, p, tr in zip(texts, probs, traces, strict=True) if tr["reward"] > 0)
    scfg = ml_collections.ConfigDict(dict(eg_chunk=quality.EG_CHUNK, demo_len=demo_len))
    rows = {}
    for name, m in (("one", None), ("mesh", parallel.data_mesh(N_DEV))):
        rows[name] = study.compute_eg(graphdef, params, tok, splits.train, traces,
                                      splits.probe, scfg, str(tmp_path / f"{name}.jsonl"), m)
    assert sorted(rows["one"]) == [t["id"] for t in traces if t["reward"] > 0]
    for i, r in rows["one"].items():
        for k in ("eg", "eg_per_token", "log_weight"):
            np.testing.assert_allclose(rows["mesh"][i][k], r[k], rtol=1e-5, atol=1e-5)
    assert len((tmp_path / "mesh.jsonl").read_text().splitlines()) == 9
    # process 1 of 2 (simulated): the same values, no file
    monkeypatch.setattr(parallel, "is_writer", lambda: False)
    other = study.compute_eg(graphdef, params, tok, splits.train, traces, splits.probe, scfg,
                             str(tmp_path / "other.jsonl"), mesh)
    assert other.keys() == rows["mesh"].keys() and not (tmp_path / "other.jsonl").exists()
    study.export_labels(list(other.values()), splits.train, str(tmp_path / "l.csv"), 2, 0)
    assert not (tmp_path / "l.csv").exists()
