r"""GRPO / Dr.GRPO / DAPO learner with in-context demonstration groups and EG reweighting.

Per prompt ``q`` a group of ``G`` rollouts: slot ``k < K`` sampled on ``demo_k ++ q``, slots
``K..G−1`` on the bare ``q``. The ``K`` distinct demonstrations are drawn once per generation
batch (slot ``k`` uses demo ``k`` for every prompt, as the reference), so each demonstration is
a prefix shared by ``P`` rows: it is run once and its keys/values are gathered into those rows'
caches, in sampling (``models.sample_with_prefixes``) and in the update's log-prob
recomputation (``models.logprobs_with_prefixes``); bare rows are run on their own prompt, never
padded to the demo-augmented length. All ``G`` share one group advantage

.. math:: A_g = \frac{\tilde R_g - \operatorname{mean}\tilde R}{\operatorname{std}(\tilde R)
          + \epsilon},\qquad \tilde R_g = w_g R_g

(Dr.GRPO: without the std) with ``w_g = 1``, or in EG-reweighted mode (``eg_mode="reward"``,
the form of the in-context objective ``E[R·w]``) ``w_g = exp(ℓ_g/τ)`` normalised to mean 1 over
all rollouts of the question, ``ℓ`` = the exact log-weight, EG or per-token EG
(``estimators.evidence_weighted_advantages``). ``eg_mode="advantage"`` keeps the older variant
``A_g ← A_g · w_g`` with ``w`` normalised over the correct rollouts only (1 elsewhere). The
update recomputes ``log π(y_t | prompt_g, y_<t)`` on the same (demo-augmented) prompt the
rollout was sampled from. The completion mask ends where the scored text ends
(``tasks.scored_length``). Loss (all from ``recrl.estimators``):

.. math:: L = L^{clip}_{\epsilon_{lo},\epsilon_{hi},c}(\rho, A)
          + \beta\,\mathrm{agg}(\mathrm{KL}_{k}) + \lambda\,\mathrm{mean}_{R=1}(-\log\pi)

Dynamic sampling (DAPO) drops groups whose rewards are all equal and draws again, up to a
round limit; missing groups are filled with dropped ones marked invalid (zero weight).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from recrl import estimators as est
from recrl import models, optim, parallel
from recrl.rlvr import evidence, tasks

PRESETS: dict[str, dict[str, Any]] = {
    "grpo": dict(advantage_scale="std", eps_low=0.2, eps_high=0.2, dual_clip=None,
                 aggregation="seq_mean_token_mean", dynamic_sampling=False),
    "drgrpo": dict(advantage_scale="none", eps_low=0.2, eps_high=0.2, dual_clip=None,
                   aggregation="seq_sum", dynamic_sampling=False),
    "dapo": dict(advantage_scale="std", eps_low=0.2, eps_high=0.28, dual_clip=10.0,
                 aggregation="token_mean", dynamic_sampling=True),
}


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Hyper-parameters (hashable; validated on creation). Build with :func:`preset`.

    Attributes:
      group_size: ``G`` rollouts per prompt.
      num_demo: ``K`` of the ``G`` rollouts conditioned on a distinct demonstration (0: plain).
      prompts_per_step: groups per update.
      max_prompt_len, max_new_tokens: static token budgets; ``max_prompt_len`` bounds a
        rollout's own prompt (``bos + "Q: q\nA: "``, without the demonstration prefix, which has
        its own length: the longest demonstration of the pool). Longer prompts raise.
      temperature: sampling temperature (log-probs are recomputed at the same τ).
      advantage_scale: ``std`` (GRPO/DAPO) or ``none`` (Dr.GRPO).
      eps_low, eps_high, dual_clip, aggregation: clipped-surrogate options.
      dynamic_sampling, max_sampling_rounds: DAPO group filtering and refill limit.
      kl_coef, kl_kind: optional KL to the initial policy (``k1``/``k3``); 0 disables.
      nll_coef: optional ``λ`` of the NLL term on correct rollouts (0 disables).
      eg_reweight, eg_temperature: EG reweighting (needs probes) and its ``τ``.
      eg_mode: ``reward`` (weights on rewards, normalised over all rollouts of a question: the
        in-context objective's form) or ``advantage`` (the older form, weights on advantages,
        normalised over correct rollouts).
      eg_signal: ``log_weight`` (exact ``log mean_e exp Δ_e``), ``eg`` (summed) or
        ``eg_per_token``.
      lr, warmup_steps, weight_decay, grad_clip: AdamW with linear warm-up.
      ppo_epochs: updates per sampled batch.
    """

    group_size: int = 8
    num_demo: int = 0
    prompts_per_step: int = 4
    max_prompt_len: int = 128
    max_new_tokens: int = 48
    temperature: float = 1.0
    advantage_scale: Literal["std", "none"] = "std"
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float | None = 10.0
    aggregation: str = "token_mean"
    dynamic_sampling: bool = True
    max_sampling_rounds: int = 3
    kl_coef: float = 0.0
    kl_kind: Literal["k1", "k3"] = "k3"
    nll_coef: float = 0.0
    eg_reweight: bool = False
    eg_temperature: float = 1.0
    eg_mode: Literal["reward", "advantage"] = "reward"
    eg_signal: Literal["log_weight", "eg", "eg_per_token"] = "log_weight"
    lr: float = 1e-6
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    ppo_epochs: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.num_demo <= self.group_size:
            raise ValueError(f"num_demo={self.num_demo} must be in [0, group_size]")
        if self.group_size < 2 or self.prompts_per_step < 1 or self.max_sampling_rounds < 1:
            raise ValueError("need group_size >= 2, prompts_per_step >= 1 and "
                             "max_sampling_rounds >= 1")
        if self.aggregation not in est.AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}")
        if self.kl_kind not in ("k1", "k3"):
            raise ValueError(f"kl_kind must be k1 or k3, got {self.kl_kind!r}")
        if self.eg_mode not in ("reward", "advantage"):
            raise ValueError(f"eg_mode must be reward or advantage, got {self.eg_mode!r}")
        if self.eg_signal not in ("log_weight", "eg", "eg_per_token"):
            raise ValueError(f"eg_signal must be log_weight, eg or eg_per_token, got "
                             f"{self.eg_signal!r}")
        if self.ppo_epochs < 1:
            raise ValueError(f"ppo_epochs={self.ppo_epochs} must be >= 1")
        if not self.eg_temperature > 0 or not self.temperature > 0:
            raise ValueError(f"eg_temperature={self.eg_temperature} and temperature="
                             f"{self.temperature} must be > 0")
        if not self.lr >= 0:
            raise ValueError(f"lr={self.lr} must be >= 0")


