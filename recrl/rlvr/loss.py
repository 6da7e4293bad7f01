r"""Group advantages, the clipped-surrogate loss with optional KL and NLL terms, and the
log-probs of rollouts under their own (demo-augmented) prompts.

All ``G`` rollouts of a prompt share one group advantage

.. math:: A_g = \frac{\tilde R_g - \operatorname{mean}\tilde R}{\operatorname{std}(\tilde R)
          + \epsilon},\qquad \tilde R_g = w_g R_g

(Dr.GRPO: without the std) with ``w_g = 1``, or in EG-reweighted mode (``eg_mode="reward"``,
the form of the in-context objective ``E[R·w]``) ``w_g = exp(ℓ_g/τ)`` normalised to mean 1 over
all rollouts of the question (``recrl.rlvr.evidence.eg_weights``). ``eg_mode="advantage"``
keeps the older variant ``A_g ← A_g · w_g`` with ``w`` normalised over the correct rollouts
only (1 elsewhere). Loss (all from ``recrl.estimators``):

.. math:: L = L^{clip}_{\epsilon_{lo},\epsilon_{hi},c}(\rho, A)
          + \beta\,\mathrm{agg}(\mathrm{KL}_{k}) + \lambda\,\mathrm{mean}_{R=1}(-\log\pi)

with ``β = kl_weight`` and ``λ = nll_coef``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from recrl import estimators as est
from recrl import models
from recrl.rlvr.config import LearnerConfig
from recrl.rlvr.rollouts import DemoPrefixes, Rollouts


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
    """Total loss and its parts from per-token ``logp [P, G, T]`` (see the module formula)."""
    mask = jnp.asarray(batch.completion_mask, jnp.float32) * jnp.asarray(
        batch.valid, jnp.float32)[:, None, None]
    adv = jnp.broadcast_to(advantages(batch, cfg)[..., None], logp.shape)
    pg = est.clipped_surrogate_loss(logp, batch.old_logp, adv, mask, cfg.eps_low, cfg.eps_high,
                                    cfg.dual_clip, cfg.aggregation)
    parts = {"pg_loss": pg}
    total = pg
    if cfg.kl_weight > 0:
        kl = est.aggregate_loss(est.kl_penalty(logp, ref_logp, cfg.kl_kind), mask,
                                cfg.aggregation)
        total, parts["kl"] = total + cfg.kl_weight * kl, kl
    if cfg.nll_coef > 0:
        correct = mask * (jnp.asarray(batch.reward) > 0)[..., None]
        nll = est.aggregate_loss(-logp, correct, "token_mean")
        total, parts["nll"] = total + cfg.nll_coef * nll, nll
    return total, parts


def rollout_logprobs(graphdef: nnx.GraphDef, params, batch: Rollouts,
                     temperature: float = 1.0, demos: DemoPrefixes | None = None) -> jax.Array:
    """``[P, G, T]`` log-probs of each completion given its own (demo-augmented) prompt.

    Demo slots ``[:, :G_d]`` (``G_d = demos.index.shape[1]``) continue their shared
    demonstration prefix (``models.logprobs_with_prefixes``: each demo run once); the bare
    slots run alone.
    """
    p, g, t = batch.completion.shape
    k = 0 if demos is None else demos.index.shape[1]
    part = lambda x, sl: jnp.asarray(x)[:, sl].reshape(p * (sl.stop - sl.start), -1)
    out = []
    if k > 0:
        sl = slice(0, k)
        out.append(models.logprobs_with_prefixes(
            graphdef, params, jnp.asarray(demos.tokens), jnp.asarray(demos.mask),
            jnp.asarray(demos.index).reshape(-1), part(batch.prompt, sl),
            part(batch.prompt_mask, sl), part(batch.completion, sl),
            part(batch.completion_mask, sl), temperature).reshape(p, k, t))
    if g > k:
        sl = slice(k, g)
        out.append(models.logprobs(
            graphdef, params, part(batch.prompt, sl), part(batch.prompt_mask, sl),
            part(batch.completion, sl), part(batch.completion_mask, sl),
            temperature).reshape(p, g - k, t))
    return jnp.concatenate(out, axis=1) if len(out) > 1 else out[0]
