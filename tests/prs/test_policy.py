"""Path policy: cached decoding equals teacher forcing; rollouts; masks; log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recrl.prs.policy import (
    PathPolicy,
    PolicyConfig,
    action_log_probs,
    action_tokens,
    make_prompt,
    path_logits,
)
from recrl.prs.rollout import generate, sample_categorical

CFG = PolicyConfig(num_items=12, history=4, max_len=5, dim=16, n_heads=2, n_layers=2, ffn_dim=32,
                   dropout=0.1)


def _policy(seed=0):
    return PathPolicy(CFG, nnx.Rngs(seed))


def _prompts(b=6, seed=1):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.integers(0, 12, (b, 4)), jnp.int32),
            jnp.asarray(rng.integers(0, 12, b), jnp.int32))


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        PolicyConfig(num_items=5, dim=10, n_heads=4)
    with pytest.raises(ValueError, match="num_items"):
        PolicyConfig(num_items=1)


def test_action_tokens_and_prompt():
    path = jnp.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]])
    acts = action_tokens(CFG, path, jnp.array([2, 5]))
    np.testing.assert_array_equal(acts, [[3, 4, CFG.eos, CFG.pad, CFG.pad], [1, 2, 3, 4, 5]])
    prompt = make_prompt(CFG, jnp.array([[1, 2, 3, 4]]), jnp.array([9]))
    np.testing.assert_array_equal(prompt, [[1, 2, 3, 4, 9, CFG.sep]])
    with pytest.raises(ValueError, match="`history` must have 4 items"):
        make_prompt(CFG, jnp.array([[1, 2, 3]]), jnp.array([9]))


def test_generated_paths_and_logp_match_teacher_forcing():
    policy = _policy()
    hist, tgt = _prompts()
    out = jax.jit(lambda k: generate(policy, hist, tgt, k))(jax.random.key(3))
    lengths = np.asarray(out.lengths)
    assert lengths.min() >= 1 and lengths.max() <= CFG.max_len
    path = np.asarray(out.path)
    for b in range(len(lengths)):
        assert np.all(path[b, : lengths[b]] < CFG.num_items)
        assert np.all(path[b, lengths[b]:] == CFG.pad)
    # the log-probs recorded while decoding with the KV cache equal a fresh
    # teacher-forced forward pass over the same paths
    logits = path_logits(policy, hist, tgt, out.path, out.lengths)
    _, taken = action_log_probs(logits, action_tokens(CFG, out.path, out.lengths), target=tgt)
    np.testing.assert_allclose(taken, out.logp, rtol=1e-4, atol=1e-5)
    # without the target mask the two agree as well (and differ from the masked ones)
    free = jax.jit(lambda k: generate(policy, hist, tgt, k, mask_target=False))(
        jax.random.key(3))
    logits = path_logits(policy, hist, tgt, free.path, free.lengths)
    _, taken = action_log_probs(logits, action_tokens(CFG, free.path, free.lengths))
    np.testing.assert_allclose(taken, free.logp, rtol=1e-4, atol=1e-5)


def test_the_target_is_never_an_action_when_masked():
    """The prompt's target is out of the action space: pushed far above every other item it
    is still never emitted (and is emitted at once without the mask)."""
    policy = _policy(8)
    hist, tgt = _prompts(b=16)
    tgt = jnp.full_like(tgt, 3)
    policy.out_bias[...] = policy.out_bias[...].at[3].set(30.0)
    out = generate(policy, hist, tgt, jax.random.key(0))
    path = np.asarray(out.path)
    item = np.arange(CFG.max_len)[None] < np.asarray(out.lengths)[:, None]
    assert not np.any((path == 3) & item)
    free = generate(policy, hist, tgt, jax.random.key(0), mask_target=False)
    assert np.all(np.asarray(free.path)[:, 0] == 3)
    greedy = generate(policy, hist, tgt, None, greedy=True)
    assert not np.any(np.asarray(greedy.path) == 3)
    logp, _ = action_log_probs(jnp.zeros((16, CFG.max_len, CFG.num_items + 1)),
                               jnp.zeros((16, CFG.max_len), jnp.int32), target=tgt)
    assert np.all(np.isneginf(np.asarray(logp)[..., 3]))


def test_greedy_is_argmax_of_teacher_forced_logits_and_deterministic():
    policy = _policy(2)
    hist, tgt = _prompts(seed=4)
    a = generate(policy, hist, tgt, None, greedy=True)
    b = generate(policy, hist, tgt, jax.random.key(9), greedy=True)
    np.testing.assert_array_equal(a.path, b.path)
    logits = np.asarray(path_logits(policy, hist, tgt, a.path, a.lengths))
    acts = np.asarray(action_tokens(CFG, a.path, a.lengths))
    for i in range(hist.shape[0]):
        for t in range(int(a.lengths[i]) + (1 if a.lengths[i] < CFG.max_len else 0)):
            row = logits[i, t].copy()
            row[int(tgt[i])] = -np.inf  # the target is never an action
            if t == 0:
                row[CFG.eos] = -np.inf  # EOS is never first
            assert acts[i, t] == int(np.argmax(row))


def test_first_action_is_never_eos_and_sampling_is_seeded():
    policy = _policy(5)
    # push EOS up hard: it still cannot be the first action
    policy.out_bias[...] = policy.out_bias[...].at[CFG.eos].set(50.0)
    hist, tgt = _prompts(b=32)
    out = generate(policy, hist, tgt, jax.random.key(0))
    np.testing.assert_array_equal(out.lengths, np.ones(32))
    again = generate(policy, hist, tgt, jax.random.key(0))
    np.testing.assert_array_equal(out.path, again.path)


def test_causality_later_path_items_do_not_change_earlier_logits():
    policy = _policy(6)
    hist, tgt = _prompts(b=2)
    p1 = jnp.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    p2 = jnp.array([[1, 2, 9, 9, 9], [1, 2, 3, 4, 5]])
    l1 = path_logits(policy, hist, tgt, p1, jnp.array([5, 5]))
    l2 = path_logits(policy, hist, tgt, p2, jnp.array([5, 5]))
    np.testing.assert_allclose(l1[:, :3], l2[:, :3], rtol=1e-5, atol=1e-6)
    assert not np.allclose(l1[0, 3:], l2[0, 3:])


def test_dropout_only_with_rngs():
    policy = _policy(7)
    hist, tgt = _prompts(b=3)
    path, lengths = jnp.zeros((3, 5), jnp.int32), jnp.array([5, 2, 1])
    a = path_logits(policy, hist, tgt, path, lengths)
    b = path_logits(policy, hist, tgt, path, lengths)
    c = path_logits(policy, hist, tgt, path, lengths, rngs=nnx.Rngs(dropout=1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_sample_categorical_matches_softmax_frequencies():
    """Inverse-CDF sampling against the exact softmax: chi-square over 200k draws per row."""
    logits = jnp.array([[2.0, 0.0, -1.0, -jnp.inf, 1.0, -1e9],
                        [-jnp.inf, 0.5, 0.5, 0.5, -3.0, 4.0]])
    n = 200_000
    draws = jax.jit(jax.vmap(lambda k: sample_categorical(k, logits)))(
        jax.random.split(jax.random.key(3), n))  # [n, 2]
    p = np.asarray(jax.nn.softmax(logits, -1), np.float64)
    for row in range(2):
        counts = np.bincount(np.asarray(draws[:, row]), minlength=6)
        assert counts[p[row] == 0].sum() == 0  # impossible actions never drawn
        pos = p[row] > 0
        chi2 = np.sum((counts[pos] - n * p[row, pos]) ** 2 / (n * p[row, pos]))
        # df = 3 (row 0) or 4 (row 1); P(chi2 > 25) < 1e-4 for both.
        assert chi2 < 25.0, (row, counts, n * p[row])


def test_sample_categorical_handles_wide_vocabularies_and_one_hot_rows():
    n_act = 3417
    logits = jnp.full((4, n_act), -1e9).at[0, 7].set(0.0).at[1, -1].set(0.0)
    logits = logits.at[2].set(0.0).at[3, :2].set(0.0)
    keys = jax.random.split(jax.random.key(0), 500)
    draws = np.asarray(jax.vmap(lambda k: sample_categorical(k, logits))(keys))
    assert (draws[:, 0] == 7).all() and (draws[:, 1] == n_act - 1).all()
    assert draws[:, 2].min() >= 0 and draws[:, 2].max() < n_act
    assert len(np.unique(draws[:, 2])) > 400  # uniform over 3417: few repeats in 500
    assert set(np.unique(draws[:, 3])) == {0, 1}


def _two_projection_logits(policy, tokens):
    """The policy as written before its blocks became ``recrl.models.attention.CausalBlock``:
    per block, ``q`` from one ``qkv(norm1(x))`` call and ``k, v`` from a second one, a
    position mask, no dropout."""
    positions = jnp.arange(tokens.shape[1])
    x = policy._embed(tokens, positions)
    for blk in policy.blocks:
        b, s, d = x.shape
        shape = (b, s, blk.n_heads, d // blk.n_heads)
        q = blk.qkv(blk.norm1(x))[..., :d].reshape(shape)
        k, v = (a.reshape(shape) for a in jnp.split(blk.qkv(blk.norm1(x))[..., d:], 2, -1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d / blk.n_heads)
        allowed = jnp.arange(s)[None, :] <= positions[:, None]
        att = jax.nn.softmax(jnp.where(allowed[None, None], scores, -1e30), axis=-1)
        x = x + blk.out(jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, s, d))
        x = x + blk.fc2(jax.nn.gelu(blk.fc1(blk.norm2(x))))
    return policy._logits(x)


def test_shared_block_equals_the_two_projection_policy():
    """The documented equivalence of the block refactor: same logits bit for bit; gradients
    equal up to float32 rounding (the q and k/v projections are one matmul now, so their
    backward is one contraction instead of two summed ones)."""
    policy = _policy(seed=4)
    hist, tgt = _prompts(seed=5)
    tokens = jnp.concatenate([make_prompt(CFG, hist, tgt), jnp.tile(hist, (1, 1))], axis=1)
    graphdef, params = nnx.split(policy)

    def loss(p, fn):
        return jnp.sum(jax.nn.log_softmax(fn(nnx.merge(graphdef, p), tokens)) * 0.37)

    new_val, new_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)(
        params, lambda m, t: m(t))
    old_val, old_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)(
        params, _two_projection_logits)
    np.testing.assert_array_equal(policy(tokens), _two_projection_logits(policy, tokens))
    np.testing.assert_allclose(new_val, old_val, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(new_grad), jax.tree.leaves(old_grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_grouped_prompts_equal_repeated_prompts():
    """``G`` paths per prompt with the prompt run once (grouped path_logits / generate)
    give the values, the gradients and the paths of the prompts repeated ``G`` times."""
    policy = _policy(11)
    hist, tgt = _prompts(b=3, seed=5)
    G = 4
    rep_h, rep_t = jnp.repeat(hist, G, 0), jnp.repeat(tgt, G, 0)
    u = jax.random.uniform(jax.random.key(2), (3 * G, CFG.max_len), minval=1e-6)
    grouped = generate(policy, hist, tgt, None, uniforms=u, group_size=G)
    repeated = generate(policy, rep_h, rep_t, None, uniforms=u)
    np.testing.assert_array_equal(grouped.path, repeated.path)
    np.testing.assert_allclose(grouped.logp, repeated.logp, rtol=1e-5, atol=1e-6)
    path, lengths = repeated.path, repeated.lengths
    a, ha = path_logits(policy, hist, tgt, path, lengths, return_hidden=True)
    b, hb = path_logits(policy, rep_h, rep_t, path, lengths, return_hidden=True)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ha, hb, rtol=1e-5, atol=1e-5)
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)
    w = jax.random.normal(jax.random.key(4), a.shape)

    def grad_of(h, t):
        return jax.grad(lambda p: jnp.sum(w * path_logits(nnx.merge(graphdef, p, rest), h, t,
                                                          path, lengths)))(params)

    for x, y in zip(jax.tree.leaves(grad_of(hist, tgt)), jax.tree.leaves(grad_of(rep_h, rep_t)),
                    strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="11 paths do not split over 3 prompts"):
        path_logits(policy, hist, tgt, path[:11], lengths[:11])
    with pytest.raises(ValueError, match="without dropout"):
        path_logits(policy, hist, tgt, path, lengths, rngs=nnx.Rngs(dropout=0))
