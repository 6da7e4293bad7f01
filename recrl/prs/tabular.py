"""The tabular path policy behind ``experiments/length_bias.py`` (ProRL's Theorem 1).

A policy emits up to ``T`` items, one per position, then EOS. Each item yields two reward
components (an "interest" gain that decays with position, like IoI, and an "acceptance"
score, like CTR), both positive on average, plus noise. Without centring, appending any
item raises the return; SRC and PSAE remove that incentive. Methods are
:class:`recrl.prs.rl.Method` entries (estimator, SRC, aggregation).
"""

from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from recrl import estimators as est
from recrl.prs.rl import Method


def item_table(key: jax.Array, num_items: int, max_len: int, decay: float) -> jax.Array:
    """Mean reward components ``[T, V, 2]``: interest ``g_i decay^t`` and acceptance ``c_i``.

    Acceptance and interest trade off (``g_i ≈ 1.5 − c_i``): the items users accept most
    move their interest least, as in proactive recommendation.
    """
    k1, k2 = jax.random.split(key)
    c = jax.random.uniform(k1, (num_items,), minval=0.6, maxval=0.8)
    g = jnp.clip(1.5 - c + 0.2 * jax.random.normal(k2, (num_items,)), 0.05, None)
    t = jnp.arange(max_len)[:, None]
    return jnp.stack([g[None, :] * decay**t, jnp.broadcast_to(c, (max_len, num_items))], -1)


def log_policy(theta: jax.Array) -> jax.Array:
    """``[T, V+1]`` log-probabilities; EOS (last action) is not allowed at position 0."""
    allowed = jnp.ones(theta.shape, bool).at[0, -1].set(False)
    return jnp.where(allowed, jax.nn.log_softmax(jnp.where(allowed, theta, -1e9), -1), -jnp.inf)