def preset(name: str, **changes: Any) -> LearnerConfig:
    """``grpo`` / ``drgrpo`` / ``dapo`` defaults (see ``PRESETS``) with ``changes``."""
    if name not in PRESETS:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(PRESETS)}")
    return LearnerConfig(**{**PRESETS[name], **changes})


class Rollouts(NamedTuple):
    """A batch of ``P`` groups of ``G`` rollouts (arrays only; jit-friendly).

    Attributes:
      prompt, prompt_mask: ``[P, G, L]`` each rollout's own prompt: ``bos + "Q: q\nA: "`` for
        bare rows, ``"Q: q\nA: "`` after the demonstration prefix (``demo``) for the others.
      completion, completion_mask: ``[P, G, C]``; the mask ends where the scored text ends.
      old_logp: ``[P, G, C]`` behaviour log-probs.
      reward: ``[P, G]`` binary rewards.
      step_correct: ``[P, G]`` step-correctness scores.
      demo: ``[P, G]`` int index of the demonstration in the pool, −1 for bare prompts.
      valid: ``[P]`` groups that take part in the update.
      weight: ``[P, G]`` EG weights (1 by default): on rewards or on advantages (``eg_mode``).
    """

    prompt: Any
    prompt_mask: Any
    completion: Any
    completion_mask: Any
    old_logp: Any
    reward: Any
    step_correct: Any
    demo: Any
    valid: Any
    weight: Any


