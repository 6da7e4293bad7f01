"""Budgets in steps and epochs only: a slowed-down machine gives the same numbers.

Every training loop of the launcher (simulator batches, pretraining steps, RL updates)
iterates through ``tqdm``; replacing it with a bar that sleeps before each item slows every
step without touching the computation. With the default config (no time cap) the results
must be identical.
"""

import json
import time

import numpy as np
import pytest
from tqdm.auto import tqdm

from experiments import prorl
from experiments.configs.prorl import get_config
from recrl.prs import pretrain, train_simulator
from recrl.prs import train as rl_train


class SlowBar:
    """A progress bar that sleeps ``delay`` seconds before yielding each item."""

    def __init__(self, iterable, delay, **kw):
        self.bar, self.delay = tqdm(iterable, **kw), delay

    def __iter__(self):
        for x in self.bar:
            time.sleep(self.delay)
            yield x

    def set_postfix(self, *a, **kw):
        self.bar.set_postfix(*a, **kw)


def slow_down(monkeypatch, delay, modules=(rl_train, pretrain, train_simulator)):
    for mod in modules:
        monkeypatch.setattr(mod, "tqdm", lambda it, **kw: SlowBar(it, delay, **kw))


def _numbers(res):
    return json.loads(json.dumps({"runs": res["runs"], "baselines": res["baselines"]}))


def test_no_variant_has_a_time_cap():
    for v in ("ml1m", "paper_epoch1", "ml1m_cpu", "demo", "tiny"):
        cfg = get_config(v)
        assert not cfg.sim.max_seconds and not cfg.evaluator.get("max_seconds", 0), v


@pytest.mark.slow
def test_whole_tiny_pipeline_is_identical_on_a_slowed_down_machine(tmp_path, monkeypatch):
    cfg = get_config("tiny")
    cfg.methods = ("prorl",)
    cfg.baselines = ("pretrained",)
    fast = prorl.run(cfg, str(tmp_path / "fast"))
    slow_down(monkeypatch, 0.05)
    slow = prorl.run(cfg, str(tmp_path / "slow"))
    a, b = _numbers(fast), _numbers(slow)
    assert a == b
    assert np.isfinite(a["runs"][0]["test"]["sasrec/ioi@1"])
