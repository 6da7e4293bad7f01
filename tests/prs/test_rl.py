"""RL step: rewards, SRC freezing, NaN skipping, KL, learning signal, 1 vs 4 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs.prorl import METHODS, method
from recrl import parallel
from recrl.prs import diagnostics, rl
from recrl.prs.policy import PathPolicy, PolicyConfig
from tests.prs import fake_sim

N = 10
CFG = PolicyConfig(num_items=N, history=3, max_len=4, dim=16, n_heads=2, n_layers=1, ffn_dim=32,
                   dropout=0.0)


def _setup(name="prorl", group_size=4, lr=1e-2, **kw):
    policy = PathPolicy(CFG, nnx.Rngs(0))
    cfg = rl.RLConfig(method=METHODS[name], group_size=group_size, lr=lr, warmup_steps=1, **kw)
    state, graph = rl.init_state(policy, cfg)
    step = rl.make_train_step(graph, fake_sim.score, cfg)
    rng = np.random.default_rng(0)
    hist = jnp.asarray(rng.integers(0, N, (8, 3)), jnp.int32)
    tgt = jnp.asarray(rng.integers(0, N, 8), jnp.int32)
    return state, step, hist, tgt


def _copy(tree):
    """A copy of a state that a (donating) step call would otherwise invalidate."""
    return jax.tree.map(jnp.copy, tree)


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="unknown RL method 'ppo'; known: prorl"):
        method("ppo")
    with pytest.raises(TypeError, match="must be a recrl.prs.rl.Method"):
        rl.RLConfig(method="prorl")
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        rl.RLConfig(method=rl.Method("ppo", src=True))
    with pytest.raises(ValueError, match="aggregation 'token_mean' is not supported"):
        rl.RLConfig(method=rl.Method("psae", src=True, aggregation="token_mean"))


def test_only_a2c_carries_a_critic():
    policy = PathPolicy(CFG, nnx.Rngs(0))
    for name in ("prorl", "grpo", "a2c"):
        state, _ = rl.init_state(policy, rl.RLConfig(method=METHODS[name]))
        assert isinstance(state, rl.A2CState if name == "a2c" else rl.RLState), name
        assert hasattr(state, "critic") == (name == "a2c")


def test_step_runs_collects_then_freezes_stats():
    state, step, hist, tgt = _setup()
    table = fake_sim.make_table(N)
    state, m = step(state, table, hist, tgt, jax.random.key(1))
    assert bool(m["finite"]) and all(np.isfinite(float(v)) for v in m.values())
    c1 = float(state.stats.count)
    assert c1 > 0
    # the KL to the reference is exactly 0 at the first step (same parameters)
    assert abs(float(m["kl"])) < 1e-6
    state = rl.freeze_stats(state)
    state, m2 = step(state, table, hist, tgt, jax.random.key(2))
    assert float(state.stats.count) == c1
    assert float(m2["kl"]) > 0 and int(state.step) == 2


def test_nan_rewards_skip_the_update_and_count_it():
    state, step, hist, tgt = _setup()
    bad_table = fake_sim.make_table(N).at[0, 0].set(jnp.nan)
    hist = hist.at[:, 0].set(0)  # every prompt touches the NaN embedding
    new, m = step(_copy(state), bad_table, hist, tgt, jax.random.key(1))
    assert not bool(m["finite"]) and int(new.skipped) == 1
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(new.stats.count) == 0.0


def test_rl_raises_the_click_reward():
    # CTR only: the policy must learn to pick items the user model likes
    state, step, hist, tgt = _setup(group_size=8, lr=3e-2, reward_weights=(0.0, 0.0, 1.0),
                                    kl_weight=0.0)
    table = fake_sim.make_table(N)
    key = jax.random.key(0)
    ctr = []
    for i in range(40):
        key, sub = jax.random.split(key)
        state, m = step(state, table, hist, tgt, sub)
        ctr.append(float(m["path_ctr"]))
        if i == 5:
            state = rl.freeze_stats(state)
    assert np.mean(ctr[-5:]) > np.mean(ctr[:5]) + 0.05, ctr


def test_sharded_step_equals_single_device():
    state, step, hist, tgt = _setup(group_size=4)
    table = fake_sim.make_table(N)
    s1, m1 = jax.block_until_ready(step(_copy(state), table, hist, tgt, jax.random.key(3)))
    mesh = parallel.data_mesh(4)
    s4, m4 = jax.block_until_ready(step(
        parallel.replicate(state, mesh), parallel.replicate(table, mesh),
        parallel.shard_batch(hist, mesh), parallel.shard_batch(tgt, mesh), jax.random.key(3)))
    for a, b in zip(jax.tree.leaves((s1, m1)), jax.tree.leaves((s4, m4)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_a2c_trains_its_critic_and_uses_it():
    state, step, hist, tgt = _setup("a2c", group_size=4)
    table = fake_sim.make_table(N)
    losses = []
    key = jax.random.key(0)
    for _ in range(6):
        key, sub = jax.random.split(key)
        new, m = step(_copy(state), table, hist, tgt, sub)
        losses.append(float(m["critic_loss"]))
        assert not np.allclose(np.asarray(new.critic["w2"]), np.asarray(state.critic["w2"]))
        state = new
    assert np.isfinite(losses).all() and min(losses[3:]) < losses[0]


def test_grpo_averages_within_each_path_and_the_others_sum():
    """GRPO's 1/|o| per-path mean (its length bias) vs ProRL's per-path sum: with the same
    sampled paths, GRPO's policy-gradient loss is the seq_sum one reweighted per path."""
    assert METHODS["grpo"].aggregation == "seq_mean_token_mean"
    for m in ("prorl", "reinforce", "rtg", "prorl_no_psae", "a2c"):
        assert METHODS[m].aggregation == "seq_sum"
    table = fake_sim.make_table(N)
    state, step, hist, tgt = _setup("grpo", group_size=4)
    _, m = step(state, table, hist, tgt, jax.random.key(3))
    # the same step with GRPO's advantages summed over actions instead
    # must give a different loss: the aggregation is applied, not just declared
    policy = PathPolicy(CFG, nnx.Rngs(0))
    cfg = rl.RLConfig(method=METHODS["grpo"]._replace(aggregation="seq_sum"), group_size=4,
                      lr=1e-2, warmup_steps=1)
    state2, graph = rl.init_state(policy, cfg)
    step2 = rl.make_train_step(graph, fake_sim.score, cfg)
    _, m2 = step2(state2, table, hist, tgt, jax.random.key(3))
    assert float(m["length"]) == float(m2["length"])  # same sampled paths
    assert abs(float(m["pg_loss"]) - float(m2["pg_loss"])) > 1e-6


