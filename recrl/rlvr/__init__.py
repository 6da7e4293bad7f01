"""In-Context RLVR: verifiable arithmetic tasks, explicit Evidence Gain, GRPO/DAPO learner.

- ``tasks``: checkable multi-step arithmetic, scoring, disjoint splits, tokenizers,
  reasoning-gym adapters;
- ``evidence``: batched explicit Evidence Gain over a probe set (shared prefixes);
- ``learner``: GRPO / Dr.GRPO / DAPO with in-context demonstration groups, dynamic sampling,
  EG-reweighted advantages, zero-shot evaluation.

See ``docs/icrlvr.md`` for the formulas and measured numbers.
"""

from recrl.rlvr import evidence, learner, tasks

__all__ = ["evidence", "learner", "tasks"]
