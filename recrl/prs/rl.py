"""ProRL's RL update: rollouts, simulator rewards, SRC, an advantage estimator, exact KL.

One jitted step per batch of prompts: sample ``G`` paths per prompt at temperature 1, score
every prefix with the frozen simulator, turn the scores into step rewards (IoI, IoR, CTR),
centre them with the running statistics (Stepwise Reward Centering; gathered during the
first epoch, then frozen), compute advantages with the method's estimator
(:class:`Method`, resolved from a pipeline's methods table), and minimise

.. math:: \\mathcal{L} = -\\frac{1}{PG}\\sum_{p,g,t} \\log\\pi(a_t) A_t
          + \\frac{\\beta}{\\#\\text{actions}}\\sum_t KL(\\pi_t \\| \\pi_{ref,t})

with the exact per-step KL over the action distribution (the reference's
``β(log π − log π_ref)`` term has zero expected gradient on-policy). A batch whose rewards
contain NaN/inf is skipped (parameters unchanged) and counted.

The step is four named stages: :func:`rollout_and_score` → :func:`statistics` →
:func:`advantages` (``[P, G, T]``) → :func:`loss_and_grads`; A2C adds its critic
(:class:`A2CState`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax
from flax import nnx

from recrl import estimators as est
from recrl import optim
from recrl.prs.policy import (
    BANNED_LOGIT,
    PathPolicy,
    action_mask,
    action_tokens,
    log_probs_and_kl,
    path_logits,
)
from recrl.prs.rewards import COMPONENTS, contains_target, duplicates, step_rewards
from recrl.prs.rollout import generate, path_uniforms


class Method(NamedTuple):
    """One RL method, its parts as separate fields (the named entries are a pipeline's
    methods table, e.g. ``experiments/configs/prorl.py:METHODS``).

    Attributes:
      estimator: a registered step-level advantage estimator
        (:func:`recrl.estimators.get_advantage_estimator`).
      src: Stepwise Reward Centering of the reward components (else raw weighted rewards).
      aggregation: the loss over a path's actions: ``"seq_sum"`` (ProRL's sum) or
        ``"seq_mean_token_mean"`` (GRPO's per-path mean, its ``1/|o|`` term).
      critic: subtract a learned MLP value of the policy's state from the advantages (A2C;
        its own state, :class:`A2CState`, and step).
    """

    estimator: str
    src: bool
    aggregation: str = "seq_sum"
    critic: bool = False


_AGGREGATIONS = ("seq_sum", "seq_mean_token_mean")
_DEFAULT_METHOD = Method("psae", src=True)  # ProRL: SRC + PSAE
_CRITIC_HIDDEN = 64
_CRITIC_LR = 1e-3


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """RL hyper-parameters (defaults: the paper's ML-1M recipe and the reference's code).

    Attributes:
      method: the resolved :class:`Method` (default: ProRL, SRC + PSAE).
      group_size: ``G`` paths per prompt.
      lr, warmup_steps: AdamW, linear warm-up then constant.
      weight_decay: AdamW weight decay (the reference: 0.05).
      grad_clip: global gradient-norm clip.
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

    method: Method = _DEFAULT_METHOD
    group_size: int = 16
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    kl_weight: float = 0.01
    reward_weights: tuple[float, float, float] = (1.0, 1.0, 0.1)
    min_std: float = 0.1
    sample_std: bool = True
    stats_real_items: bool = True
    mask_target: bool = True
    micro_batches: int = 1
    temperature: float = 1.0

    def __post_init__(self):
        if not isinstance(self.method, Method):
            raise TypeError(f"RLConfig.method must be a recrl.prs.rl.Method (a methods-table "
                            f"entry), got {self.method!r}")
        est.get_advantage_estimator(self.method.estimator)  # raises with the known names
        if self.method.aggregation not in _AGGREGATIONS:
            raise ValueError(f"aggregation {self.method.aggregation!r} is not supported by "
                             f"the RL step; known: {', '.join(_AGGREGATIONS)}")
        if self.group_size < 2:
            raise ValueError(f"need at least 2 paths per prompt, got group_size="
                             f"{self.group_size}")
        if len(self.reward_weights) != len(COMPONENTS):
            raise ValueError(f"reward_weights needs {len(COMPONENTS)} entries (IoI, IoR, CTR)")
        if self.micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")


