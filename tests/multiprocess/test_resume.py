"""Resume with a different process count, with real multi-process JAX.

``tests/multiprocess/resume_worker.py`` runs the launcher's ProRL stages (data-parallel
pretraining, a two-epoch RL run with a checkpoint per epoch, test metrics) in an output
directory:

- ``2x2 -> 1x1``: 2 processes x 2 CPU devices (``jax.distributed`` on 127.0.0.1) pretrain
  and train epoch 1, then stop; 1 process x 1 device resumes from that directory and trains
  epoch 2 only;
- ``1x1 -> 2x2``: the uninterrupted 1 x 1 run's directory as a kill after epoch 1 leaves it
  (the epoch-2 checkpoint and result removed), resumed by 2 processes x 2 devices;

and both must end where the uninterrupted 1 process x 1 device run ends: the same pretrained
parameters (up to float rounding), RL parameters, best parameters and test metrics.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.multiprocess.test_multiprocess import _free_port

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600


def _start(out: Path, nproc: int, ndev: int, stop: int, tag: str, env: dict) -> list:
    port = _free_port()
    return [subprocess.Popen(
        [sys.executable, "-m", "tests.multiprocess.resume_worker", str(out), str(nproc),
         str(pid), str(port), str(ndev), str(stop), tag], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in range(nproc)]


def _wait(groups: dict[str, list]) -> None:
    try:
        for name, ps in groups.items():
            logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in ps]
            for p, log in zip(ps, logs, strict=True):
                assert p.returncode == 0, f"{name} failed:\n{log[-4000:]}"
    finally:
        for ps in groups.values():
            for p in ps:
                if p.poll() is None:
                    p.kill()


def _kill_after_epoch_1(src: Path, dst: Path) -> None:
    """``dst``: ``src`` as a kill right after the epoch-1 checkpoint would have left it."""
    shutil.copytree(src, dst)
    run = dst / "rl" / "prorl_s0"
    (run / "result.json").unlink()
    (run / "test_prompts.npz").unlink()
    shutil.rmtree(run / "ckpt" / "2")
    assert sorted(p.name for p in (run / "ckpt").iterdir() if p.name.isdigit()) == ["1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "RECRL_DATA": str(base / "data"), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    for d in ("ref", "fwd"):
        (base / d).mkdir()
    _wait({"1x1 uninterrupted": _start(base / "ref", 1, 1, 0, "ref", env),
           "2x2 epoch 1": _start(base / "fwd", 2, 2, 1, "first", env)})
    _kill_after_epoch_1(base / "ref", base / "rev")
    _wait({"1x1 resumes 2x2": _start(base / "fwd", 1, 1, 0, "resumed", env),
           "2x2 resumes 1x1": _start(base / "rev", 2, 2, 0, "resumed", env)})
    load = lambda d, tag, pid=0: dict(np.load(base / d / f"{tag}_p{pid}.npz"))
    test = lambda d, tag: json.loads((base / d / f"{tag}_test.json").read_text())
    return {"ref": (load("ref", "ref"), test("ref", "ref")),
            "first": [load("fwd", "first", p) for p in (0, 1)],
            "fwd": (load("fwd", "resumed"), test("fwd", "resumed")),
            "rev": [load("rev", "resumed", p) for p in (0, 1)], "rev_test": test("rev", "resumed")}


def _close(a: dict, b: dict, prefix: str, what: str) -> None:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and keys == [k for k in b if k.startswith(prefix)], what
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=f"{what}: {k}")


@pytest.mark.slow
def test_stopped_runs_trained_epoch_1_only_and_resumes_train_epoch_2_only(runs):
    ref, _ = runs["ref"]
    assert list(ref["trained"]) == [1, 2] and int(ref["epoch"]) == 2
    for p in runs["first"]:
        assert list(p["trained"]) == [1] and int(p["epoch"]) == 1
    assert list(runs["fwd"][0]["trained"]) == [2] and int(runs["fwd"][0]["epoch"]) == 2
    for p in runs["rev"]:  # the pretrained policy came from the checkpoint, not retrained
        assert list(p["trained"]) == [2] and int(p["epoch"]) == 2


@pytest.mark.slow
def test_pretraining_on_2x2_equals_1x1(runs):
    ref, _ = runs["ref"]
    p0, p1 = runs["first"]
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    _close(p0, ref, "pretrained", "pretrained 2x2 vs 1x1")


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["fwd", "rev"])
def test_resumed_run_ends_where_the_uninterrupted_run_ends(runs, direction):
    ref, ref_test = runs["ref"]
    got = runs[direction][0] if direction == "fwd" else runs["rev"][0]
    test = runs["fwd"][1] if direction == "fwd" else runs["rev_test"]
    first = runs["first"][0] if direction == "fwd" else None
    if first is not None:  # epoch 2 moved the parameters: not the epoch-1 checkpoint again
        assert max(float(np.abs(got[k] - first[k]).max()) for k in got if
                   k.startswith("rl")) > 1e-4
    else:  # both processes of the 2x2 resume hold the same parameters
        for k in got:
            np.testing.assert_array_equal(got[k], runs["rev"][1][k], err_msg=k)
    for prefix in ("rl", "best"):
        _close(got, ref, prefix, f"{direction} {prefix}")
    assert test.keys() == ref_test.keys()
    for k in ref_test:
        np.testing.assert_allclose(test[k], ref_test[k], rtol=1e-3, atol=1e-4, err_msg=k)
