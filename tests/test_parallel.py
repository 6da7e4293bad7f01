"""Estimators give the same numbers under plain jit, sharded jit, shard_map and pmap.

Runs on the 4 fake CPU devices set up in conftest.py. Each step's result is blocked on
before the next starts (fake-device all-reduces can deadlock on 2 cores otherwise).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from recrl import estimators as est
from recrl import parallel

N_DEV = 4


def _batch(seed=0, Pn=8, G=4, T=5, D=3, A=6):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(Pn, G, T, D)).astype(np.float32)
    actions = rng.integers(0, A, size=(Pn, G, T))
    lengths = rng.integers(0, T + 1, size=(Pn, G))
    rewards = rng.normal(0.2, 1.0, size=(Pn, G, T, 2)).astype(np.float32)
    w = rng.normal(size=(D, A)).astype(np.float32) * 0.3
    return w, (feats, actions, lengths.astype(np.int32), rewards)


def _step(w, batch, stats, axis_name=None, aggregation="token_mean"):
    """One ProRL-style update: SRC stats, centred rewards, PSAE, PG loss and its gradient."""
    feats, actions, lengths, rewards = batch
    item, eos = est.path_masks(lengths, feats.shape[-2])
    stats = est.reward_stats_update(stats, rewards, item, axis_name=axis_name)
    mean, std = est.reward_stats_mean_std(stats)
    adv = est.psae_advantages(est.center_rewards(rewards, mean, std), item, eos)

    def loss_fn(w):
        logp = jax.nn.log_softmax(feats @ w, -1)
        logp_a = jnp.take_along_axis(logp, actions[..., None], -1)[..., 0]
        return est.policy_gradient_loss(logp_a, adv, item + eos, aggregation, axis_name)

    loss, grad = jax.value_and_grad(loss_fn)(w)
    return loss, grad, stats


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference():
    assert jax.device_count() >= N_DEV, "tests need JAX_NUM_CPU_DEVICES=4"
    w, batch = _batch()
    out = jax.block_until_ready(jax.jit(_step)(w, batch, est.reward_stats_init(2)))
    return w, batch, out


def test_sharded_jit_equals_single_device(reference):
    w, batch, want = reference
    mesh = parallel.data_mesh(N_DEV)
    got = jax.jit(_step)(parallel.replicate(w, mesh), parallel.shard_batch(batch, mesh),
                         parallel.replicate(est.reward_stats_init(2), mesh))
    _assert_same(jax.block_until_ready(got), want)


@pytest.mark.parametrize("aggregation", est.AGGREGATIONS)
def test_shard_map_equals_single_device(aggregation):
    w, batch = _batch(seed=1)
    stats0 = est.reward_stats_init(2)
    want = jax.block_until_ready(
        jax.jit(lambda w, b, s: _step(w, b, s, aggregation=aggregation))(w, batch, stats0)
    )
    mesh = parallel.data_mesh(N_DEV)
    fn = jax.shard_map(
        lambda w, b, s: _step(w, b, s, axis_name="data", aggregation=aggregation),
        mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=(P(), P(), P()),
    )
    got = jax.jit(fn)(parallel.replicate(w, mesh), parallel.shard_batch(batch, mesh),
                      parallel.replicate(stats0, mesh))
    _assert_same(jax.block_until_ready(got), want)


def test_pmap_equals_single_device(reference):
    w, batch, want = reference
    split = jax.tree.map(lambda x: x.reshape(N_DEV, -1, *x.shape[1:]), batch)
    stats0 = est.reward_stats_init(2)

    def step(w, b, s):
        # pmap's psum transposes to a psum: each device's gradient of the (already global)
        # loss is N × its local share, so the gradient is averaged over devices.
        loss, grad, stats = _step(w, b, s, axis_name="i")
        return loss, jax.lax.pmean(grad, "i"), stats

    fn = jax.pmap(step, axis_name="i", in_axes=(None, 0, None), devices=jax.devices()[:N_DEV])
    loss, grad, stats = jax.block_until_ready(fn(w, split, stats0))
    for k in range(N_DEV):  # every device holds the global result
        _assert_same((loss[k], grad[k], jax.tree.map(lambda x, k=k: x[k], stats)), want)


def test_shard_batch_rejects_indivisible_batch():
    mesh = parallel.data_mesh(N_DEV)
    with pytest.raises(ValueError, match="cannot be split over 4 devices"):
        parallel.shard_batch({"x": np.zeros((6, 2))}, mesh)
    with pytest.raises(ValueError, match="asked for 9 devices"):
        parallel.data_mesh(9)


def test_replicate_gives_donatable_buffers():
    # one array in two fields, and an array the caller keeps: donating the replicated tree
    # must neither fail ("donate the same buffer twice") nor delete the caller's array
    mesh = parallel.data_mesh(N_DEV)
    z = jnp.zeros(3)
    tree = parallel.replicate({"a": z, "b": z}, mesh)
    step = jax.jit(lambda t: jax.tree.map(lambda x: x + 1, t), donate_argnums=0)
    out = jax.block_until_ready(step(tree))
    np.testing.assert_array_equal(out["a"], np.ones(3))
    np.testing.assert_array_equal(np.asarray(z), np.zeros(3))  # not deleted


def test_global_rows_equals_shard_batch_and_checks_rows():
    mesh = parallel.data_mesh(N_DEV)
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    assert parallel.process_rows(8, mesh) == slice(0, 8)  # one process: every row
    got = parallel.global_rows(lambda r: {"x": x[r]}, 8, mesh)
    assert got["x"].sharding == parallel.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(got["x"]), x)
    with pytest.raises(ValueError, match="returned 4 rows, expected 8"):
        parallel.global_rows(lambda r: x[:4], 8, mesh)
    with pytest.raises(ValueError, match="batch=6 is not a multiple of the 4 devices"):
        parallel.global_rows(lambda r: x[r], 6, mesh)


def test_check_divisible_names_the_field():
    mesh = parallel.data_mesh(N_DEV)
    parallel.check_divisible({"rl.prompts": 8}, mesh)
    with pytest.raises(ValueError, match=r"rl\.prompts=6 is not a multiple of the 4 devices"):
        parallel.check_divisible({"rl.prompts": 6, "ok": 4}, mesh)


def test_startup_config_fields_and_partial_coordinator_settings():
    import ml_collections

    cfg = parallel.add_config_fields(ml_collections.ConfigDict())
    assert set(parallel.CONFIG_FIELDS) <= set(cfg)
    mesh = parallel.startup(cfg)  # not distributed: just the mesh over all devices
    assert mesh.shape[parallel.DATA_AXIS] == jax.device_count()
    cfg.update(num_devices=2)
    assert parallel.startup(cfg).shape[parallel.DATA_AXIS] == 2
    cfg.update(distributed=True, coordinator_address="127.0.0.1:1", num_processes=2)
    with pytest.raises(ValueError, match="together"):
        parallel.initialize(cfg)  # process_id missing: refused before contacting anyone


def test_launcher_configs_share_the_distributed_fields():
    from experiments.configs import goracs, icrlvr, prorl

    for mod in (prorl, icrlvr, goracs):
        cfg = mod.get_config("tiny")
        assert {k: cfg[k] for k in parallel.CONFIG_FIELDS} == parallel.CONFIG_FIELDS


def test_prorl_refuses_a_batch_that_does_not_split(tmp_path):
    from experiments import prorl
    from experiments.configs.prorl import get_config

    cfg = get_config("tiny")
    cfg.rl.prompts = 6
    with pytest.raises(ValueError, match=r"rl\.prompts=6 is not a multiple of the 4 devices"):
        prorl.run(cfg, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_map_rows_on_the_mesh_equals_one_device():
    """10 rows in batches of 4: 4, 4 and a last batch of 2 padded to 4 on the mesh; each
    device computes only its rows (shard_map), the padding is dropped."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    ids = np.arange(10, dtype=np.int32)
    w = rng.normal(size=(3, 2)).astype(np.float32)

    def fn(w, x, ids):  # values and per-row gradients w.r.t. the replicated parameters
        grad = jax.vmap(jax.grad(lambda w, xi: jnp.tanh(xi @ w).sum()), in_axes=(None, 0))
        return {"y": jnp.tanh(x @ w), "id": ids * 2, "g": grad(w, x)}

    want = parallel.map_rows(fn, w, (x, ids), 4)
    got = parallel.map_rows(fn, w, (x, ids), 4, parallel.data_mesh(N_DEV))
    y = np.tanh(x @ w)
    g = x[:, :, None] * (1 - y**2)[:, None, :]  # d/dw of sum(tanh(x_i w)), row by row
    for out in (want, got):
        np.testing.assert_array_equal(out["id"], ids * 2)
        np.testing.assert_allclose(out["y"], y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["g"], g, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rows of one positive length"):
        parallel.map_rows(fn, w, (x, ids[:9]), 4)
    traced = []  # the same fn again on the same mesh: compiled (traced) once, not per call

    def counted(w, x):
        traced.append(x.shape)
        return jnp.tanh(x @ w)

    mesh = parallel.data_mesh(N_DEV)
    for _ in range(2):
        np.testing.assert_allclose(parallel.map_rows(counted, w, (x,), 4, mesh), y, rtol=1e-5)
    assert traced == [(1, 3)]  # one trace, of one device's share of a batch of 4


def test_goracs_features_and_scores_on_the_mesh_equal_one_device():
    """Per-sample LoRA gradient norms and vectors, embeddings and answer log-likelihoods
    of 10 examples in batches of 8 (the last of 2 padded on the mesh; ``lora_grad_norms``
    is ``grad_norms`` over another parameter subset), and catalogue / candidate scores."""
    from flax import nnx

    from recrl import models
    from recrl.coreset import lmrec

    model = models.create_model(models.tiny_config(
        vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=32,
        max_seq_len=32), seed=0)
    models.add_lora(model, rank=2, alpha=4, targets=("q_proj", "v_proj"), rngs=nnx.Rngs(1))
    # non-zero lora_b, so the per-sample gradients of lora_a are not all zero
    for _, v in nnx.iter_graph(model):
        if isinstance(v, models.LoRAParam):
            v[...] = v[...] + 0.05
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 64, (10, 12)).astype(np.int32)
    mask = np.ones_like(tokens, bool)
    mask[3, 9:] = False
    loss_mask = np.zeros_like(mask)
    loss_mask[:, 8:] = mask[:, 8:]
    data = (tokens, mask, loss_mask)
    mesh = parallel.data_mesh(N_DEV)
    kw = dict(batch_size=8, progress=False)
    for name, fn in (("grad_norms", lambda m: lmrec.grad_norms(model, *data, mesh=m, **kw)),
                     ("grad_vectors", lambda m: lmrec.grad_vectors(model, *data, mesh=m, **kw)),
                     ("embeddings",
                      lambda m: lmrec.embeddings(model, tokens, mask, mesh=m, **kw)),
                     ("answer_loglik",
                      lambda m: lmrec.answer_loglik(model, *data, batch_size=8, mesh=m))):
        want, got = fn(None), fn(mesh)
        assert got.shape == want.shape and want.shape[0] == 10, name
        assert np.abs(want).max() > 1e-3, f"{name}: all zero"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    # catalogue and candidate scoring: 5 prompts, one per device per step (the second
    # step padded from 1 to 4 prompts)
    encode = lambda text: [3 + ord(ch) % 60 for ch in text]
    prompts = ["watched: a; bc. Next:", "x", "qq rr", "Heat, Up:", "z" * 20]
    titles = ["Up (2009)", "Heat", "Alien (1979)", "Z"]
    cand = np.array([[2, 0, 1], [1, 1, 3], [0, 3, 2], [3, 2, 1], [1, 0, 0]])
    for c in (None, cand):
        want = lmrec.catalogue_scores(model, encode, prompts, titles, c, max_prompt=12,
                                      max_answer=8, progress=False)
        got = lmrec.catalogue_scores(model, encode, prompts, titles, c, max_prompt=12,
                                     max_answer=8, progress=False, mesh=mesh)
        assert want.shape == (5, 4 if c is None else 3)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, lmrec.catalogue_scores(
        model, encode, prompts, titles, max_prompt=12, max_answer=8,
        progress=False)[np.arange(5)[:, None], cand], rtol=1e-6)
    # the norms are those of the vectors, computed separately
    np.testing.assert_allclose(np.linalg.norm(lmrec.grad_vectors(model, *data, **kw), axis=1),
                               lmrec.grad_norms(model, *data, **kw), rtol=1e-5)