class RLState(NamedTuple):
    """Everything an RL run carries between steps (a pytree; checkpointed as is)."""

    params: Any
    opt_state: Any
    ref_params: Any
    stats: est.RewardStats
    collect_stats: jax.Array  # bool: SRC statistics still being gathered
    step: jax.Array
    skipped: jax.Array  # batches skipped for non-finite rewards


class A2CState(NamedTuple):
    """:class:`RLState`'s fields plus the A2C critic (an MLP value head) and its optimiser."""

    params: Any
    opt_state: Any
    ref_params: Any
    stats: est.RewardStats
    collect_stats: jax.Array
    step: jax.Array
    skipped: jax.Array
    critic: Any
    critic_opt: Any


def init_critic(key: jax.Array, dim: int, hidden: int = _CRITIC_HIDDEN) -> dict:
    """A 2-layer MLP value head on the policy's (stop-gradient) hidden state."""
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (dim, hidden)) / jnp.sqrt(dim),
            "b1": jnp.zeros((hidden,)),
            "w2": jax.random.normal(k2, (hidden, 1)) * 0.01, "b2": jnp.zeros((1,))}


def critic_values(critic: dict, feats: jax.Array) -> jax.Array:
    """``V(s_t)`` for features ``[..., D]`` → ``[...]``."""
    h = jax.nn.relu(feats @ critic["w1"] + critic["b1"])
    return (h @ critic["w2"] + critic["b2"])[..., 0]


def make_optimizer(cfg: RLConfig) -> optax.GradientTransformation:
    """The shared factory (:func:`recrl.optim.make_optimizer`) with a linear warm-up."""
    return optim.make_optimizer(optim.warmup_constant(cfg.lr, cfg.warmup_steps),
                                grad_clip=cfg.grad_clip, weight_decay=cfg.weight_decay)


def init_state(policy: PathPolicy, cfg: RLConfig) -> tuple[RLState | A2CState, Any]:
    """Initial state from a pretrained policy (also the KL reference); returns (state, graph).

    The state is an :class:`A2CState` when ``cfg.method.critic``, else an :class:`RLState`.
    """
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)
    state = RLState(
        params=params, opt_state=make_optimizer(cfg).init(params),
        ref_params=jax.tree.map(jnp.copy, params),
        stats=est.reward_stats_init(len(COMPONENTS)), collect_stats=jnp.array(True),
        step=jnp.array(0, jnp.int32), skipped=jnp.array(0, jnp.int32),
    )
    if cfg.method.critic:
        critic = init_critic(jax.random.key(0), policy.cfg.dim)
        state = A2CState(*state, critic=critic, critic_opt=optax.adam(_CRITIC_LR).init(critic))
    # one buffer per leaf (the step donates the state; equal constants may share a buffer)
    return jax.tree.map(jnp.copy, state), (graphdef, rest)


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
    return jnp.sum(jnp.sum(per_token, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0))


def _pg_denominator(mask: jax.Array, aggregation: str) -> jax.Array:
    if aggregation == "seq_sum":
        return jnp.asarray(mask.shape[0], jnp.float32)
    return jnp.maximum(jnp.sum(jnp.sum(mask, -1) > 0).astype(jnp.float32), 1.0)


class _Parts(NamedTuple):
    """What the stages of one update share: the policy's graph, the scorer, the config."""

    graphdef: Any
    rest: Any
    score_fn: Callable[..., Any]
    cfg: RLConfig

    def policy(self, params: Any) -> PathPolicy:
        return nnx.merge(self.graphdef, params, self.rest)


class Rollouts(NamedTuple):
    """One update's sampled paths, flat ``[B, ...]`` with ``B = P * G`` rows (the ``G``
    paths of a prompt are consecutive)."""

    history: jax.Array  # [B, H] the prompt of each row
    target: jax.Array  # [B]
    path: jax.Array  # [B, T] item ids, num_items (EOS) and PAD after the end
    safe_path: jax.Array  # [B, T] valid item ids everywhere (EOS/PAD mapped to 0)
    lengths: jax.Array  # [B]
    comps: jax.Array  # [B, T, 3] step reward components (0 if any was non-finite)
    item: jax.Array  # [B, T]
    eos: jax.Array  # [B, T]
    finite: jax.Array  # bool: every reward component was finite


class Centred(NamedTuple):
    """The statistics stage's output."""

    stats: est.RewardStats  # updated (while gathering) SRC moments
    real: jax.Array  # [B, T] item steps counted by the statistics
    centred: jax.Array  # [B, T] weighted centred step rewards (0 off the items)
    rewards: jax.Array  # [B, T] what the estimator sees: centred (SRC) or raw weighted


