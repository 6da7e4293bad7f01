"""SIGKILL at each save point (subprocess), then resume: the result equals an uninterrupted
run's, and the per-step log holds each step exactly once."""

import json
import shutil
import signal

import numpy as np
import pytest

from experiments import icrlvr
from tests.faults.conftest import run_python
from tests.faults.test_resume import _icrlvr_setup, _same_run

# Runs one experiment in a fresh interpreter and SIGKILLs it just before or just after the
# n-th checkpoint save of the RL stage (argv: kind, point, n, out_dir).
_KILLED_RUN = """
import os, signal, sys
kind, point, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
from recrl import checkpoint
save, calls = checkpoint.Checkpointer.save, []
def killing_save(self, step, state, meta=None):
    if kind == "icrlvr" or "/rl/" in self.directory:
        calls.append(step)
        if point == "before" and len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
    save(self, step, state, meta)
    if calls and point == "after" and len(calls) == n:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.Checkpointer.save = killing_save
if kind == "icrlvr":
    from experiments import icrlvr
    from tests.faults.test_resume import _icrlvr_setup
    cfg, splits, tok, graphdef, params = _icrlvr_setup()
    icrlvr.train_method("grpo", 0, cfg.rl, cfg.eval, splits, tok, graphdef, params, run_dir=out)
else:
    from experiments import prorl
    from tests.faults.test_kill import prorl_config
    prorl.run(prorl_config(), out)
raise SystemExit("not killed")
"""


def _kill(kind, point, n, out):
    r = run_python(_KILLED_RUN, kind, point, str(n), str(out), timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]


@pytest.fixture(scope="module")
def icrlvr_reference(tmp_path_factory):
    cfg, splits, tok, graphdef, params = _icrlvr_setup()
    out = tmp_path_factory.mktemp("icrlvr_ref")
    return icrlvr.train_method("grpo", 0, cfg.rl, cfg.eval, splits, tok, graphdef, params,
                               run_dir=str(out / "run"))


@pytest.mark.parametrize("point,n", [
    ("before", 2),  # mid-run: step 1 saved, step 2 sampled and trained, not saved
    pytest.param("after", 1, marks=pytest.mark.slow),
    pytest.param("after", 3, marks=pytest.mark.slow),  # last save done, no result.json yet
    pytest.param("before", 1, marks=pytest.mark.slow),  # nothing saved: starts over
])
def test_icrlvr_sigkill_at_a_save_point_resumes_identically(tmp_path, icrlvr_reference,
                                                            monkeypatch, point, n):
    from recrl.rlvr import learner

    _kill("icrlvr", point, n, tmp_path / "run")
    assert not (tmp_path / "run" / "result.json").exists()
    cfg, splits, tok, graphdef, params = _icrlvr_setup()
    step, calls = learner.Learner.step, []
    monkeypatch.setattr(learner.Learner, "step", lambda self, *a, **k: (calls.append(1),
                                                                  step(self, *a, **k))[1])
    args = ("grpo", 0, cfg.rl, cfg.eval, splits, tok, graphdef, params)
    resumed = icrlvr.train_method(*args, run_dir=str(tmp_path / "run"))
    _same_run(icrlvr_reference, resumed)
    saved = n - 1 if point == "before" else n  # steps restored instead of replayed
    assert len(calls) == cfg.rl.steps - saved
    assert icrlvr.train_method(*args, run_dir=str(tmp_path / "run")) == json.loads(
        (tmp_path / "run" / "result.json").read_text())  # a finished run is reused
    assert len(calls) == cfg.rl.steps - saved


# ------------------------------------------------------------------ ProRL (slow)


def prorl_config():
    from experiments.configs.prorl import get_config

    cfg = get_config("tiny")
    cfg.methods = ("prorl",)
    cfg.baselines = ("pretrained",)
    return cfg


@pytest.fixture(scope="module")
def prorl_reference(tmp_path_factory):
    from experiments import prorl

    out = tmp_path_factory.mktemp("prorl_ref")
    return out, prorl.run(prorl_config(), str(out))


def _rows(out, run="prorl_s0"):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(x)["run"] == run]


@pytest.mark.slow  # ~1 min per kill point on 2 cores (a fresh interpreter compiles the RL step)
@pytest.mark.parametrize("point,n", [("before", 1), ("after", 1), ("before", 2), ("after", 2)])
def test_prorl_sigkill_at_a_save_point_resumes_identically(tmp_path, prorl_reference,
                                                           point, n):
    from experiments import prorl

    ref_dir, ref = prorl_reference
    out = tmp_path / "run"
    out.mkdir()
    for name in ("sasrec", "gru4rec", "policy_pretrained"):  # reuse the cached stages
        shutil.copytree(ref_dir / name, out / name)
    for name in ("baselines.json", "fingerprints.json", "config.json"):
        shutil.copy(ref_dir / name, out / name)
    _kill("prorl", point, n, out)
    assert not (out / "rl" / "prorl_s0" / "result.json").exists()
    res = prorl.run(prorl_config(), str(out))
    a, b = ref["runs"][0], res["runs"][0]
    assert a["best_epoch"] == b["best_epoch"]
    for ra, rb in zip(a["history"], b["history"], strict=True):
        for k in ra:
            np.testing.assert_allclose(ra[k], rb[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for k in a["test"]:
        np.testing.assert_allclose(a["test"][k], b["test"][k], rtol=1e-5, atol=1e-6, err_msg=k)
    want, got = _rows(ref_dir), _rows(out)  # each step once, in order, same values
    assert [(r["epoch"], r["step"]) for r in got] == [(r["epoch"], r["step"]) for r in want]
    for ra, rb in zip(want, got, strict=True):
        np.testing.assert_allclose(ra["loss"], rb["loss"], rtol=1e-5, atol=1e-6)