def _tiny_rlvr_policy():
    from flax import nnx

    from recrl import models
    from recrl.models.char_tokenizer import CharTokenizer

    tok = CharTokenizer()
    cfg = models.tiny_config(vocab_size=tok.vocab_size, dim=32, ffn_dim=64, n_layers=1,
                             max_seq_len=160)
    graphdef, params = nnx.split(models.create_model(cfg, seed=1))
    return tok, graphdef, params


def test_evidence_gain_on_the_mesh_equals_one_device():
    """EG of 6 traces over 3 probes: the probes padded to 4 and the demos to 8 rows on the
    mesh; the values, the EG weights of a [2, 3] rollout batch and a one-device mesh (bit
    for bit) against the single-device computation."""
    from recrl.rlvr import evidence, tasks

    tok, graphdef, params = _tiny_rlvr_policy()
    splits = tasks.make_splits(2, 0, 3, 0, seed=5)
    probes = evidence.encode_probes(tok, splits.probe)
    qs = [p.question for p in splits.train for _ in range(3)]
    traces = [splits.train[0].solution, "1+1=3\nanswer: 2", "??", splits.train[1].solution,
              "7", "answer: 12"]
    mesh = parallel.data_mesh(N_DEV)
    kw = dict(demo_length=48)
    want = evidence.evidence_gain_batch(graphdef, params, tok, qs, traces, probes, **kw)
    got = evidence.evidence_gain_batch(graphdef, params, tok, qs, traces, probes, mesh=mesh,
                                       **kw)
    assert want.logp_with.shape == (6, 3) and np.ptp(np.asarray(want.eg)) > 1e-3
    for field in want._fields:
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=1e-5,
                                   atol=1e-4, err_msg=field)
    one = evidence.evidence_gain_batch(graphdef, params, tok, qs, traces, probes,
                                       mesh=parallel.data_mesh(1), **kw)
    np.testing.assert_array_equal(one.logp_with, want.logp_with)
    reward = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], np.float32)
    for mode in ("reward", "advantage"):
        w = [evidence.eg_weights(graphdef, params, tok, splits.train, traces, reward, probes,
                                 0.5, 48, mode=mode, mesh=m) for m in (None, mesh)]
        assert w[0].shape == (2, 3) and np.ptp(w[0]) > 1e-3
        np.testing.assert_allclose(w[1], w[0], rtol=1e-5, atol=1e-5, err_msg=mode)


