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
import jax.numpy as jnp
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
from recrl.prs.rewards import COMPONENTS, step_rewards
from recrl.prs.rollout import generate

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
    """RL hyper-parameters (defaults: the paper's ML-1M recipe).

    Attributes:
      method: a key of :data:`METHODS`.
      samples: ``G`` paths per prompt.
      lr, warmup_steps, total_steps: AdamW, linear warm-up then constant.
      clip: global gradient-norm clip.
      kl_weight: ``β`` of the exact KL to the pretrained policy.
      reward_weights: weights of (IoI, IoR, CTR) after centring.
      min_std: floor of the SRC standard deviations.
      temperature: sampling temperature.
    """

    method: str = "prorl"
    samples: int = 16
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip: float = 1.0
    kl_weight: float = 0.01
    reward_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    min_std: float = 0.1
    temperature: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown RL method {self.method!r}; known: {', '.join(METHODS)}")
        if self.samples < 2:
            raise ValueError(f"need at least 2 samples per prompt, got {self.samples}")
        if len(self.reward_weights) != len(COMPONENTS):
            raise ValueError(f"reward_weights needs {len(COMPONENTS)} entries (IoI, IoR, CTR)")

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


def make_train_step(graph: Any, score_fn: Callable[..., Any], cfg: RLConfig
                    ) -> Callable[..., tuple[RLState, dict]]:
    """Builds the jitted RL step.

    Args:
      graph: ``(graphdef, rest)`` from :func:`init_state`.
      score_fn: ``score_fn(sim_state, history, path, lengths, target) -> StepScores`` (the
        frozen simulator; ``path`` holds valid item ids everywhere, padding included).
      cfg: hyper-parameters.

    Returns:
      ``step(state, sim_state, history [P, H], target [P], key) -> (state, metrics)``.
    """
    graphdef, rest = graph
    tx = make_optimizer(cfg)
    estimator = est.get_advantage_estimator(cfg.estimator)
    weights = jnp.asarray(cfg.reward_weights, jnp.float32)
    G = cfg.samples
    use_critic = cfg.method in CRITIC_METHODS
    critic_tx = optax.adam(_CRITIC_LR)

    def policy_of(params):
        return nnx.merge(graphdef, params, rest)

    @jax.jit
    def step(state: RLState, sim_state: Any, history: jax.Array, target: jax.Array,
             key: jax.Array) -> tuple[RLState, dict]:
        P = history.shape[0]
        hist = jnp.repeat(history, G, axis=0)
        tgt = jnp.repeat(target, G, axis=0)
        policy = policy_of(state.params)
        paths = generate(policy, hist, tgt, key, temperature=cfg.temperature)
        n_items = policy.cfg.num_items
        safe_path = jnp.where(paths.path < n_items, paths.path, 0)
        scores = score_fn(sim_state, hist, safe_path, paths.lengths, tgt)
        comps = step_rewards(scores, safe_path, paths.lengths)  # [B, T, 3]
        item, eos = est.path_masks(paths.lengths, policy.cfg.max_len)
        finite = jnp.all(jnp.isfinite(comps))
        comps = jnp.where(finite, comps, 0.0)

        new_stats = est.reward_stats_update(state.stats, comps, item)
        stats = jax.tree.map(lambda n, o: jnp.where(state.collect_stats & finite, n, o),
                             new_stats, state.stats)
        mean, std = est.reward_stats_mean_std(stats)
        centred = est.center_rewards(comps, mean, std, weights, cfg.min_std) * item
        raw = jnp.sum(comps * weights, -1)
        r = centred if cfg.src else raw
        shape = (P, G, policy.cfg.max_len)
        adv = estimator(r.reshape(shape), item.reshape(shape), eos.reshape(shape))
        adv = adv.reshape(item.shape)
        act_mask = item + eos
        acts = action_tokens(policy.cfg, paths.path, paths.lengths)
        critic, critic_opt, critic_loss = state.critic, state.critic_opt, jnp.zeros(())
        if use_critic:  # A2C: subtract V(s_t) at every action (reward-to-go is 0 at EOS)
            _, feats = path_logits(policy, hist, tgt, paths.path, paths.lengths,
                                   return_hidden=True)
            feats = jax.lax.stop_gradient(feats)

            def critic_loss_fn(c):
                err = (adv - critic_values(c, feats)) * act_mask
                return jnp.sum(err**2) / jnp.maximum(act_mask.sum(), 1.0)

            critic_loss, c_grads = jax.value_and_grad(critic_loss_fn)(critic)
            adv = (adv - critic_values(critic, feats)) * act_mask
            c_updates, critic_opt = critic_tx.update(c_grads, critic_opt, critic)
            critic = optax.apply_updates(critic, c_updates)
        ref_logits = jax.lax.stop_gradient(
            path_logits(policy_of(state.ref_params), hist, tgt, paths.path, paths.lengths))

        def loss_fn(params):
            logits = path_logits(policy_of(params), hist, tgt, paths.path, paths.lengths)
            _, taken = action_log_probs(logits, acts)
            pg = est.policy_gradient_loss(taken, adv, act_mask, cfg.aggregation)
            allowed = jnp.isfinite(masked_log_softmax(logits))
            kl_t = est.full_kl(logits, ref_logits, where=allowed)
            kl = jnp.sum(kl_t * act_mask) / jnp.maximum(act_mask.sum(), 1.0)
            return pg + cfg.kl_weight * kl, (pg, kl)

        (loss, (pg, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = RLState(
            params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
            ref_params=state.ref_params, stats=stats, collect_stats=state.collect_stats,
            step=state.step + 1, skipped=state.skipped + (~finite).astype(jnp.int32),
            critic=keep(critic, state.critic), critic_opt=keep(critic_opt, state.critic_opt),
        )
        n_act = jnp.maximum(act_mask.sum(), 1.0)
        adv_mean = jnp.sum(adv * act_mask) / n_act
        n_items_f = jnp.maximum(item.sum(), 1.0)
        metrics = {
            "loss": loss, "pg_loss": pg, "kl": kl, "grad_norm": optax.tree.norm(grads),
            "length": jnp.mean(paths.lengths.astype(jnp.float32)),
            "adv_var": jnp.sum((adv - adv_mean) ** 2 * act_mask) / n_act,
            "centred_return": jnp.mean(centred.sum(-1)),
            "finite": finite,
            "critic_loss": critic_loss,
            **{f"step_{c}": jnp.sum(comps[..., i]) / n_items_f for i, c in enumerate(COMPONENTS)},
            "path_ioi": jnp.mean(comps[..., 0].sum(-1)),
            "path_ior": jnp.mean(comps[..., 1].sum(-1)),
            "path_ctr": jnp.mean(comps[..., 2].sum(-1) / jnp.maximum(paths.lengths, 1)),
        }
        return new_state, metrics

    return step


def freeze_stats(state: RLState) -> RLState:
    """Stops gathering SRC statistics (call after the first epoch)."""
    return state._replace(collect_stats=jnp.array(False))
