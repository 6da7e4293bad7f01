"""ProRL's RL update: rollouts, simulator rewards, SRC, an advantage estimator, exact KL.

One jitted step per batch of prompts: sample ``G`` paths per prompt at temperature 1, score
every prefix with the frozen simulator, turn the scores into step rewards (IoI, IoR, CTR),
centre them with the running statistics (Stepwise Reward Centering; gathered during the
first epoch, then frozen), compute advantages with the estimator chosen by name, and
minimise

.. math:: \\mathcal{L} = -\\frac{1}{PG}\\sum_{p,g,t} \\log\\pi(a_t) A_t
          + \\frac{\\beta}{\\#\\text{actions}}\\sum_t KL(\\pi_t \\| \\pi_{ref,t})

with the exact per-step KL over the action distribution (the reference's
``β(log π − log π_ref)`` term has zero expected gradient on-policy). A batch whose rewards
contain NaN/inf is skipped (parameters unchanged) and counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from recrl import estimators as est
from recrl.prs.policy import (
    PathPolicy,
    action_log_probs,
    action_tokens,
    masked_log_softmax,
    path_logits,
)
from recrl.prs.rewards import COMPONENTS, contains_target, duplicates, step_rewards
from recrl.prs.rollout import generate, path_uniforms

# method name -> (registered advantage estimator, stepwise reward centring)
METHODS: dict[str, tuple[str, bool]] = {
    "prorl": ("psae", True),
    "prorl_no_src": ("psae", False),
    "prorl_no_psae": ("drgrpo", True),  # SRC with a path-level group-mean baseline
    "psae_loo": ("psae_loo", True),
    "reinforce": ("reinforce", True),
    "rtg": ("rtg", True),
    "grpo": ("grpo", True),
    "rloo": ("rloo", True),
    "a2c": ("rtg", True),  # reward-to-go minus a learned MLP value of the policy's state
}
CRITIC_METHODS = frozenset({"a2c"})
# Loss aggregation over a path's actions: ProRL's estimator sums them ("seq_sum"); GRPO
# averages within each path first (its 1/|o| term, the source of its length bias).
AGGREGATION: dict[str, str] = {"grpo": "seq_mean_token_mean"}
_CRITIC_HIDDEN = 64
_CRITIC_LR = 1e-3


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """RL hyper-parameters (defaults: the paper's ML-1M recipe and the reference's code).

    Attributes:
      method: a key of :data:`METHODS`.
      samples: ``G`` paths per prompt.
      lr, warmup_steps: AdamW, linear warm-up then constant.
      weight_decay: AdamW weight decay (the reference: 0.05).
      clip: global gradient-norm clip.
      kl_weight: ``β`` of the exact KL to the pretrained policy.
      reward_weights: weights of (IoI, IoR, CTR) after centring; the reference fuses
        ``ÎoI + ÎoR + ĈTR / L_max``, i.e. ``(1, 1, 0.1)`` at ``L_max = 10``.
      min_std: floor of the SRC standard deviations.
      sample_std: SRC divides by the sample std (``n − 1``, the reference's) instead of the
        population std.
      stats_real_items: SRC statistics count real items only (a repeated item of a path is
        left out, as the reference does); ``False`` counts every item step.
      mask_target: remove the prompt's target from the action space (sampling and
        log-probs); see :mod:`recrl.prs.rollout`.
      micro_batches: the update's prompts are processed in this many equal micro-batches
        (rollouts, scoring, forward and backward) and the gradients accumulated: one update
        of the whole batch at a fraction of the memory, equal to the unsplit step (the SRC
        statistics take the whole batch's rewards before any is centred).
      temperature: sampling temperature.
    """

    method: str = "prorl"
    samples: int = 16
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.05
    clip: float = 1.0
    kl_weight: float = 0.01
    reward_weights: tuple[float, float, float] = (1.0, 1.0, 0.1)
    min_std: float = 0.1
    sample_std: bool = True
    stats_real_items: bool = True
    mask_target: bool = True
    micro_batches: int = 1
    temperature: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown RL method {self.method!r}; known: {', '.join(METHODS)}")
        if self.samples < 2:
            raise ValueError(f"need at least 2 samples per prompt, got {self.samples}")
        if len(self.reward_weights) != len(COMPONENTS):
            raise ValueError(f"reward_weights needs {len(COMPONENTS)} entries (IoI, IoR, CTR)")
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")

    @property
    def estimator(self) -> str:
        return METHODS[self.method][0]

    @property
    def src(self) -> bool:
        return METHODS[self.method][1]

    @property
    def aggregation(self) -> str:
        return AGGREGATION.get(self.method, "seq_sum")


class RLState(NamedTuple):
    """Everything an RL run carries between steps (a pytree; checkpointed as is)."""

    params: Any
    opt_state: Any
    ref_params: Any
    stats: est.RewardStats
    collect_stats: jax.Array  # bool: SRC statistics still being gathered
    step: jax.Array
    skipped: jax.Array  # batches skipped for non-finite rewards
    critic: Any  # MLP value head (A2C only; carried but unused by the other methods)
    critic_opt: Any


def init_critic(key: jax.Array, dim: int, hidden: int = _CRITIC_HIDDEN) -> dict:
    """A 2-layer MLP value head on the policy's (stop-gradient) hidden state."""
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (dim, hidden)) / jnp.sqrt(dim),
            "b1": jnp.zeros((hidden,)),
            "w2": jax.random.normal(k2, (hidden, 1)) * 0.01, "b2": jnp.zeros((1,))}


