"""GRPO/DAPO learner: loss plumbing by hand, dynamic sampling, in-context groups, learning."""

import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recrl import models
from recrl.models.char_tokenizer import CharTokenizer
from recrl.rlvr import config, evaluation, learner, loss, rollouts, tasks

LN15, LN20 = math.log(1.5), math.log(20.0)


def _batch(reward, valid=(True,), weight=None, mask=((1, 1), (1, 0))):
    reward = np.asarray(reward, np.float32)
    p, g = reward.shape
    old = np.array([[[-1.0, -2.0], [-0.5, -3.0]]] * p, np.float32)
    z = np.zeros((p, g, 2), np.int32)
    return rollouts.Rollouts(z, z > -1, z, np.broadcast_to(np.array(mask, bool), (p, g, 2)), old,
                      reward, np.zeros_like(reward), np.full((p, g), -1), np.array(valid),
                      np.ones_like(reward) if weight is None else np.asarray(weight, np.float32))


def _logp(batch):
    return jnp.asarray(batch.old_logp) + jnp.array([[LN15, LN15], [LN20, LN20]])


def test_dapo_loss_by_hand():
    b = _batch([[1.0, 0.0]])
    cfg = config.preset("dapo")
    # A = (+1, -1); rollout 1: ratio 1.5 clipped to 1.28 -> -1.28 per token (2 tokens);
    # rollout 2: ratio 20, A=-1 -> max(20, 1.2) = 20, dual clip min(20, 10) = 10 (1 token)
    total, _ = loss.loss_terms(_logp(b), b, cfg)
    np.testing.assert_allclose(total, (-1.28 * 2 + 10.0) / 3, rtol=1e-5)
    # KL (k3, delta = log 2 on every token) and NLL on the correct rollout
    ref = _logp(b) + math.log(2.0)
    cfg2 = config.preset("dapo", kl_weight=0.5, nll_coef=0.1)
    total2, parts2 = loss.loss_terms(_logp(b), b, cfg2, ref)
    k3 = 2.0 - math.log(2.0) - 1.0
    nll = 1.5 - LN15  # -mean(-1 + ln1.5, -2 + ln1.5)
    np.testing.assert_allclose(parts2["kl"], k3, rtol=1e-5)
    np.testing.assert_allclose(parts2["nll"], nll, rtol=1e-5)
    np.testing.assert_allclose(total2, (-1.28 * 2 + 10.0) / 3 + 0.5 * k3 + 0.1 * nll, rtol=1e-5)


def test_drgrpo_and_grpo_by_hand():
    b = _batch([[1.0, 0.0]])
    # Dr.GRPO: A = (0.5, -0.5), eps 0.2: rollout 1 -0.5*1.2 per token, sum -1.2; rollout 2:
    # max(0.5*20, 0.5*0.8) = 10 (no dual clip); seq_sum = mean over sequences = (-1.2+10)/2
    total, _ = loss.loss_terms(_logp(b), b, config.preset("drgrpo"))
    np.testing.assert_allclose(total, (-1.2 + 10.0) / 2, rtol=1e-5)
    # GRPO: A = (1, -1), seq-mean-token-mean: (-1.2 + 20) / 2
    total, _ = loss.loss_terms(_logp(b), b, config.preset("grpo"))
    np.testing.assert_allclose(total, (-1.2 + 20.0) / 2, rtol=1e-4)


def test_weights_and_invalid_groups():
    b = _batch([[1.0, 0.0]], weight=[[2.0, 1.0]])
    np.testing.assert_allclose(loss.advantages(b, config.preset("dapo", eg_mode="advantage")),
                               [[2.0, -1.0]], rtol=1e-5)
    b = _batch([[1.0, 0.0]], valid=(False,))
    assert float(loss.loss_terms(_logp(b), b, config.preset("dapo"))[0]) == 0.0
    with pytest.raises(ValueError):
        config.preset("ppo")
    with pytest.raises(ValueError):
        config.preset("dapo", num_demo=9)


def _tagged(rewards, tag):
    r = _batch(rewards, valid=(True,) * len(rewards))
    return r._replace(step_correct=np.full(np.shape(rewards), tag, np.float32))


