"""Killed runs resume to the result of an uninterrupted run (In-Context RLVR, GORACS)."""

import json

import numpy as np
import pytest

from experiments import icrlvr
from experiments.configs.icrlvr import get_config as icrlvr_config
from recrl.rlvr import learner as L
from recrl.rlvr import tasks


class Killed(Exception):
    pass


def _icrlvr_setup():
    cfg = icrlvr_config("tiny")
    cfg.rl.update(steps=3, eval_every=3, checkpoint_every=1, algorithm="grpo",
                  dynamic_sampling=False)
    d = cfg.data
    sp = tasks.make_splits(d.n_train, d.n_demo, d.n_probe, d.n_eval, seed=d.seed,
                           num_ops=tuple(d.num_ops), max_operand=d.max_operand)
    tok, graphdef, params = icrlvr.tiny_policy(cfg.model, 0)
    return cfg, sp, tok, graphdef, params


def _same_run(a, b):
    assert a["curve"] == b["curve"]
    assert len(a["history"]) == len(b["history"])
    for ha, hb in zip(a["history"], b["history"], strict=True):
        for k in ha:
            np.testing.assert_array_equal(ha[k], hb[k], err_msg=k)


@pytest.mark.slow  # the default suite covers this through a real SIGKILL (test_kill.py)
def test_icrlvr_training_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    cfg, sp, tok, graphdef, params = _icrlvr_setup()
    args = ("grpo", 0, cfg.rl, cfg.eval, sp, tok, graphdef, params)
    ref = icrlvr.train_method(*args, run_dir=str(tmp_path / "ref"))
    step = L.Learner.step
    calls = []

    def dies_at_step_3(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return step(self, *a, **k)

    monkeypatch.setattr(L.Learner, "step", dies_at_step_3)
    with pytest.raises(Killed):
        icrlvr.train_method(*args, run_dir=str(tmp_path / "run"))
    monkeypatch.undo()
    assert not (tmp_path / "run" / "result.json").exists()
    calls.clear()
    monkeypatch.setattr(L.Learner, "step", lambda self, *a, **k: (calls.append(1),
                                                                  step(self, *a, **k))[1])
    resumed = icrlvr.train_method(*args, run_dir=str(tmp_path / "run"))
    assert len(calls) == 1  # steps 1-2 came from the checkpoint
    monkeypatch.undo()
    _same_run(ref, resumed)
    # the finished run is reused as is
    again = icrlvr.train_method(*args, run_dir=str(tmp_path / "run"))
    assert again == json.loads((tmp_path / "run" / "result.json").read_text())


@pytest.mark.slow  # two tiny GORACS pipelines (~2 min of compiles on 2 cores)
def test_goracs_rerun_after_a_crash_keeps_finished_runs_and_matches(tmp_path, monkeypatch):
    from experiments import goracs
    from experiments.configs.goracs import get_config
    from recrl.coreset import lmrec

    cfg = get_config("tiny")
    ref = goracs.run(cfg, str(tmp_path / "ref"))
    finetune, calls, crash_at = lmrec.finetune, [], [3]

    def crashes_on_the_third(*a, **k):
        if k.get("lora_only", True):  # a coreset run's fine-tuning (not the pretraining)
            calls.append(1)
            if len(calls) in crash_at:
                raise Killed
        return finetune(*a, **k)

    monkeypatch.setattr(lmrec, "finetune", crashes_on_the_third)
    with pytest.raises(Killed):
        goracs.run(cfg, str(tmp_path / "run"))
    assert len(list((tmp_path / "run" / "runs").glob("*.json"))) == 2
    calls.clear()
    crash_at.clear()
    res = goracs.run(cfg, str(tmp_path / "run"))
    assert len(calls) == len(ref["runs"]) - 1 - 2  # the base row is not fine-tuned
    strip = lambda runs: [{k: v for k, v in r.items() if not k.endswith("seconds")}
                          for r in runs]
    assert strip(res["runs"]) == strip(json.loads(json.dumps(ref["runs"], default=float)))