def critic_values(critic: dict, feats: jax.Array) -> jax.Array:
    """``V(s_t)`` for features ``[..., dim]`` → ``[...]``."""
    h = jax.nn.relu(feats @ critic["w1"] + critic["b1"])
    return (h @ critic["w2"] + critic["b2"])[..., 0]


def make_optimizer(cfg: RLConfig) -> optax.GradientTransformation:
    warmup = max(cfg.warmup_steps, 1)
    sched = lambda count: cfg.lr * jnp.minimum(1.0, (count + 1) / warmup)
    return optax.chain(optax.clip_by_global_norm(cfg.clip),
                       optax.adamw(sched, weight_decay=cfg.weight_decay))


def init_state(policy: PathPolicy, cfg: RLConfig) -> tuple[RLState, Any]:
    """Initial state from a pretrained policy (also the KL reference); returns (state, graph)."""
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)
    critic = init_critic(jax.random.key(0), policy.cfg.dim)
    state = RLState(
        params=params, opt_state=make_optimizer(cfg).init(params),
        ref_params=jax.tree.map(jnp.copy, params),
        stats=est.reward_stats_init(len(COMPONENTS)), collect_stats=jnp.array(True),
        step=jnp.array(0, jnp.int32), skipped=jnp.array(0, jnp.int32),
        critic=critic, critic_opt=optax.adam(_CRITIC_LR).init(critic),
    )
    return state, (graphdef, rest)


def src_mean_std(stats: est.RewardStats, sample: bool = True) -> tuple[jax.Array, jax.Array]:
    """SRC's mean and std from running moments: the sample std ``sqrt(M2 / (n − 1))`` (the
    reference's) or, with ``sample=False``, the population std ``sqrt(M2 / n)``."""
    mean, std = est.reward_stats_mean_std(stats)
    if not sample:
        return mean, std
    n = stats.count
    return mean, jnp.where(n > 1, jnp.sqrt(stats.m2 / jnp.maximum(n - 1.0, 1.0)), std)


def _pg_numerator(taken: jax.Array, adv: jax.Array, mask: jax.Array, aggregation: str
                  ) -> jax.Array:
    """Numerator of :func:`recrl.estimators.policy_gradient_loss` (its denominator is global
    over the whole update: paths for ``seq_sum``, paths with an action otherwise)."""
    per_token = -taken * jax.lax.stop_gradient(adv) * mask
    if aggregation == "seq_sum":
        return jnp.sum(per_token)
    if aggregation == "seq_mean_token_mean":
        return jnp.sum(jnp.sum(per_token, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0))
    raise ValueError(f"aggregation {aggregation!r} is not supported by the RL step")