def test_rlvr_evaluation_on_the_mesh_equals_one_device():
    """Held-out evaluation of 5 problems with k=2: greedy (5 rows padded to 8) and sampled
    (10 rows padded to 12) completions are one device's, so are the metrics; parameters
    already replicated on the mesh are used as they are."""
    import jax.numpy as jnp

    from recrl import models
    from recrl.rlvr import evaluation, tasks

    tok, graphdef, params = _tiny_rlvr_policy()
    problems = tasks.make_splits(5, 0, 0, 0, seed=3).train
    mesh = parallel.data_mesh(N_DEV)
    placed = parallel.replicate(params, mesh)
    again, extra = parallel.on_mesh((placed, np.zeros(3)), mesh)  # no copy of placed leaves
    assert all(a is b for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(placed),
                                      strict=True))
    assert extra.sharding.is_equivalent_to(parallel.replicated(mesh), 1)
    ids = [tasks.encode_prompt(tok, p.question) for p in problems]
    pt, pm = models.pad_batch(ids, pad_id=tok.pad_id, side="left", length=32)
    key = jax.random.key(7)
    for temp, reps in ((0.0, 1), (1.0, 2)):
        scfg = models.SamplingConfig(max_new_tokens=12, temperature=temp,
                                     stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
        prompt, mask = np.repeat(pt, reps, 0), np.repeat(pm, reps, 0)
        want = evaluation.sample_rows(graphdef, params, prompt, mask, key, scfg)
        got = evaluation.sample_rows(graphdef, placed, prompt, mask, key, scfg, mesh)
        assert want[0].shape == (5 * reps, 12)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        if reps > 1:  # the k samples of a problem differ (sampling noise per row)
            assert not np.array_equal(want[0][0::2], want[0][1::2])
    kw = dict(k=2, max_new_tokens=12, max_prompt_len=32)
    want = evaluation.evaluate(graphdef, params, tok, problems, key, **kw)
    got = evaluation.evaluate(graphdef, params, tok, problems, key, mesh=mesh, **kw)
    assert got == want
    assert jnp.isfinite(jnp.asarray(list(want.values()))).all()
