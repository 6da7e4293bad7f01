"""One In-Context RLVR training run: learner steps, a held-out evaluation curve, seconds per
step, and resumption from checkpoints (parts (b)/(c) of ``experiments/icrlvr.py``).

With a ``run_dir`` the run is resumable: the learner (parameters, optimiser, RNGs, history)
and the curve are checkpointed every ``checkpoint_every`` steps (0: ``eval_every``) and a
rerun continues from the newest readable checkpoint, ending where an uninterrupted run ends;
a finished run's ``result.json`` is reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx

from recrl import parallel
from recrl.checkpoint import Checkpointer
from recrl.rlvr import tasks
from recrl.rlvr.config import LearnerConfig
from recrl.rlvr.evaluation import evaluate
from recrl.rlvr.learner import Learner


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Budget and bookkeeping of a run, in steps.

    Attributes:
      steps: learner steps.
      eval_every: held-out evaluation every this many steps (and after the last).
      checkpoint_every: learner checkpoint every this many steps (0: ``eval_every``).
      eval_k: samples per held-out problem (``avg@k``, ``pass@k``).
      eval_problems: held-out problems evaluated (the first of ``splits.eval``).
    """

    steps: int
    eval_every: int
    checkpoint_every: int = 0
    eval_k: int = 4
    eval_problems: int = 64


def prompt_budget(tok, problems: Sequence[tasks.Problem]) -> int:
    """Own-prompt budget: the longest ``bos + "Q: q\\nA: "`` over ``problems``, rounded up to
    16 (demonstrations are separate shared prefixes, sized by
    ``rollouts.encode_demo_pool``)."""
    n = max(len(tasks.encode_prompt(tok, p.question)) for p in problems)
    return -(-n // 16) * 16


def _finished(run_dir: str | None) -> dict | None:
    """A finished run's ``result.json`` (None if there is none)."""
    if run_dir is None or not os.path.exists(os.path.join(run_dir, "result.json")):
        return None
    with open(os.path.join(run_dir, "result.json")) as f:
        return json.load(f)


def _write_result(run_dir: str, out: dict) -> None:
    """``result.json``, written atomically by the writer process."""
    if not parallel.is_writer():
        return
    tmp = os.path.join(run_dir, "result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1, default=float)
    os.replace(tmp, os.path.join(run_dir, "result.json"))


def _rng_state(rng: random.Random) -> list:
    version, state, gauss = rng.getstate()
    return [version, list(state), gauss]


def _resume(learner: Learner, ckpt: Checkpointer | None, draw_rng: random.Random,
            label: str) -> tuple[int, list | None, list[float]]:
    """First step to run, the curve and the step times so far (1, None, [] when fresh)."""
    if ckpt is None or ckpt.latest_step() is None:
        return 1, None, []
    extra = learner.restore(ckpt)["extra"]
    version, state, gauss = extra["draw_rng"]
    draw_rng.setstate((version, tuple(state), gauss))
    logging.info("%s: resuming after step %d", label, ckpt.restored_step)
    return ckpt.restored_step + 1, extra["curve"], extra["times"]


def _evaluator(graphdef: nnx.GraphDef, tok, splits: tasks.Splits, schedule: Schedule,
               cfg: LearnerConfig, mesh: Any = None) -> Callable[[Any, int], dict]:
    """``(params, step) -> {"step": step, **metrics}`` on the held-out problems (sampled
    data-parallel over ``mesh`` when given)."""
    held_out = splits.eval[:schedule.eval_problems]
    eval_len = prompt_budget(tok, held_out)

    def at(params, step: int) -> dict:
        m = evaluate(graphdef, params, tok, held_out, jax.random.key(10_000 + step),
                     k=schedule.eval_k, max_new_tokens=cfg.max_new_tokens,
                     max_prompt_len=eval_len, mesh=mesh)
        return {"step": step, **m}

    return at


def train_run(label: str, cfg: LearnerConfig, schedule: Schedule, seed: int,
              splits: tasks.Splits, tok, graphdef: nnx.GraphDef, params,
              probes: Sequence[tasks.Problem] | None = None, run_dir: str | None = None,
              mesh: Any = None) -> dict:
    """One RL run from ``params``: learner steps on ``splits.train`` (demonstrations from
    ``splits.demo``, EG ``probes`` when ``cfg.eg_reweight``), the held-out curve on
    ``splits.eval`` and seconds per step; resumable with ``run_dir`` (module docstring).
    With ``mesh`` the sampling, the EG scoring, the update and the held-out evaluation run
    data-parallel over its devices.

    Returns:
      ``method`` (= ``label``), ``seed``, ``curve``, ``history``, ``seconds_per_step``
      (median after the first step), ``first_step_seconds``, ``max_prompt_len``.
    """
    cached = _finished(run_dir)
    if cached is not None:
        return cached
    learner = Learner(graphdef, params, tok, cfg, demo_pool=splits.demo, probes=probes,
                      seed=seed, mesh=mesh)
    draw_rng = random.Random(1000 + seed)
    draw = lambda n: draw_rng.sample(splits.train, n)
    evaluate_at = _evaluator(graphdef, tok, splits, schedule, cfg, mesh)
    ckpt = None if run_dir is None else Checkpointer(os.path.join(run_dir, "ckpt"),
                                                      max_to_keep=2)
    every = schedule.checkpoint_every or schedule.eval_every
    start, curve, times = _resume(learner, ckpt, draw_rng, f"{label} seed {seed}")
    if curve is None:
        curve = [evaluate_at(learner.params, 0)]
    for step in range(start, schedule.steps + 1):
        t0 = time.perf_counter()
        learner.step(draw, jax.random.fold_in(jax.random.key(seed), step))
        times.append(time.perf_counter() - t0)
        if step % schedule.eval_every == 0 or step == schedule.steps:
            curve.append(evaluate_at(learner.params, step))
        logging.info("%s seed %d step %d %s", label, seed, step, learner.history[-1])
        if ckpt is not None and (step % every == 0 or step == schedule.steps):
            learner.save(ckpt, step, {"curve": curve, "times": times,
                                      "draw_rng": _rng_state(draw_rng)})
    out = dict(method=label, seed=seed, curve=curve, history=learner.history,
               seconds_per_step=float(np.median(times[1:] or times)),
               first_step_seconds=times[0], max_prompt_len=cfg.max_prompt_len)
    if ckpt is not None:
        ckpt.close()
        _write_result(run_dir, out)
    return out