def _pg_denominator(mask: jax.Array, aggregation: str) -> jax.Array:
    if aggregation == "seq_sum":
        return jnp.asarray(mask.shape[0], jnp.float32)
    return jnp.maximum(jnp.sum(jnp.sum(mask, -1) > 0).astype(jnp.float32), 1.0)


def _make_core(graph: Any, score_fn: Callable[..., Any], cfg: RLConfig) -> Callable[..., Any]:
    """The un-jitted body of one update: rollouts, rewards, SRC, advantages, gradients.

    Returns ``core(state, sim_state, history [P, H], target [P], key) -> (grads,
    critic_grads, stats, finite, metrics)``; the gradients are those of the whole batch's
    loss, accumulated over ``cfg.micro_batches`` micro-batches.
    """
    graphdef, rest = graph
    estimator = est.get_advantage_estimator(cfg.estimator)
    reinforce = est.get_advantage_estimator("reinforce")
    weights = jnp.asarray(cfg.reward_weights, jnp.float32)
    G, M = cfg.samples, cfg.micro_batches
    use_critic = cfg.method in CRITIC_METHODS

    def policy_of(params):
        return nnx.merge(graphdef, params, rest)

    def core(state: RLState, sim_state: Any, history: jax.Array, target: jax.Array,
             key: jax.Array):
        P = history.shape[0]
        if P % M:
            raise ValueError(f"{P} prompts do not split into {M} equal micro-batches")
        pcfg = policy_of(state.params).cfg
        T, n_items = pcfg.max_len, pcfg.num_items
        split = lambda x: x.reshape((M, x.shape[0] // M) + x.shape[1:])
        merge = lambda x: x.reshape((-1,) + x.shape[2:])
        noise = path_uniforms(key, P * G, T)

        def rollout(xs):
            h, t, u = xs
            hh, tt = jnp.repeat(h, G, axis=0), jnp.repeat(t, G, axis=0)
            paths = generate(policy_of(state.params), hh, tt, None,
                             temperature=cfg.temperature, mask_target=cfg.mask_target,
                             uniforms=u)
            safe = jnp.where(paths.path < n_items, paths.path, 0)
            scores = score_fn(sim_state, hh, safe, paths.lengths, tt)
            return paths.path, paths.lengths, step_rewards(scores, safe, paths.lengths)

        path, lengths, comps = jax.tree.map(
            merge, jax.lax.map(rollout, (split(history), split(target), split(noise))))
        hist, tgt = jnp.repeat(history, G, axis=0), jnp.repeat(target, G, axis=0)
        safe_path = jnp.where(path < n_items, path, 0)
        item, eos = est.path_masks(lengths, T)
        finite = jnp.all(jnp.isfinite(comps))
        comps = jnp.where(finite, comps, 0.0)

        real = item * (1.0 - duplicates(safe_path, lengths)) if cfg.stats_real_items else item
        new_stats = est.reward_stats_update(state.stats, comps, real)
        stats = jax.tree.map(lambda n, o: jnp.where(state.collect_stats & finite, n, o),
                             new_stats, state.stats)
        mean, std = src_mean_std(stats, cfg.sample_std)
        centred = est.center_rewards(comps, mean, std, weights, cfg.min_std) * item
        raw = jnp.sum(comps * weights, -1)
        r = centred if cfg.src else raw
        shape = (P, G, T)
        adv = estimator(r.reshape(shape), item.reshape(shape), eos.reshape(shape))
        adv = adv.reshape(item.shape)
        adv_rf = reinforce(r.reshape(shape), item.reshape(shape), eos.reshape(shape))
        adv_rf = adv_rf.reshape(item.shape)
        act_mask = item + eos
        acts = action_tokens(pcfg, path, lengths)
        n_act = jnp.maximum(act_mask.sum(), 1.0)
        pg_den = _pg_denominator(act_mask, cfg.aggregation)
        mask_tgt = tgt if cfg.mask_target else None

        def micro(carry, xs):
            g_acc, cg_acc, sums = carry
            h, t, p, ln, a, m, ac, mt = xs
            mt = mt if cfg.mask_target else None
            if use_critic:  # A2C: subtract V(s_t) at every action (reward-to-go is 0 at EOS)
                _, feats = path_logits(policy_of(state.params), h, t, p, ln, return_hidden=True)
                feats = jax.lax.stop_gradient(feats)

                def critic_loss_fn(c):
                    return jnp.sum(((a - critic_values(c, feats)) * m) ** 2) / n_act

                c_loss, c_grads = jax.value_and_grad(critic_loss_fn)(state.critic)
                a = (a - critic_values(state.critic, feats)) * m
            else:
                c_loss, c_grads = jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.critic)
            ref_logits = jax.lax.stop_gradient(
                path_logits(policy_of(state.ref_params), h, t, p, ln))

            def loss_fn(params):
                logits = path_logits(policy_of(params), h, t, p, ln)
                _, taken = action_log_probs(logits, ac, target=mt)
                pg = _pg_numerator(taken, a, m, cfg.aggregation) / pg_den
                allowed = jnp.isfinite(masked_log_softmax(logits, target=mt))
                kl_t = est.full_kl(logits, ref_logits, where=allowed)
                kl = jnp.sum(kl_t * m) / n_act
                return pg + cfg.kl_weight * kl, (pg, kl)

            (loss, (pg, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params)
            add = lambda x, y: jax.tree.map(jnp.add, x, y)
            part = {"loss": loss, "pg_loss": pg, "kl": kl, "critic_loss": c_loss,
                    "adv_sum": jnp.sum(a * m), "adv_sq": jnp.sum(a * a * m)}
            return (add(g_acc, grads), add(cg_acc, c_grads), add(sums, part)), None

        zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
        sums0 = {k: jnp.zeros(()) for k in ("loss", "pg_loss", "kl", "critic_loss", "adv_sum",
                                               "adv_sq")}
        xs = tuple(split(x) for x in (hist, tgt, path, lengths, adv, act_mask, acts,
                                      tgt if mask_tgt is not None else jnp.zeros_like(tgt)))
        (grads, c_grads, sums), _ = jax.lax.scan(
            micro, (zeros(state.params), zeros(state.critic), sums0), xs)
        # the advantage actually weighting the log-probs (A2C: after its critic)
        adv_mean = sums["adv_sum"] / n_act
        n_items_f = jnp.maximum(item.sum(), 1.0)
        pos_n = jnp.maximum(item.sum(0), 1.0)
        centred_pos = jnp.sum(centred, 0) / pos_n  # [T] mean centred step reward per position
        rf_mean = jnp.sum(adv_rf * act_mask) / n_act
        metrics = {
            "loss": sums["loss"], "pg_loss": sums["pg_loss"], "kl": sums["kl"],
            "grad_norm": optax.tree.norm(grads),
            "length": jnp.mean(lengths.astype(jnp.float32)),
            "adv_var": sums["adv_sq"] / n_act - adv_mean**2,
            "adv_var_reinforce": jnp.sum((adv_rf - rf_mean) ** 2 * act_mask) / n_act,
            "centred_return": jnp.mean(centred.sum(-1)),
            "target_share": jnp.mean(contains_target(safe_path, lengths, tgt)),
            "duplicate_share": jnp.sum(item - real) / n_items_f,
            "finite": finite,
            "critic_loss": sums["critic_loss"],
            **{f"step_{c}": jnp.sum(comps[..., i]) / n_items_f for i, c in enumerate(COMPONENTS)},
            **{f"centred_pos{t + 1}": centred_pos[t] for t in range(T)},
            "path_ioi": jnp.mean(comps[..., 0].sum(-1)),
            "path_ior": jnp.mean(comps[..., 1].sum(-1)),
            "path_ctr": jnp.mean(comps[..., 2].sum(-1) / jnp.maximum(lengths, 1)),
        }
        return grads, c_grads, stats, finite, metrics

    return core


def make_train_step(graph: Any, score_fn: Callable[..., Any], cfg: RLConfig
                    ) -> Callable[..., tuple[RLState, dict]]:
    """Builds the jitted RL step.

    Args:
      graph: ``(graphdef, rest)`` from :func:`init_state`.
      score_fn: ``score_fn(sim_state, history, path, lengths, target) -> StepScores`` (the
        frozen simulator; ``path`` holds valid item ids everywhere, padding included).
      cfg: hyper-parameters.

    Returns:
      ``step(state, sim_state, history [P, H], target [P], key) -> (state, metrics)``. The
      metrics include the diagnostics of ``docs/prorl.md``: sampled length, advantage
      variance (and REINFORCE's on the same rewards), the share of paths containing their
      target, the share of duplicate item steps, the mean centred step reward per position
      (``centred_pos1..T``).
    """
    tx = make_optimizer(cfg)
    critic_tx = optax.adam(_CRITIC_LR)
    core = _make_core(graph, score_fn, cfg)
    use_critic = cfg.method in CRITIC_METHODS

    @jax.jit
    def step(state: RLState, sim_state: Any, history: jax.Array, target: jax.Array,
             key: jax.Array) -> tuple[RLState, dict]:
        grads, c_grads, stats, finite, metrics = core(state, sim_state, history, target, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        critic, critic_opt = state.critic, state.critic_opt
        if use_critic:
            c_updates, critic_opt = critic_tx.update(c_grads, critic_opt, critic)
            critic = optax.apply_updates(critic, c_updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = RLState(
            params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
            ref_params=state.ref_params, stats=stats, collect_stats=state.collect_stats,
            step=state.step + 1, skipped=state.skipped + (~finite).astype(jnp.int32),
            critic=keep(critic, state.critic), critic_opt=keep(critic_opt, state.critic_opt),
        )
        return new_state, metrics

    return step


def make_gradient_fn(graph: Any, score_fn: Callable[..., Any], cfg: RLConfig
                     ) -> Callable[..., jax.Array]:
    """Jitted ``grad(state, sim_state, history, target, key) -> [n_params]``: the flattened
    policy-gradient estimate of ``cfg.method`` on one batch (no KL term, no update, the SRC
    statistics read as they are), for :func:`gradient_diagnostics`."""
    core = _make_core(graph, score_fn, dataclasses.replace(cfg, kl_weight=0.0))

    @jax.jit
    def grad(state, sim_state, history, target, key):
        grads = core(state._replace(collect_stats=jnp.array(False)), sim_state, history,
                     target, key)[0]
        return jax.flatten_util.ravel_pytree(grads)[0]

    return grad


def gradient_diagnostics(grads: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Quality of a gradient estimator from its per-batch estimates.

    Args:
      grads: ``[K, n]`` one estimate per batch (``K >= 2``).
      reference: ``[n]`` a reference gradient (e.g. an unbiased estimator averaged over
        many batches).

    Returns:
      ``{"cosine": mean over batches of cos(g_k, reference), "mean_cosine": cos(mean_k g_k,
      reference), "snr": |mean g|² / mean_k |g_k − mean g|²}``.
    """
    g = np.asarray(grads, np.float64)
    ref = np.asarray(reference, np.float64)
    if g.ndim != 2 or g.shape[0] < 2 or g.shape[1] != ref.shape[-1]:
        raise ValueError(f"grads must be [K >= 2, n] and reference [n]: {g.shape}, {ref.shape}")
    cos = lambda a, b: float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    mean = g.mean(0)
    noise = float(np.mean(np.sum((g - mean) ** 2, 1)))
    return {"cosine": float(np.mean([cos(x, ref) for x in g])),
            "mean_cosine": cos(mean, ref),
            "snr": float(mean @ mean) / max(noise, 1e-30)}


def freeze_stats(state: RLState) -> RLState:
    """Stops gathering SRC statistics (call after the first epoch)."""
    return state._replace(collect_stats=jnp.array(False))