def concat_rollouts(parts: Sequence[Rollouts]) -> Rollouts:
    """Concatenates batches along the group axis."""
    return Rollouts(*(np.concatenate([np.asarray(x) for x in xs]) for xs in zip(*parts,
                                                                               strict=True)))


def select_groups(r: Rollouts, idx: np.ndarray) -> Rollouts:
    """The groups ``idx`` of ``r``."""
    return Rollouts(*(np.asarray(x)[idx] for x in r))


class DemoPrefixes(NamedTuple):
    """The demonstration prefixes of a batch, each run once and shared by its rows.

    Attributes:
      tokens: int ``[U, D]`` ``bos + "Q: d_q\nA: d_r\n\n"``, left-padded.
      mask: bool ``[U, D]``.
      index: int ``[P, K]`` which prefix demo slot ``k`` of group ``p`` continues.
    """

    tokens: Any
    mask: Any
    index: Any


def encode_demo_pool(tok, demo_pool: Sequence[tasks.Problem]) -> tuple[np.ndarray, np.ndarray]:
    """``bos + demo`` token rows of the whole pool, left-padded to a multiple of 16."""
    if not demo_pool:
        return np.zeros((0, 16), np.int32), np.zeros((0, 16), bool)
    seqs = [[tok.bos_id] if tok.bos_id is not None else [] for _ in demo_pool]
    seqs = [b + tok.encode(tasks.format_example(d.question, d.solution))
            for b, d in zip(seqs, demo_pool, strict=True)]
    length = -(-max(map(len, seqs)) // 16) * 16
    return models.pad_batch(seqs, pad_id=tok.pad_id, side="left", length=length)


def draw_demos(rng: random.Random, pool_size: int, num_demo: int) -> list[int]:
    """``num_demo`` distinct pool indices for one generation batch (slot ``k`` = pick ``k``)."""
    if num_demo > pool_size:
        raise ValueError(f"num_demo={num_demo} > {pool_size} demonstrations")
    return rng.sample(range(pool_size), num_demo)


def own_prompt(tok, question: str, after_demo: bool) -> list[int]:
    """A rollout's own prompt ids: ``"Q: q\nA: "`` after a demo prefix, else with ``bos``."""
    if after_demo:
        return tok.encode(tasks.format_prompt(question))
    return tasks.encode_prompt(tok, question)


def build_prompts(tok, problems: Sequence[tasks.Problem], demo_pool: Sequence[tasks.Problem],
                  group_size: int, num_demo: int,
                  rng: random.Random) -> tuple[list[list[list[int]]], np.ndarray]:
    """Full prompt ids per rollout (demo prefix ++ own prompt), demos drawn once per batch.

    Returns:
      ``prompts[p][g]`` token lists and ``demo [P, G]`` pool indices (−1: bare); slot ``k <
      num_demo`` holds the same demonstration for every prompt.
    """
    picks = draw_demos(rng, len(demo_pool), num_demo)
    bos = [tok.bos_id] if tok.bos_id is not None else []
    demo = np.full((len(problems), group_size), -1, np.int32)
    demo[:, :num_demo] = picks
    prefix = [bos + tok.encode(tasks.format_example(demo_pool[i].question,
                                                    demo_pool[i].solution)) for i in picks]
    prompts = [[pre + own_prompt(tok, prob.question, True) for pre in prefix]
               + [own_prompt(tok, prob.question, False)] * (group_size - num_demo)
               for prob in problems]
    return prompts, demo


RewardFn = Callable[[str, tasks.Problem], float]


def sample_rollouts(graphdef: nnx.GraphDef, params, tok, problems: Sequence[tasks.Problem],
                    demo_pool: Sequence[tasks.Problem], key: jax.Array, cfg: LearnerConfig,
                    rng: random.Random, reward_fn: RewardFn = tasks.answer_reward,
                    pool: tuple[np.ndarray, np.ndarray] | None = None,
                    mesh: Any = None) -> tuple[Rollouts, list[str]]:
    """Samples one group per problem, decodes and scores the completions (malformed text gets
    reward 0).

    One ``models.sample_prefix_groups`` loop over ``G`` groups of ``P`` rows: slot ``k < K``
    continues demonstration ``k`` (run once, its keys/values shared by the ``P`` rows), the bare
    slots have an empty prefix; every row's own cache holds only its prompt and completion.
    ``K = 0``: ``models.sample``.
    ``pool``: ``encode_demo_pool(tok, demo_pool)`` (computed here when omitted).
    With ``mesh`` and ``K = 0`` the ``P·G`` prompts are split over its devices (each process
    builds its rows); the shared-prefix loop (``K > 0``) runs unsharded.

    Returns:
      ``Rollouts`` and the ``P·G`` decoded (scored) texts, row-major.
    """
    n, g, k = len(problems), cfg.group_size, cfg.num_demo
    picks = draw_demos(rng, len(demo_pool), k)
    demo = np.full((n, g), -1, np.int32)
    demo[:, :k] = picks
    prompt = np.zeros((n, g, cfg.max_prompt_len), np.int32)
    pmask = np.zeros((n, g, cfg.max_prompt_len), bool)
    for after_demo, sl in ((True, slice(0, k)), (False, slice(k, g))):
        ids = [own_prompt(tok, p.question, after_demo) for p in problems]
        pt, pm = models.pad_batch(ids, pad_id=tok.pad_id, side="left", length=cfg.max_prompt_len)
        prompt[:, sl], pmask[:, sl] = pt[:, None], pm[:, None]
    scfg = models.SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
    c = cfg.max_new_tokens
    if k > 0:  # slot j of every prompt is one group: prefix demo j (j < K) or none (bare)
        if pool is None:
            pool = encode_demo_pool(tok, demo_pool)
        pre = np.zeros((g, pool[0].shape[1]), np.int32)
        pre_mask = np.zeros(pre.shape, bool)
        pre[:k], pre_mask[:k] = pool[0][picks], pool[1][picks]
        out = models.sample_prefix_groups(
            graphdef, params, jnp.asarray(pre), jnp.asarray(pre_mask),
            jnp.asarray(prompt.transpose(1, 0, 2)), jnp.asarray(pmask.transpose(1, 0, 2)), key,
            config=scfg)
        toks, logp, lens = (np.swapaxes(np.asarray(x), 0, 1) for x in out)
    else:
        pt, pm = prompt.reshape(n * g, -1), pmask.reshape(n * g, -1)
        if mesh is None:
            pt_in, pm_in = jnp.asarray(pt), jnp.asarray(pm)
        else:
            pt_in, pm_in = parallel.global_rows(lambda r: (pt[r], pm[r]), n * g, mesh)
        out = parallel.to_host(models.sample(graphdef, params, pt_in, pm_in, key, config=scfg))
        toks = np.asarray(out.tokens).reshape(n, g, c)
        logp = np.asarray(out.logprobs).reshape(n, g, c)
        lens = np.asarray(out.lengths).reshape(n, g)
    flat_t, flat_l = toks.reshape(n * g, c), lens.reshape(-1)
    texts = [tasks.decode_completion(tok, flat_t[i], int(flat_l[i])) for i in range(n * g)]
    kept = np.array([tasks.scored_length(tok, flat_t[i], int(flat_l[i])) for i in range(n * g)])
    cmask = (np.arange(c)[None] < kept[:, None]).reshape(n, g, c)
    probs = [problems[i // g] for i in range(n * g)]
    reward = np.array([reward_fn(t, p) for t, p in zip(texts, probs, strict=True)], np.float32)
    sc = tasks.score_traces(texts, probs).step_correctness
    r = Rollouts(prompt, pmask, toks, cmask, np.where(cmask, logp, 0.0), reward.reshape(n, g),
                 sc.reshape(n, g), demo, np.ones(n, bool), np.ones((n, g), np.float32))
    return r, texts


def demo_prefixes(pool: tuple[np.ndarray, np.ndarray], demo: np.ndarray,
                  num_demo: int) -> DemoPrefixes | None:
    """The distinct demonstrations of a (possibly dynamically re-sampled) batch as prefixes.

    ``U`` (the number of distinct demos) is rounded up to a multiple of ``num_demo`` so the
    update compiles for at most ``max_sampling_rounds`` shapes; None when ``num_demo = 0``.
    """
    if num_demo == 0:
        return None
    slots = np.asarray(demo)[:, :num_demo]
    uniq = np.unique(slots)
    size = -(-len(uniq) // num_demo) * num_demo
    padded = np.concatenate([uniq, np.full(size - len(uniq), uniq[0])])
    return DemoPrefixes(pool[0][padded], pool[1][padded],
                        np.searchsorted(uniq, slots).astype(np.int32))


class SamplingStats(NamedTuple):
    """Dynamic-sampling bookkeeping: draws made, informative groups kept, groups dropped,
    invalid fillers used to reach the batch size."""

    rounds: int
    kept: int
    dropped: int
    filled: int


def collect_groups(draw: Callable[[], Rollouts], num_groups: int, *, dynamic: bool,
                   max_rounds: int) -> tuple[Rollouts, SamplingStats]:
    """Draws batches until ``num_groups`` groups with non-constant rewards are kept (DAPO).

    Without ``dynamic`` one draw is returned as is. Otherwise groups whose rewards are all
    equal are dropped; after ``max_rounds`` draws the batch is filled with dropped groups
    marked ``valid = False`` (they carry zero advantage and zero loss weight).
    """
    first = draw()
    if not dynamic:
        return first, SamplingStats(1, len(first.reward), 0, 0)
    kept, dropped, rounds, batch = [], [], 0, first
    while True:
        rounds += 1
        r = np.asarray(batch.reward)
        informative = r.max(axis=1) > r.min(axis=1)
        kept.append(select_groups(batch, np.flatnonzero(informative)))
        dropped.append(select_groups(batch, np.flatnonzero(~informative)))
        n_kept = sum(len(k.reward) for k in kept)
        if n_kept >= num_groups or rounds >= max_rounds:
            break
        batch = draw()
    good = concat_rollouts(kept)
    bad = concat_rollouts(dropped)
    n_fill = max(num_groups - len(good.reward), 0)
    filler = select_groups(bad, np.arange(n_fill))
    filler = filler._replace(valid=np.zeros(n_fill, bool))
    out = select_groups(concat_rollouts([good, filler]), np.arange(num_groups))
    return out, SamplingStats(rounds, min(len(good.reward), num_groups), len(bad.reward), n_fill)


def advantages(batch: Rollouts, cfg: LearnerConfig) -> jax.Array:
    r"""``[P, G]`` group advantages over valid groups: GRPO on ``w_g R_g`` (``eg_mode="reward"``)
    or ``w_g (R_g − mean R)/(std R + ε)`` (``"advantage"``); ``w = 1`` without EG."""
    valid = jnp.broadcast_to(jnp.asarray(batch.valid, jnp.float32)[:, None], batch.reward.shape)
    w = jnp.asarray(batch.weight, jnp.float32)
    if cfg.eg_mode == "reward":
        return est.grpo_advantages(jnp.asarray(batch.reward) * w, scale=cfg.advantage_scale,
                                   valid=valid)
    return est.grpo_advantages(batch.reward, scale=cfg.advantage_scale, valid=valid) * w


def loss_terms(logp: jax.Array, batch: Rollouts, cfg: LearnerConfig,
               ref_logp: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss and its parts from per-token ``logp [P, G, C]`` (see the module formula)."""
    mask = jnp.asarray(batch.completion_mask, jnp.float32) * jnp.asarray(
        batch.valid, jnp.float32)[:, None, None]
    adv = jnp.broadcast_to(advantages(batch, cfg)[..., None], logp.shape)
    pg = est.clipped_surrogate_loss(logp, batch.old_logp, adv, mask, cfg.eps_low, cfg.eps_high,
                                    cfg.dual_clip, cfg.aggregation)
    parts = {"pg_loss": pg}
    total = pg
    if cfg.kl_coef > 0:
        kl = est.aggregate_loss(est.kl_penalty(logp, ref_logp, cfg.kl_kind), mask,
                                cfg.aggregation)
        total, parts["kl"] = total + cfg.kl_coef * kl, kl
    if cfg.nll_coef > 0:
        correct = mask * (jnp.asarray(batch.reward) > 0)[..., None]
        nll = est.aggregate_loss(-logp, correct, "token_mean")
        total, parts["nll"] = total + cfg.nll_coef * nll, nll
    return total, parts


def rollout_logprobs(graphdef: nnx.GraphDef, params, batch: Rollouts,
                     temperature: float = 1.0, demos: DemoPrefixes | None = None) -> jax.Array:
    """``[P, G, C]`` log-probs of each completion given its own (demo-augmented) prompt.

    Demo slots ``[:, :K]`` (``K = demos.index.shape[1]``) continue their shared demonstration
    prefix (``models.logprobs_with_prefixes``: each demo run once); the bare slots run alone.
    """
    p, g, c = batch.completion.shape
    k = 0 if demos is None else demos.index.shape[1]
    part = lambda x, sl: jnp.asarray(x)[:, sl].reshape(p * (sl.stop - sl.start), -1)
    out = []
    if k > 0:
        sl = slice(0, k)
        out.append(models.logprobs_with_prefixes(
            graphdef, params, jnp.asarray(demos.tokens), jnp.asarray(demos.mask),
            jnp.asarray(demos.index).reshape(-1), part(batch.prompt, sl),
            part(batch.prompt_mask, sl), part(batch.completion, sl),
            part(batch.completion_mask, sl), temperature).reshape(p, k, c))
    if g > k:
        sl = slice(k, g)
        out.append(models.logprobs(
            graphdef, params, part(batch.prompt, sl), part(batch.prompt_mask, sl),
            part(batch.completion, sl), part(batch.completion_mask, sl),
            temperature).reshape(p, g - k, c))
    return jnp.concatenate(out, axis=1) if len(out) > 1 else out[0]


def make_optimizer(cfg: LearnerConfig) -> optax.GradientTransformation:
    """AdamW (linear warm-up to ``lr``, weight decay) after global-norm clipping."""
    sched = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
    return optim.make_optimizer(sched, grad_clip=cfg.grad_clip, weight_decay=cfg.weight_decay)


@functools.partial(jax.jit, static_argnums=(0, 4, 5), donate_argnums=(2,))
def train_step(graphdef: nnx.GraphDef, params, opt_state, batch: Rollouts,
               cfg: LearnerConfig, tx: optax.GradientTransformation,
               ref_logp: jax.Array | None = None, demos: DemoPrefixes | None = None):
    """One optimiser step on ``batch`` (``demos``: its demonstration prefixes, see
    :func:`demo_prefixes`); returns ``(params, opt_state, metrics)``."""

    def loss_fn(p):
        lp = rollout_logprobs(graphdef, p, batch, cfg.temperature, demos)
        total, parts = loss_terms(lp, batch, cfg, ref_logp)
        return total, parts

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **parts}
    return params, opt_state, metrics


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    r"""Unbiased :math:`\mathrm{pass@}k = 1 - \binom{n-c}{k}/\binom{n}{k}`."""
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(num_samples - num_correct + 1,
                                                    num_samples + 1)))


def evaluate(graphdef: nnx.GraphDef, params, tok, problems: Sequence[tasks.Problem],
             key: jax.Array, *, k: int = 4, max_new_tokens: int = 48, max_prompt_len: int = 64,
             temperature: float = 1.0) -> dict[str, float]:
    r"""Zero-shot evaluation (no demonstration) on held-out problems.

    ``greedy_acc``: accuracy of the greedy answer; ``avg@k``: mean accuracy of ``k`` samples at
    ``temperature`` (= pass@1 estimated from ``k`` samples); ``pass@k`` (unbiased);
    ``step_correct``: mean step correctness of the samples; ``malformed``: fraction with no
    extractable answer.
    """
    ids = [tasks.encode_prompt(tok, p.question) for p in problems]
    pt, pm = models.pad_batch(ids, pad_id=tok.pad_id, side="left", length=max_prompt_len)
    rep = lambda x: jnp.asarray(np.repeat(x, k, axis=0))
    out = {}
    for name, temp, reps in (("greedy", 0.0, 1), ("sampled", temperature, k)):
        scfg = models.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temp,
                                     stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
        prompt = rep(pt) if reps > 1 else jnp.asarray(pt)
        mask = rep(pm) if reps > 1 else jnp.asarray(pm)
        o = models.sample(graphdef, params, prompt, mask, key, config=scfg)
        toks, lens = np.asarray(o.tokens), np.asarray(o.lengths)
        texts = [tasks.decode_completion(tok, toks[i], int(lens[i])) for i in range(len(toks))]
        probs = [problems[i // reps] for i in range(len(toks))]
        s = tasks.score_traces(texts, probs)
        out[name] = s
    corr = out["sampled"].reward.reshape(len(problems), k)
    return {
        "greedy_acc": float(out["greedy"].reward.mean()),
        f"avg@{k}": float(corr.mean()),
        f"pass@{k}": float(np.mean([pass_at_k(k, int(c), k) for c in corr.sum(1)])),
        "step_correct": float(out["sampled"].step_correctness.mean()),
        "malformed": float(out["sampled"].malformed.mean()),
    }


def eg_weights(graphdef: nnx.GraphDef, params, tok, problems: Sequence[tasks.Problem],
               texts: Sequence[str], reward: np.ndarray, probes: evidence.ProbeSet,
               temperature: float = 1.0, demo_length: int | None = None, *,
               mode: str = "reward", signal: str = "log_weight") -> np.ndarray:
    r"""``[P, G]`` explicit EG weights from ``ℓ`` = ``signal`` of each rollout.

    ``mode="reward"``: ``w = G · softmax_G(ℓ/τ)`` over all rollouts of a question (mean 1; the
    learner multiplies rewards). ``mode="advantage"``: ``G_c · softmax_{correct}(ℓ/τ)`` on
    correct rollouts, 1 on the others (the learner multiplies advantages). ``demo_length``
    fixes the padded demo length (one compiled shape across steps)."""
    p, g = reward.shape
    qs = [problems[i // g].question for i in range(p * g)]
    res = evidence.evidence_gain_batch(graphdef, params, tok, qs, texts, probes,
                                       demo_length=demo_length)
    ell = getattr(res, signal).reshape(p, g)
    if mode == "reward":
        return np.asarray(est.evidence_gain_weights(ell, temperature), np.float32)
    correct = jnp.asarray(reward > 0)
    w = est.evidence_gain_weights(ell, temperature, valid=correct)
    return np.asarray(jnp.where(correct, w, 1.0), np.float32)


class Learner:
    """Sampling + dynamic filtering + (optional EG weights) + jitted update, one call a step.

    Attributes:
      params, opt_state: current state (``params`` is an ``nnx.State``).
      history: list of per-step metric dicts.
    """

    def __init__(self, graphdef: nnx.GraphDef, params, tok, cfg: LearnerConfig,
                 demo_pool: Sequence[tasks.Problem] = (),
                 probes: Sequence[tasks.Problem] | None = None,
                 reward_fn: RewardFn = tasks.answer_reward, seed: int = 0,
                 mesh: Any = None):
        if cfg.eg_reweight and not probes:
            raise ValueError("eg_reweight needs a probe set")
        self.graphdef, self.params, self.tok, self.cfg = graphdef, params, tok, cfg
        self.demo_pool, self.reward_fn = list(demo_pool), reward_fn
        self.probes = evidence.encode_probes(tok, probes) if probes else None
        self.pool = encode_demo_pool(tok, self.demo_pool) if cfg.num_demo else None
        self.tx = make_optimizer(cfg)
        self.opt_state = self.tx.init(params)
        self.ref_params = params if cfg.kl_coef > 0 else None
        self.rng = random.Random(seed)
        self.history: list[dict[str, float]] = []
        self.mesh = mesh  # data-parallel sampling and update over this mesh (None: one device)
        if mesh is not None:
            parallel.check_divisible({"prompts_per_step": cfg.prompts_per_step}, mesh)
            self.params, self.opt_state = parallel.replicate((self.params, self.opt_state), mesh)

    def _draw(self, problems_fn: Callable[[int], Sequence[tasks.Problem]],
              key: jax.Array) -> Callable[[], Rollouts]:
        keys = iter(jax.random.split(key, self.cfg.max_sampling_rounds))

        def draw() -> Rollouts:
            probs = problems_fn(self.cfg.prompts_per_step)
            r, texts = sample_rollouts(self.graphdef, self.params, self.tok, probs,
                                       self.demo_pool, next(keys), self.cfg, self.rng,
                                       self.reward_fn, self.pool, self.mesh)
            if self.cfg.eg_reweight:
                r = r._replace(weight=eg_weights(self.graphdef, self.params, self.tok, probs,
                                                 texts, r.reward, self.probes,
                                                 self.cfg.eg_temperature,
                                                 self.cfg.max_prompt_len
                                                 + self.cfg.max_new_tokens + 8,
                                                 mode=self.cfg.eg_mode,
                                                 signal=self.cfg.eg_signal))
            return r

        return draw

    def step(self, problems_fn: Callable[[int], Sequence[tasks.Problem]],
             key: jax.Array) -> dict[str, float]:
        """Samples a batch (``problems_fn(n)`` gives ``n`` training problems), updates, logs."""
        cfg = self.cfg
        batch, stats = collect_groups(self._draw(problems_fn, key), cfg.prompts_per_step,
                                      dynamic=cfg.dynamic_sampling,
                                      max_rounds=cfg.max_sampling_rounds)
        demos = demo_prefixes(self.pool, batch.demo, cfg.num_demo) if cfg.num_demo else None
        ref_logp = (rollout_logprobs(self.graphdef, self.ref_params, batch, cfg.temperature,
                                     demos) if self.ref_params is not None else None)
        placed, ref_in = batch, ref_logp
        if self.mesh is not None and demos is None:  # each process builds its groups
            placed, ref_in = parallel.global_rows(
                lambda r: (select_groups(batch, np.arange(r.start, r.stop)),
                           None if ref_logp is None else np.asarray(ref_logp)[r]),
                cfg.prompts_per_step, self.mesh)
        for _ in range(cfg.ppo_epochs):
            self.params, self.opt_state, m = train_step(self.graphdef, self.params,
                                                        self.opt_state, placed, cfg, self.tx,
                                                        ref_in, demos)
        demo = np.asarray(batch.demo) >= 0
        r = np.asarray(batch.reward)
        out = {k: float(v) for k, v in m.items()}
        out.update(reward=float(r.mean()), step_correct=float(np.mean(batch.step_correct)),
                   reward_demo=float(r[demo].mean()) if demo.any() else float("nan"),
                   reward_bare=float(r[~demo].mean()) if (~demo).any() else float("nan"),
                   **stats._asdict())
        self.history.append(out)
        return out

    def save(self, ckpt, step: int, extra: dict[str, Any] | None = None) -> None:
        """Checkpoints everything the next steps depend on: parameters, optimiser state,
        the sampling RNG (demonstration draws) and the history; ``extra`` (JSON) rides
        along in the metadata. ``ckpt`` is a :class:`recrl.checkpoint.Checkpointer`."""
        version, state, gauss = self.rng.getstate()
        meta = {"step": step, "history": self.history,
                "rng": [version, list(state), gauss], "extra": extra or {}}
        ckpt.save(step, {"params": self.params, "opt_state": self.opt_state}, meta=meta)

    def restore(self, ckpt) -> dict[str, Any]:
        """Restores what :meth:`save` wrote (the newest readable step); returns its
        metadata (``step``, ``history``, ``extra``)."""
        like = {"params": self.params, "opt_state": self.opt_state}
        saved, meta = ckpt.restore(like=like)
        self.params, self.opt_state = saved["params"], saved["opt_state"]
        version, state, gauss = meta["rng"]
        self.rng.setstate((version, tuple(state), gauss))
        self.history = list(meta["history"])
        return meta