def _split(x: jax.Array, m: int) -> jax.Array:
    return x.reshape((m, x.shape[0] // m) + x.shape[1:])


def _merge(x: jax.Array) -> jax.Array:
    return x.reshape((-1,) + x.shape[2:])


def rollout_and_score(parts: _Parts, params: Any, sim_state: Any, history: jax.Array,
                      target: jax.Array, key: jax.Array) -> Rollouts:
    """Stage 1: ``G`` paths per prompt (per micro-batch) scored by the frozen simulator."""
    cfg, G, M = parts.cfg, parts.cfg.group_size, parts.cfg.micro_batches
    P = history.shape[0]
    pcfg = parts.policy(params).cfg
    T, n_items = pcfg.max_len, pcfg.num_items

    def one(xs):
        h, t, u = xs
        hh, tt = jnp.repeat(h, G, axis=0), jnp.repeat(t, G, axis=0)
        paths = generate(parts.policy(params), h, t, None, temperature=cfg.temperature,
                         mask_target=cfg.mask_target, uniforms=u, group_size=G)
        safe = jnp.where(paths.path < n_items, paths.path, 0)
        scores = parts.score_fn(sim_state, hh, safe, paths.lengths, tt)
        return paths.path, paths.lengths, step_rewards(scores, safe, paths.lengths)

    noise = path_uniforms(key, P * G, T)
    path, lengths, comps = jax.tree.map(_merge, jax.lax.map(
        one, (_split(history, M), _split(target, M), _split(noise, M))))
    item, eos = est.path_masks(lengths, T)
    finite = jnp.all(jnp.isfinite(comps))
    return Rollouts(jnp.repeat(history, G, axis=0), jnp.repeat(target, G, axis=0), path,
                    jnp.where(path < n_items, path, 0), lengths,
                    jnp.where(finite, comps, 0.0), item, eos, finite)


def statistics(cfg: RLConfig, stats: est.RewardStats, collect: jax.Array, ro: Rollouts
               ) -> Centred:
    """Stage 2: SRC moments (updated while ``collect`` and the rewards are finite) and the
    centred (or raw) weighted step rewards."""
    weights = jnp.asarray(cfg.reward_weights, jnp.float32)
    item = ro.item
    real = item * (1.0 - duplicates(ro.safe_path, ro.lengths)) if cfg.stats_real_items \
        else item
    new_stats = est.reward_stats_update(stats, ro.comps, real)
    stats = jax.tree.map(lambda n, o: jnp.where(collect & ro.finite, n, o), new_stats, stats)
    mean, std = src_mean_std(stats, cfg.sample_std)
    centred = est.center_rewards(ro.comps, mean, std, weights, cfg.min_std) * item
    raw = jnp.sum(ro.comps * weights, -1)
    return Centred(stats, real, centred, centred if cfg.method.src else raw)


def advantages(estimator: str, rewards: jax.Array, ro: Rollouts, shape: tuple[int, int, int]
               ) -> jax.Array:
    """Stage 3: the estimator's advantages ``[P, G, T]`` of the flat ``[B, T]`` rewards."""
    fn = est.get_advantage_estimator(estimator)
    return fn(rewards.reshape(shape), ro.item.reshape(shape), ro.eos.reshape(shape))


_SUMS = ("loss", "pg_loss", "kl", "critic_loss", "adv_sum", "adv_sq")
def _critic_step(parts: _Parts, params: Any, critic: Any, xs: tuple, n_act: jax.Array
                 ) -> tuple[jax.Array, jax.Array, Any]:
    """A2C on one micro-batch: ``(advantage − V(s_t), critic loss, critic gradients)`` (the
    reward-to-go is 0 at EOS)."""
    h, t, p, ln, a, m = xs[:6]  # h, t: the micro-batch's prompts [P/M, ...]
    _, feats = path_logits(parts.policy(params), h, t, p, ln, return_hidden=True)
    feats = jax.lax.stop_gradient(feats)

    def critic_loss_fn(c):
        return jnp.sum(((a - critic_values(c, feats)) * m) ** 2) / n_act

    c_loss, c_grads = jax.value_and_grad(critic_loss_fn)(critic)
    return (a - critic_values(critic, feats)) * m, c_loss, c_grads


def _policy_loss(parts: _Parts, state: Any, xs: tuple, a: jax.Array, pg_den: jax.Array,
                 n_act: jax.Array) -> tuple[jax.Array, tuple, Any]:
    """Policy gradient + exact KL of one micro-batch; ``(loss, (pg, kl), grads)``. The
    prompts ``h``, ``t`` (``[P/M, ...]``) run once per ``G`` paths (grouped path_logits)."""
    cfg = parts.cfg
    h, t, p, ln, _, m, ac, mt = xs
    mt = mt if cfg.mask_target else None
    allowed = action_mask(p.shape[-1], parts.policy(state.params).cfg.num_items + 1, mt)
    ref_lp = jax.lax.stop_gradient(jax.nn.log_softmax(jnp.where(
        allowed, path_logits(parts.policy(state.ref_params), h, t, p, ln), BANNED_LOGIT), -1))

    def loss_fn(params):
        logits = path_logits(parts.policy(params), h, t, p, ln)
        taken, kl_t = log_probs_and_kl(logits, ref_lp, ac, allowed)
        pg = _pg_numerator(taken, a, m, cfg.method.aggregation) / pg_den
        kl = jnp.sum(kl_t * m) / n_act
        return pg + cfg.kl_weight * kl, (pg, kl)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return loss, aux, grads


def loss_and_grads(parts: _Parts, state: Any, ro: Rollouts, adv: jax.Array
                   ) -> tuple[Any, Any, dict]:
    """Stage 4: the loss's gradients accumulated over the micro-batches; returns ``(grads,
    critic grads or None, sums of the loss terms and advantages)``."""
    cfg = parts.cfg
    act_mask = ro.item + ro.eos
    acts = action_tokens(parts.policy(state.params).cfg, ro.path, ro.lengths)
    n_act = jnp.maximum(act_mask.sum(), 1.0)
    pg_den = _pg_denominator(act_mask, cfg.method.aggregation)
    critic = state.critic if cfg.method.critic else None

    def micro(carry, xs):
        g_acc, cg_acc, sums = carry
        a, c_loss, c_grads = xs[4], jnp.zeros(()), None
        if critic is not None:
            a, c_loss, c_grads = _critic_step(parts, state.params, critic, xs, n_act)
        m = xs[5]
        loss, (pg, kl), grads = _policy_loss(parts, state, xs, a, pg_den, n_act)
        add = lambda x, y: jax.tree.map(jnp.add, x, y)
        part = {"loss": loss, "pg_loss": pg, "kl": kl, "critic_loss": c_loss,
                "adv_sum": jnp.sum(a * m), "adv_sq": jnp.sum(a * a * m)}
        return (add(g_acc, grads), add(cg_acc, c_grads), add(sums, part)), None

    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
    tgt = ro.target if cfg.mask_target else jnp.zeros_like(ro.target)
    G = cfg.group_size  # the G paths of a prompt are consecutive rows: one prompt per G
    xs = tuple(_split(x, cfg.micro_batches) for x in (
        ro.history[::G], ro.target[::G], ro.path, ro.lengths, adv.reshape(ro.item.shape),
        act_mask, acts, tgt))
    (grads, c_grads, sums), _ = jax.lax.scan(
        micro, (zeros(state.params), zeros(critic), {k: jnp.zeros(()) for k in _SUMS}), xs)
    return grads, c_grads, sums


def step_metrics(ro: Rollouts, cen: Centred, adv_rf: jax.Array, sums: dict, grads: Any
                 ) -> dict[str, jax.Array]:
    """The update's metrics (``docs/prorl.md``, "Diagnostics")."""
    item, act_mask, lengths = ro.item, ro.item + ro.eos, ro.lengths
    n_act = jnp.maximum(act_mask.sum(), 1.0)
    adv_rf = adv_rf.reshape(item.shape)
    # the advantage actually weighting the log-probs (A2C: after its critic)
    adv_mean = sums["adv_sum"] / n_act
    n_items_f = jnp.maximum(item.sum(), 1.0)
    centred_pos = jnp.sum(cen.centred, 0) / jnp.maximum(item.sum(0), 1.0)  # [T]
    rf_mean = jnp.sum(adv_rf * act_mask) / n_act
    comps = ro.comps
    return {
        "loss": sums["loss"], "pg_loss": sums["pg_loss"], "kl": sums["kl"],
        "grad_norm": optax.tree.norm(grads),
        "length": jnp.mean(lengths.astype(jnp.float32)),
        "adv_var": sums["adv_sq"] / n_act - adv_mean**2,
        "adv_var_reinforce": jnp.sum((adv_rf - rf_mean) ** 2 * act_mask) / n_act,
        "centred_return": jnp.mean(cen.centred.sum(-1)),
        "target_share": jnp.mean(contains_target(ro.safe_path, lengths, ro.target)),
        "duplicate_share": jnp.sum(item - cen.real) / n_items_f,
        "finite": ro.finite,
        "critic_loss": sums["critic_loss"],
        **{f"step_{c}": jnp.sum(comps[..., i]) / n_items_f for i, c in enumerate(COMPONENTS)},
        **{f"centred_pos{t + 1}": centred_pos[t] for t in range(item.shape[1])},
        "path_ioi": jnp.mean(comps[..., 0].sum(-1)),
        "path_ior": jnp.mean(comps[..., 1].sum(-1)),
        "path_ctr": jnp.mean(comps[..., 2].sum(-1) / jnp.maximum(lengths, 1)),
    }


def _make_core(graph: Any, score_fn: Callable[..., Any], cfg: RLConfig) -> Callable[..., Any]:
    """The un-jitted body of one update: rollout+score → statistics → advantages
    ``[P, G, T]`` → loss and gradients.

    Returns ``core(state, sim_state, history [P, H], target [P], key) -> (grads,
    critic_grads, stats, finite, metrics)``; the gradients are those of the whole batch's
    loss, accumulated over ``cfg.micro_batches`` micro-batches (``critic_grads`` is None
    without a critic).
    """
    parts = _Parts(*graph, score_fn, cfg)

    def core(state: RLState | A2CState, sim_state: Any, history: jax.Array,
             target: jax.Array, key: jax.Array):
        P, M = history.shape[0], cfg.micro_batches
        if P % M:
            raise ValueError(f"{P} prompts do not split into {M} equal micro-batches")
        ro = rollout_and_score(parts, state.params, sim_state, history, target, key)
        cen = statistics(cfg, state.stats, state.collect_stats, ro)
        shape = (P, cfg.group_size, ro.item.shape[1])
        adv = advantages(cfg.method.estimator, cen.rewards, ro, shape)
        adv_rf = advantages("reinforce", cen.rewards, ro, shape)
        grads, c_grads, sums = loss_and_grads(parts, state, ro, adv)
        return grads, c_grads, cen.stats, ro.finite, step_metrics(ro, cen, adv_rf, sums, grads)

    return core


def _keep_if(finite: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


def make_train_step(graph: Any, score_fn: Callable[..., Any], cfg: RLConfig
                    ) -> Callable[..., tuple[RLState | A2CState, dict]]:
    """Builds the jitted RL step (the state argument is donated: do not read it again).

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
      (``centred_pos1..T``). With ``cfg.method.critic`` the state is an :class:`A2CState`
      and the step (A2C's own) also updates the critic with Adam.
    """
    tx = make_optimizer(cfg)
    core = _make_core(graph, score_fn, cfg)

    def policy_update(state, grads, stats, finite) -> RLState:
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return RLState(
            params=_keep_if(finite, params, state.params),
            opt_state=_keep_if(finite, opt_state, state.opt_state),
            ref_params=state.ref_params, stats=stats, collect_stats=state.collect_stats,
            step=state.step + 1, skipped=state.skipped + (~finite).astype(jnp.int32))

    def step(state: RLState, sim_state, history, target, key) -> tuple[RLState, dict]:
        grads, _, stats, finite, metrics = core(state, sim_state, history, target, key)
        return policy_update(state, grads, stats, finite), metrics

    def a2c_step(state: A2CState, sim_state, history, target, key) -> tuple[A2CState, dict]:
        grads, c_grads, stats, finite, metrics = core(state, sim_state, history, target, key)
        new = policy_update(state, grads, stats, finite)
        c_updates, critic_opt = critic_tx.update(c_grads, state.critic_opt, state.critic)
        critic = optax.apply_updates(state.critic, c_updates)
        return A2CState(*new, critic=_keep_if(finite, critic, state.critic),
                        critic_opt=_keep_if(finite, critic_opt, state.critic_opt)), metrics

    critic_tx = optax.adam(_CRITIC_LR)
    return jax.jit(a2c_step if cfg.method.critic else step, donate_argnums=0)


def freeze_stats(state: RLState | A2CState) -> RLState | A2CState:
    """Stops gathering SRC statistics (call after the first epoch)."""
    return state._replace(collect_stats=jnp.array(False))