def test_dynamic_sampling_refill():
    draws = [[[1, 1], [0, 1]], [[0, 0], [0, 0]], [[1, 0], [1, 0]]]

    def fake(max_rounds):
        it = iter(enumerate(draws))

        def draw():
            i, r = next(it)
            return _tagged(r, i)

        return rollouts.collect_groups(draw, 2, dynamic=True, max_rounds=max_rounds)

    out, st = fake(3)
    assert st == rollouts.SamplingStats(rounds=3, kept=2, dropped=3, filled=0)
    np.testing.assert_array_equal(out.reward, [[0, 1], [1, 0]])
    np.testing.assert_array_equal(out.step_correct[:, 0], [0, 2])  # draw 0 group 1, draw 2
    assert out.valid.all()
    out, st = fake(2)  # only one informative group in two draws: fill with a dropped one
    assert st == rollouts.SamplingStats(rounds=2, kept=1, dropped=3, filled=1)
    np.testing.assert_array_equal(out.valid, [True, False])
    np.testing.assert_array_equal(out.reward, [[0, 1], [1, 1]])
    out, st = rollouts.collect_groups(lambda: _tagged(draws[1], 7), 2, dynamic=False, max_rounds=3)
    assert st.rounds == 1 and out.valid.all()


def _tiny():
    tok = CharTokenizer()
    cfg = models.tiny_config(vocab_size=tok.vocab_size, dim=32, ffn_dim=64, n_layers=1,
                             n_heads=2, n_kv_heads=1)
    graphdef, params = nnx.split(models.create_model(cfg, seed=0))
    return tok, graphdef, params


def test_in_context_groups_and_update_logprobs():
    tok, graphdef, params = _tiny()
    splits = tasks.make_splits(2, 10, 0, 0, seed=1, num_ops=(1,))
    prompts, demo = rollouts.build_prompts(tok, splits.train, splits.demo, 8, 6, random.Random(0))
    # demos drawn once per batch: slot k holds the same demo for every prompt
    assert len(set(demo[0, :6])) == 6 and (demo[1] == demo[0]).all() and (demo[:, 6:] == -1).all()
    for p, prob in enumerate(splits.train):
        for g in range(8):
            shots = [splits.demo[demo[p, g]]] if demo[p, g] >= 0 else []
            assert tok.decode(prompts[p][g]) == tasks.format_prompt(prob.question, shots)
    cfg = config.preset("dapo", group_size=3, num_demo=2, max_prompt_len=16, max_new_tokens=12)
    pool = rollouts.encode_demo_pool(tok, splits.demo)
    batch, texts = rollouts.sample_rollouts(graphdef, params, tok, splits.train, splits.demo,
                                     jax.random.key(0), cfg, random.Random(0), pool=pool)
    assert batch.prompt.shape == (2, 3, 16) and len(texts) == 6  # own prompts, not padded
    assert (batch.demo[:, :2] == batch.demo[0, :2]).all() and (batch.demo[:, 2] == -1).all()
    # the mask ends where the scored text ends (independent check: decode every prefix)
    for p in range(2):
        for g in range(3):
            toks = [int(t) for t in batch.completion[p, g]]
            n = int(batch.completion_mask[p, g].sum())
            full = [t for t in toks if t not in (tok.eos_id, tok.pad_id)]
            assert tok.decode(full[:n]).startswith(texts[p * 3 + g])
            assert not any(s in tok.decode(full[:n - 1]) for s in tasks.STOP_STRINGS)
    demos = rollouts.demo_prefixes(pool, batch.demo, 2)
    assert demos.tokens.shape[0] == 2 and (demos.index == [[0, 1], [0, 1]]).all()
    lp = loss.rollout_logprobs(graphdef, params, batch, demos=demos)
    # first update: ratio 1 (recomputed on the same demo prompt)
    np.testing.assert_allclose(lp, batch.old_logp, atol=2e-5)
    # and it is the log-prob under the *demo-augmented* prompt, unpadded
    for p, g in ((1, 0), (0, 1), (1, 2)):
        shots = [splits.demo[batch.demo[p, g]]] if batch.demo[p, g] >= 0 else []
        ids = tasks.encode_prompt(tok, splits.train[p].question, shots)
        n = int(batch.completion_mask[p, g].sum())
        ref = models.logprobs(graphdef, params, jnp.array([ids]), jnp.ones((1, len(ids)), bool),
                              jnp.asarray(batch.completion[p, g, :n])[None],
                              jnp.ones((1, n), bool))
        np.testing.assert_allclose(lp[p, g, :n], ref[0], atol=2e-5)


