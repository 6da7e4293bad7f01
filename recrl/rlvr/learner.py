r"""GRPO / Dr.GRPO / DAPO learner with in-context demonstration groups and EG reweighting.

One :meth:`Learner.step` runs the stages, each in its own module:

1. sample and score rollout groups, ``G_d`` of the ``G`` rollouts per prompt continuing a
   demonstration shared as a KV-cache prefix, with DAPO's dynamic sampling
   (:mod:`recrl.rlvr.rollouts`);
2. optional explicit Evidence Gain weights of the rollouts (:func:`recrl.rlvr.evidence.
   eg_weights`);
3. the jitted update (:func:`train_step`): log-probs recomputed on each rollout's own
   (demo-augmented) prompt, group advantages and the clipped-surrogate loss with optional KL
   and NLL terms (:mod:`recrl.rlvr.loss`), AdamW.

Settings: :class:`recrl.rlvr.config.LearnerConfig`, built from a loss preset or a named
method's resolved entry (:func:`recrl.rlvr.config.method_config`).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from recrl import optim, parallel
from recrl.rlvr import evidence, tasks
from recrl.rlvr.config import LearnerConfig
from recrl.rlvr.loss import loss_terms, rollout_logprobs
from recrl.rlvr.rollouts import (
    DemoPrefixes,
    RewardFn,
    Rollouts,
    collect_groups,
    demo_prefixes,
    encode_demo_pool,
    sample_rollouts,
    select_groups,
)


def make_optimizer(cfg: LearnerConfig) -> optax.GradientTransformation:
    """AdamW (linear warm-up to ``lr``, weight decay) after global-norm clipping."""
    sched = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
    return optim.make_optimizer(sched, grad_clip=cfg.grad_clip, weight_decay=cfg.weight_decay)


@functools.partial(jax.jit, static_argnums=(0, 4, 5), donate_argnums=(2,))
def train_step(graphdef: nnx.GraphDef, params, opt_state, batch: Rollouts,
               cfg: LearnerConfig, tx: optax.GradientTransformation,
               ref_logp: jax.Array | None = None, demos: DemoPrefixes | None = None):
    """One optimiser step on ``batch`` (``demos``: its demonstration prefixes, see
    :func:`recrl.rlvr.rollouts.demo_prefixes`); returns ``(params, opt_state, metrics)``."""

    def loss_fn(p):
        lp = rollout_logprobs(graphdef, p, batch, cfg.temperature, demos)
        total, parts = loss_terms(lp, batch, cfg, ref_logp)
        return total, parts

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **parts}
    return params, opt_state, metrics


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
        self.ref_params = params if cfg.kl_weight > 0 else None
        self.rng = random.Random(seed)
        self.history: list[dict[str, float]] = []
        self.mesh = mesh  # data-parallel sampling and update over this mesh (None: one device)
        if mesh is not None:
            parallel.check_divisible({"prompts_per_step": cfg.prompts_per_step}, mesh)
            self.params, self.opt_state, self.ref_params = parallel.replicate(
                (self.params, self.opt_state, self.ref_params), mesh)

    def _draw(self, problems_fn: Callable[[int], Sequence[tasks.Problem]],
              key: jax.Array) -> Callable[[], Rollouts]:
        keys = iter(jax.random.split(key, self.cfg.max_sampling_rounds))

        def draw() -> Rollouts:
            cfg = self.cfg
            probs = problems_fn(cfg.prompts_per_step)
            batch, texts = sample_rollouts(self.graphdef, self.params, self.tok, probs,
                                           self.demo_pool, next(keys), cfg, self.rng,
                                           self.reward_fn, self.pool, self.mesh)
            if cfg.eg_reweight:
                demo_length = cfg.max_prompt_len + cfg.max_new_tokens + 8
                batch = batch._replace(weight=evidence.eg_weights(
                    self.graphdef, self.params, self.tok, probs, texts, batch.reward,
                    self.probes, cfg.eg_temperature, demo_length, mode=cfg.eg_mode,
                    signal=cfg.eg_signal, mesh=self.mesh))
            return batch

        return draw

    def _place(self, batch: Rollouts,
               demos: DemoPrefixes | None) -> tuple[Rollouts, DemoPrefixes | None]:
        """The update's inputs as they are (no mesh) or on the mesh: each process builds its
        groups of the batch and of ``demos.index`` (split with the groups); the ``U``
        demonstration prefixes are replicated."""
        if self.mesh is None:
            return batch, demos
        index = None if demos is None else np.asarray(demos.index)
        placed, index_in = parallel.global_rows(
            lambda r: (select_groups(batch, np.arange(r.start, r.stop)),
                       None if index is None else index[r]),
            self.cfg.prompts_per_step, self.mesh)
        if demos is not None:
            demos = DemoPrefixes(*parallel.replicate((demos.tokens, demos.mask), self.mesh),
                                 index_in)
        return placed, demos

    def step(self, problems_fn: Callable[[int], Sequence[tasks.Problem]],
             key: jax.Array) -> dict[str, float]:
        """Samples a batch (``problems_fn(n)`` gives ``n`` training problems), updates, logs."""
        cfg = self.cfg
        batch, stats = collect_groups(self._draw(problems_fn, key), cfg.prompts_per_step,
                                      dynamic=cfg.dynamic_sampling,
                                      max_rounds=cfg.max_sampling_rounds)
        demos = demo_prefixes(self.pool, batch.demo, cfg.num_demo) if cfg.num_demo else None
        placed, demos = self._place(batch, demos)  # split over the mesh's devices
        ref_logp = (rollout_logprobs(self.graphdef, self.ref_params, placed, cfg.temperature,
                                     demos) if self.ref_params is not None else None)
        for _ in range(cfg.ppo_epochs):
            self.params, self.opt_state, m = train_step(self.graphdef, self.params,
                                                        self.opt_state, placed, cfg, self.tx,
                                                        ref_logp, demos)
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