def sample_paths(theta: jax.Array, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Samples ``n`` paths: actions ``[n, T]`` (EOS = V after the end) and lengths ``[n]``."""
    logpi = log_policy(theta)
    eos = theta.shape[1] - 1
    acts = jax.random.categorical(key, logpi[None], shape=(n, theta.shape[0]))
    stopped = jnp.cumsum(acts == eos, axis=1) > 0
    lengths = jnp.sum(~stopped, axis=1).astype(jnp.int32)
    return jnp.where(stopped, eos, acts), lengths


def best_centred_length(table: jax.Array, mean: jax.Array, std: jax.Array) -> int:
    """Length maximising the expected centred return of the best item at every position."""
    best = jnp.max(est.center_rewards(table, mean, std), axis=1)  # [T]
    cum = jnp.concatenate([jnp.zeros(1), jnp.cumsum(best)])[1:]
    return int(jnp.argmax(cum)) + 1


def initial_theta(max_len: int, num_items: int, init_stop: float) -> jax.Array:
    """Logits uniform over items, EOS with probability ``init_stop`` wherever it is allowed."""
    eos_logit = jnp.log(init_stop * num_items / (1.0 - init_stop))
    return jnp.zeros((max_len, num_items + 1)).at[:, num_items].set(eos_logit)


def rewards_of(table: jax.Array, acts: jax.Array, lengths: jax.Array, key: jax.Array,
               noise: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Noisy reward components ``[n, T, 2]`` (0 off the items) and the path masks."""
    T, V = table.shape[0], table.shape[1]
    item, eos = est.path_masks(lengths, T)
    comps = table[jnp.arange(T), jnp.minimum(acts, V - 1)]
    comps = comps + noise * jax.random.normal(key, comps.shape)
    return comps * item[..., None], item, eos


def initial_policy_stats(table: jax.Array, theta: jax.Array, key: jax.Array, noise: float,
                         n: int = 50_000) -> tuple[jax.Array, jax.Array]:
    """Reward moments under the initial policy: the common yardstick of the summary table."""
    k1, k2 = jax.random.split(key)
    acts, lengths = sample_paths(theta, k1, n)
    comps, item, _ = rewards_of(table, acts, lengths, k2, noise)
    return est.reward_stats_mean_std(est.reward_stats_update(est.reward_stats_init(2), comps, item))


@partial(jax.jit, static_argnames=("method", "cfg"))
def train(key: jax.Array, table: jax.Array, eval_stats: tuple, method: Method,
          cfg: tuple) -> dict:
    """Trains one policy; returns per-step metrics and the final SRC statistics.

    ``eval_stats`` (mean, std) centre the reported ``centred_return`` identically for every
    run; training itself centres with its own first-epoch statistics when ``method.src``.
    """
    steps, src_steps, P, G, noise, lr, init_stop = cfg
    T, V = table.shape[0], table.shape[1]
    estimator = est.get_advantage_estimator(method.estimator)
    tx = optax.adam(lr)
    theta = initial_theta(T, V, init_stop)

    def step(carry, i):
        theta, opt_state, stats, key = carry
        key, k_path, k_noise = jax.random.split(key, 3)
        acts, lengths = sample_paths(theta, k_path, P * G)
        comps, item, eos = rewards_of(table, acts, lengths, k_noise, noise)
        stats = jax.tree.map(
            lambda new, old: jnp.where(i < src_steps, new, old),
            est.reward_stats_update(stats, comps, item), stats,
        )
        mean, std = est.reward_stats_mean_std(stats)
        centred = est.center_rewards(comps, mean, std) * item
        r = centred if method.src else jnp.sum(comps, -1)
        shape = (P, G, T)
        adv = estimator(r.reshape(shape), item.reshape(shape), eos.reshape(shape))
        act = (item + eos).reshape(shape)

        def loss_fn(theta):
            lp = log_policy(theta)[jnp.arange(T), acts].reshape(shape)
            return est.policy_gradient_loss(jnp.where(act > 0, lp, 0.0), adv, act,
                                            method.aggregation)

        grads = jax.grad(loss_fn)(theta)
        updates, opt_state = tx.update(grads, opt_state, theta)
        theta = optax.apply_updates(theta, updates)
        n_act = jnp.maximum(act.sum(), 1.0)
        adv_mean = jnp.sum(adv * act) / n_act
        metrics = {
            "length": jnp.mean(lengths.astype(jnp.float32)),
            "adv_var": jnp.sum((adv - adv_mean) ** 2 * act) / n_act,
            "raw_return": jnp.mean(jnp.sum(comps, (-1, -2))),
            "centred_return": jnp.mean(jnp.sum(est.center_rewards(comps, *eval_stats) * item, -1)),
            "grad_norm": optax.tree.norm(grads),
        }
        return (theta, opt_state, stats, key), metrics

    init = (theta, tx.init(theta), est.reward_stats_init(2), key)
    (theta, _, stats, _), metrics = jax.lax.scan(step, init, jnp.arange(steps))
    return {"metrics": metrics, "stats_mean": stats.mean,
            "stats_std": est.reward_stats_mean_std(stats)[1]}


def run_all(methods: dict[str, Method], *, steps: int, src_steps: int, prompts: int,
            group_size: int, max_len: int, num_items: int, decay: float, noise: float, lr: float,
            init_stop: float, seeds: int, seed: int) -> dict:
    """Trains every named method for ``seeds`` seeds; returns metrics ``[seeds, steps]`` per
    run, the item table and the centred optimum of the initial policy's statistics."""
    if any(m.critic for m in methods.values()):
        raise ValueError("a method with a critic is not supported by the tabular policy")
    key = jax.random.key(seed)
    table = item_table(jax.random.fold_in(key, 10_000), num_items, max_len, decay)
    keys = jax.random.split(key, seeds)
    if not 0.0 < init_stop < 1.0:
        raise ValueError(f"init_stop must be in (0, 1), got {init_stop}")
    cfg = (steps, src_steps, prompts, group_size, noise, lr, init_stop)
    eval_stats = initial_policy_stats(table, initial_theta(max_len, num_items, init_stop),
                                      jax.random.fold_in(key, 20_000), noise)
    results = {}
    for r, m in methods.items():
        t0 = time.perf_counter()
        out = jax.vmap(lambda k, m=m: train(k, table, eval_stats, m, cfg))(keys)
        out = jax.tree.map(np.asarray, out)
        out["own_optimum"] = np.array([
            best_centred_length(table, jnp.asarray(m), jnp.asarray(s))
            for m, s in zip(out["stats_mean"], out["stats_std"], strict=True)
        ])
        logging.info("%-14s %d seeds x %d steps in %.1fs", r, seeds, steps,
                     time.perf_counter() - t0)
        results[r] = out
    optimum = best_centred_length(table, *eval_stats)
    return {"runs": results, "table": np.asarray(table), "centred_optimum": optimum}