@pytest.mark.parametrize("name", ["prorl", "grpo",
                                    pytest.param("a2c", marks=pytest.mark.slow)])
def test_gradient_accumulation_equals_one_big_batch(name):
    """4 micro-batches of 2 prompts give the update of one batch of 8 prompts: same sampled
    paths, same SRC statistics, same parameters and optimiser state, same metrics."""
    policy = PathPolicy(CFG, nnx.Rngs(0))
    table = fake_sim.make_table(N)
    rng = np.random.default_rng(0)
    hist = jnp.asarray(rng.integers(0, N, (8, 3)), jnp.int32)
    tgt = jnp.asarray(rng.integers(0, N, 8), jnp.int32)
    out = []
    for micro in (1, 4):
        cfg = rl.RLConfig(method=METHODS[name], group_size=4, lr=1e-2, warmup_steps=1,
                          micro_batches=micro)
        state, graph = rl.init_state(policy, cfg)
        step = rl.make_train_step(graph, fake_sim.score, cfg)
        for i in range(2):  # the second step also checks the updated optimiser state
            state, m = step(state, table, hist, tgt, jax.random.key(i))
        out.append((state, m))
    (s1, m1), (s4, m4) = out
    assert float(m1["grad_norm"]) > 0
    for k in m1:
        np.testing.assert_allclose(m1[k], m4[k], rtol=2e-5, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s4), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)


def test_micro_batches_must_divide_the_prompts():
    state, step, hist, tgt = _setup(micro_batches=3)
    with pytest.raises(ValueError, match="8 prompts do not split into 3 equal micro-batches"):
        step(state, fake_sim.make_table(N), hist, tgt, jax.random.key(0))
    with pytest.raises(ValueError, match="micro_batches must be >= 1"):
        rl.RLConfig(micro_batches=0)


def test_reference_defaults():
    cfg = rl.RLConfig()
    assert cfg.reward_weights == (1.0, 1.0, 0.1)  # CTR / L_max
    assert cfg.weight_decay == 0.05 and cfg.lr == 1e-4 and cfg.kl_weight == 0.01
    assert cfg.sample_std and cfg.stats_real_items and cfg.mask_target