def test_demo_prefixes_after_dynamic_sampling():
    pool = (np.arange(40).reshape(10, 4), np.ones((10, 4), bool))
    demo = np.array([[3, 7, -1], [3, 7, -1], [5, 1, -1]])  # groups from two generation batches
    d = rollouts.demo_prefixes(pool, demo, 2)
    assert d.tokens.shape == (4, 4)  # U = 4 distinct, a multiple of K = 2
    np.testing.assert_array_equal(d.tokens[d.index], pool[0][demo[:, :2]])
    d = rollouts.demo_prefixes(pool, demo[:2], 2)
    assert d.tokens.shape == (2, 4)
    np.testing.assert_array_equal(d.tokens[d.index], pool[0][demo[:2, :2]])
    assert rollouts.demo_prefixes(pool, demo, 0) is None


def test_eg_modes_by_hand():
    # reward mode: GRPO on w * R with w mean 1 over the group; advantage mode: A * w
    b = _batch([[1.0, 0.0]], weight=[[1.5, 0.5]])
    np.testing.assert_allclose(loss.advantages(b, config.preset("drgrpo")), [[0.75, -0.75]],
                               rtol=1e-5)
    np.testing.assert_allclose(loss.advantages(b, config.preset("drgrpo", eg_mode="advantage")),
                               [[0.75, -0.25]], rtol=1e-5)
    with pytest.raises(ValueError, match="eg_signal"):
        config.preset("dapo", eg_signal="exp")


def test_pass_at_k():
    assert evaluation.pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert evaluation.pass_at_k(4, 0, 1) == 0.0 and evaluation.pass_at_k(4, 3, 2) == 1.0


def test_tiny_model_learns_a_trivial_reward():
    tok, graphdef, params = _tiny()
    splits = tasks.make_splits(20, 4, 0, 0, seed=2, num_ops=(1,))
    digit = lambda text, _: float(text[:1].isdigit())  # 10 of 34 ids at init
    cfg = config.preset("dapo", group_size=8, prompts_per_step=4, max_prompt_len=12,
                   max_new_tokens=1, lr=3e-2, warmup_steps=1, weight_decay=0.0, num_demo=0)
    lrn = learner.Learner(graphdef, params, tok, cfg, reward_fn=digit)
    rng = random.Random(0)
    problems = lambda n: rng.sample(splits.train, n)
    for step in range(8):
        m = lrn.step(problems, jax.random.key(step))
    first, last = lrn.history[0]["reward"], np.mean([h["reward"] for h in lrn.history[-2:]])
    assert last > first + 0.3, [h["reward"] for h in lrn.history]
    assert np.isfinite(m["loss"]) and m["rounds"] >= 1


@pytest.mark.slow  # one more train-step compile
def test_kl_nll_and_eg_options_run():
    tok, graphdef, params = _tiny()
    splits = tasks.make_splits(8, 4, 2, 0, seed=4, num_ops=(1,))
    cfg = config.preset("grpo", group_size=4, prompts_per_step=2, max_prompt_len=12,
                   max_new_tokens=8, lr=1e-3, warmup_steps=1, kl_weight=0.1, nll_coef=0.1,
                   eg_reweight=True)
    lrn = learner.Learner(graphdef, params, tok, cfg, probes=splits.probe,
                    reward_fn=lambda text, _: float(text[:1].isdigit()))
    m = lrn.step(lambda n: splits.train[:n], jax.random.key(0))
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)  # first update: policy == reference
    assert np.isfinite(m["loss"]) and "nll" in m
    with pytest.raises(ValueError, match="probe"):
        learner.Learner(graphdef, params, tok, cfg)
