"""Pure, jittable policy-gradient math: returns, advantages, Evidence Gain and losses.

Imports only JAX and chex. Arrays are group-structured: ``[P, G, T]`` (prompts × group × action
positions) and ``[P, G]`` per path.
"""

from recrl.estimators._checks import checked
from recrl.estimators.advantages import (
    grpo_advantages,
    position_baseline,
    psae_advantages,
    reinforce_advantages,
    rloo_advantages,
    rtg_advantages,
)
from recrl.estimators.evidence import (
    evidence_gain,
    evidence_gain_weights,
    evidence_log_weight,
    evidence_weighted_advantages,
)
from recrl.estimators.losses import (
    AGGREGATIONS,
    aggregate_loss,
    clipped_surrogate_loss,
    full_kl,
    kl_penalty,
    policy_gradient_loss,
)
from recrl.estimators.registry import (
    advantage_estimator_names,
    get_advantage_estimator,
    register_advantage_estimator,
)
from recrl.estimators.returns import (
    RewardStats,
    center_rewards,
    path_masks,
    reward_stats_init,
    reward_stats_mean_std,
    reward_stats_update,
    reward_to_go,
)

__all__ = [
    "AGGREGATIONS",
    "RewardStats",
    "advantage_estimator_names",
    "aggregate_loss",
    "center_rewards",
    "checked",
    "clipped_surrogate_loss",
    "evidence_gain",
    "evidence_gain_weights",
    "evidence_log_weight",
    "evidence_weighted_advantages",
    "full_kl",
    "get_advantage_estimator",
    "grpo_advantages",
    "kl_penalty",
    "path_masks",
    "policy_gradient_loss",
    "position_baseline",
    "psae_advantages",
    "register_advantage_estimator",
    "reinforce_advantages",
    "reward_stats_init",
    "reward_stats_mean_std",
    "reward_stats_update",
    "reward_to_go",
    "rloo_advantages",
    "rtg_advantages",
]