@pytest.mark.parametrize("real_only", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_src_statistics_count_real_items_with_the_sample_std(real_only):
    """One step's SRC moments against a direct numpy computation over the sampled paths'
    non-duplicate item steps (sample std), and over every item step when asked."""
    table = fake_sim.make_table(N)
    rng = np.random.default_rng(1)
    hist = jnp.asarray(rng.integers(0, N, (8, 3)), jnp.int32)
    tgt = jnp.asarray(rng.integers(0, N, 8), jnp.int32)
    policy = PathPolicy(CFG, nnx.Rngs(0))
    from recrl.prs.rewards import step_rewards
    from recrl.prs.rollout import generate, path_uniforms

    cfg = rl.RLConfig(group_size=4, stats_real_items=real_only)
    state, graph = rl.init_state(policy, cfg)
    step = rl.make_train_step(graph, fake_sim.score, cfg)
    key = jax.random.key(5)
    new, _ = step(state, table, hist, tgt, key)
    # the same paths, regenerated outside the step
    hh, tt = jnp.repeat(hist, 4, 0), jnp.repeat(tgt, 4, 0)
    paths = generate(policy, hh, tt, None, uniforms=path_uniforms(key, 32, CFG.max_len))
    path, lengths = np.asarray(paths.path), np.asarray(paths.lengths)
    safe = np.where(path < N, path, 0)
    comps = np.asarray(step_rewards(fake_sim.score(table, hh, jnp.asarray(safe),
                                                   paths.lengths, tt),
                                    jnp.asarray(safe), paths.lengths))
    rows = []
    for b in range(32):
        seen = set()
        for t in range(lengths[b]):
            if real_only and safe[b, t] in seen:
                continue
            seen.add(safe[b, t])
            rows.append(comps[b, t])
    rows = np.array(rows)
    if real_only:
        assert len(rows) < lengths.sum()  # the case has duplicates to leave out
    assert float(new.stats.count) == len(rows)
    np.testing.assert_allclose(new.stats.mean, rows.mean(0), rtol=1e-4, atol=1e-5)
    _, std = rl.src_mean_std(new.stats)
    np.testing.assert_allclose(std, rows.std(0, ddof=1), rtol=1e-4)
    _, pop = rl.src_mean_std(new.stats, sample=False)
    np.testing.assert_allclose(pop, rows.std(0), rtol=1e-4)


def test_step_reports_the_diagnostics():
    state, step, hist, tgt = _setup()
    _, m = step(state, fake_sim.make_table(N), hist, tgt, jax.random.key(1))
    assert float(m["target_share"]) == 0.0  # the target is out of the action space
    assert float(m["adv_var_reinforce"]) > 0 and float(m["adv_var"]) > 0
    assert all(f"centred_pos{t}" in m for t in range(1, CFG.max_len + 1))


@pytest.mark.slow
def test_without_the_mask_the_target_share_shows_target_emissions():
    state, step, hist, tgt = _setup(mask_target=False)
    tgt = hist[:, 0] * 0 + 1  # any target: without the mask some path emits it eventually
    shares = [float(step(_copy(state), fake_sim.make_table(N), hist, tgt, jax.random.key(i))[1]
                    ["target_share"]) for i in range(3)]
    assert max(shares) > 0


def test_gradient_diagnostics_by_hand_and_on_the_step():
    g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = diagnostics.gradient_diagnostics(g, np.array([1.0, 0.0]))
    np.testing.assert_allclose(d["cosine"], (1 + 0 + 1 / np.sqrt(2)) / 3)
    np.testing.assert_allclose(d["mean_cosine"], 1 / np.sqrt(2))
    # mean (2/3, 2/3); squared deviations 5/9, 5/9, 2/9 -> noise 4/9; signal 8/9
    np.testing.assert_allclose(d["snr"], 2.0)
    with pytest.raises(ValueError, match="grads must be"):
        diagnostics.gradient_diagnostics(g[:1], np.zeros(2))
    policy = PathPolicy(CFG, nnx.Rngs(0))
    cfg = rl.RLConfig(group_size=4)
    state, graph = rl.init_state(policy, cfg)
    grad = diagnostics.make_gradient_fn(graph, fake_sim.score, cfg)
    _, _, hist, tgt = _setup()
    table = fake_sim.make_table(N)
    a = np.asarray(grad(state, table, hist, tgt, jax.random.key(0)))
    b = np.asarray(grad(state, table, hist, tgt, jax.random.key(1)))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    assert a.shape == (n_params,) and np.linalg.norm(a) > 0 and not np.allclose(a, b)


def test_fused_log_probs_and_kl_equal_the_separate_functions():
    """The step's one-log-softmax loss terms equal ``action_log_probs`` and ``full_kl`` over
    the masked action space (EOS banned first, the target banned), PAD actions included."""
    from recrl import estimators as est
    from recrl.prs.policy import action_log_probs, action_mask, log_probs_and_kl, masked_log_softmax

    B, T, V = 6, 4, N + 1
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    logits = 3 * jax.random.normal(k1, (B, T, V))
    ref = 3 * jax.random.normal(k2, (B, T, V))
    tgt = jnp.arange(B) % N
    acts = jax.random.randint(k3, (B, T), 0, V + 2).at[:, 0].set(1)  # PAD ids >= V too
    acts = jnp.where(acts == tgt[:, None], (tgt[:, None] + 1) % N, acts)
    allowed = action_mask(T, V, tgt)
    np.testing.assert_array_equal(allowed, jnp.isfinite(masked_log_softmax(logits, target=tgt)))
    ref_lp = jax.nn.log_softmax(jnp.where(allowed, ref, -1e9), -1)
    taken, kl = log_probs_and_kl(logits, ref_lp, acts, allowed)
    _, want_taken = action_log_probs(logits, acts, target=tgt)
    np.testing.assert_allclose(taken, want_taken, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kl, est.full_kl(logits, ref, where=allowed), rtol=1e-4,
                               atol=1e-6)
    assert float(jnp.min(kl)) >= 0.0
