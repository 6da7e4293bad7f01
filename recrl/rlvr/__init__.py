"""In-Context RLVR: verifiable arithmetic tasks, explicit Evidence Gain, GRPO/DAPO learner.

- ``tasks``: checkable multi-step arithmetic, scoring, disjoint splits, reasoning-gym
  adapters;
- ``evidence``: batched explicit Evidence Gain over a probe set (shared prefixes), EG weights;
- ``config``: loss presets, named methods' parts (``Method``), ``LearnerConfig``;
- ``rollouts``: in-context demonstration groups, sampling and scoring, dynamic sampling;
- ``loss``: group advantages (EG-reweighted or not), clipped surrogate + KL + NLL;
- ``learner``: the jitted update and the ``Learner`` (one call a step, checkpointable);
- ``evaluation``: zero-shot held-out evaluation (greedy, avg@k, pass@k);
- ``quality``: EG as a reasoning-quality signal (Spearman ρ with step correctness);
- ``training``: one resumable RL run with its evaluation curve;
- ``study``: the Evidence Gain study's stages (pilot, traces, EG, analysis, labels).

See ``docs/icrlvr.md`` for the formulas and measured numbers.
"""

from recrl.rlvr import (
    config,
    evaluation,
    evidence,
    learner,
    loss,
    quality,
    rollouts,
    study,
    tasks,
    training,
)

__all__ = ["config", "evaluation", "evidence", "learner", "loss", "quality", "rollouts", "study",
           "tasks", "training"]
