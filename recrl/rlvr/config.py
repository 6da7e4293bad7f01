"""Learner settings: the loss presets (``PRESETS``), a named method's parts (:class:`Method`)
and the validated, hashable :class:`LearnerConfig` built from them.

A launcher keeps its table of named methods as data (``experiments/configs/icrlvr.py:
METHODS``: name -> :class:`Method`) and hands the resolved entry to :func:`method_config`;
the library never parses a method name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from recrl import estimators as est

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
    """Hyper-parameters (hashable; validated on creation). Build with :func:`preset` or
    :func:`method_config`.

    Attributes:
      group_size: ``G`` rollouts per prompt.
      num_demo: ``G_d`` of the ``G`` rollouts conditioned on a distinct demonstration (0:
        plain).
      prompts_per_step: ``P``, groups per update.
      max_prompt_len, max_new_tokens: static token budgets ``S`` and ``T``;
        ``max_prompt_len`` bounds a rollout's own prompt (``bos + "Q: q\\nA: "``, without the
        demonstration prefix, which has its own length: the longest demonstration of the
        pool). Longer prompts raise.
      temperature: sampling temperature (log-probs are recomputed at the same τ).
      advantage_scale: ``std`` (GRPO/DAPO) or ``none`` (Dr.GRPO).
      eps_low, eps_high, dual_clip, aggregation: clipped-surrogate options.
      dynamic_sampling, max_sampling_rounds: DAPO group filtering and refill limit.
      kl_weight, kl_kind: optional KL to the initial policy (``k1``/``k3``); 0 disables.
      nll_coef: optional ``λ`` of the NLL term on correct rollouts (0 disables).
      eg_reweight, eg_temperature: EG reweighting (needs probes) and its ``τ``.
      eg_mode: ``reward`` (weights on rewards, normalised over all rollouts of a question: the
        in-context objective's form) or ``advantage`` (the older form, weights on advantages,
        normalised over correct rollouts).
      eg_signal: ``log_weight`` (exact ``log mean_e exp Δ_e``), ``eg`` (summed) or
        ``eg_per_token``.
      lr, warmup_steps, weight_decay, grad_clip: AdamW with linear warm-up after a
        global-norm gradient clip.
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
    kl_weight: float = 0.0
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
        for problem in _problems(self):
            raise ValueError(problem)


def _problems(cfg: LearnerConfig) -> list[str]:
    """What is wrong with ``cfg`` (empty when valid), one message per problem."""
    checks = [
        (0 <= cfg.num_demo <= cfg.group_size,
         f"num_demo={cfg.num_demo} must be in [0, group_size]"),
        (cfg.group_size >= 2 and cfg.prompts_per_step >= 1 and cfg.max_sampling_rounds >= 1,
         "need group_size >= 2, prompts_per_step >= 1 and max_sampling_rounds >= 1"),
        (cfg.aggregation in est.AGGREGATIONS, f"unknown aggregation {cfg.aggregation!r}"),
        (cfg.kl_kind in ("k1", "k3"), f"kl_kind must be k1 or k3, got {cfg.kl_kind!r}"),
        (cfg.eg_mode in ("reward", "advantage"),
         f"eg_mode must be reward or advantage, got {cfg.eg_mode!r}"),
        (cfg.eg_signal in ("log_weight", "eg", "eg_per_token"),
         f"eg_signal must be log_weight, eg or eg_per_token, got {cfg.eg_signal!r}"),
        (cfg.ppo_epochs >= 1, f"ppo_epochs={cfg.ppo_epochs} must be >= 1"),
        (cfg.eg_temperature > 0 and cfg.temperature > 0,
         f"eg_temperature={cfg.eg_temperature} and temperature={cfg.temperature} must be > 0"),
        (cfg.lr >= 0, f"lr={cfg.lr} must be >= 0"),
    ]
    return [message for ok, message in checks if not ok]


def preset(name: str, **changes: Any) -> LearnerConfig:
    """``grpo`` / ``drgrpo`` / ``dapo`` defaults (see ``PRESETS``) with ``changes``."""
    if name not in PRESETS:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(PRESETS)}")
    return LearnerConfig(**{**PRESETS[name], **changes})


@dataclasses.dataclass(frozen=True)
class Method:
    """A named method of a methods table (``experiments/configs/icrlvr.py:METHODS``), its
    parts as separate fields.

    Attributes:
      preset: the loss settings, a key of ``PRESETS`` (``grpo``, ``drgrpo``, ``dapo``).
      in_context: ``num_demo`` of the ``G`` rollouts continue a demonstration (else none do).
      eg_reweight: explicit Evidence Gain weights (``LearnerConfig.eg_reweight``).
    """

    preset: str
    in_context: bool = False
    eg_reweight: bool = False

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")


def method_config(method: Method, *, num_demo: int = 0, **changes: Any) -> LearnerConfig:
    """The :class:`LearnerConfig` of a resolved ``method``: its preset's loss settings,
    ``num_demo`` demonstration rollouts if ``method.in_context`` (else 0), its EG
    reweighting, then ``changes``."""
    return preset(method.preset, num_demo=num_demo if method.in_context else 0,
                  eg_reweight=method.eg_reweight, **changes)
