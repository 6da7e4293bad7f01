"""In-Context RLVR: verifiable arithmetic tasks, explicit Evidence Gain, GRPO/DAPO learner.

See ``docs/icrlvr.md`` and ``/work/shared/spec/icrlvr.md`` for the formulas.
"""

from recrl.rlvr import evidence, tasks

__all__ = ["evidence", "tasks"]
