"""Real multi-process JAX: 2 OS processes × 2 CPU devices joined by ``jax.distributed``.

Each configuration runs ``tests/multiprocess/worker.py`` (a few training steps of ProRL's
launcher ``train_method``, the In-Context RLVR ``Learner`` of a plain and of an in-context
method, and the GORACS LoRA fine-tune, all on the global data mesh of the launchers'
start-up): 2 processes × 2 devices (gloo CPU
collectives on 127.0.0.1), 1 process × 4 devices and 1 process × 1 device. The parameters
must agree within float tolerance, both processes must hold the same parameters, and only
process 0 may have written the metrics files. The three configurations run at the same
time (one compile each) to stay within CI time.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"2x2": (2, 2), "1x4": (1, 4), "1x1": (1, 1)}
TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(base: Path) -> dict:
    """The workers' environment: this checkout first on the path, a data cache under
    ``base``, CPU only, and no inherited XLA_FLAGS (each worker sets its own device count)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "RECRL_DATA": str(base / "data"), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("multiprocess")
    env = worker_env(base)
    procs = {}
    for name, (nproc, ndev) in CONFIGS.items():
        out = base / name
        out.mkdir()
        port = _free_port()
        procs[name] = (out, [subprocess.Popen(
            [sys.executable, "-m", "tests.multiprocess.worker", str(out), str(nproc),
             str(pid), str(port), str(ndev)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True) for pid in range(nproc)])
    results = {}
    try:
        for name, (out, ps) in procs.items():
            logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in ps]
            for p, log in zip(ps, logs, strict=True):
                assert p.returncode == 0, f"{name} worker failed:\n{log[-4000:]}"
            results[name] = (out, [dict(np.load(out / f"params_p{pid}.npz"))
                                   for pid in range(len(ps))])
    finally:
        for _, ps in procs.values():
            for p in ps:
                if p.poll() is None:
                    p.kill()
    return results


def _assert_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=f"{what}: {k}")


def test_both_processes_hold_the_same_parameters(runs):
    _, (p0, p1) = runs["2x2"]
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)


@pytest.mark.parametrize("part", ["prorl", "icrlvr", "incontext", "goracs"])
def test_parameters_equal_on_2x2_1x4_and_1x1(runs, part):
    got = {name: {k: v for k, v in ps[0].items() if k.startswith(part)}
           for name, (_, ps) in runs.items()}
    assert got["1x1"], f"no {part} parameters saved"
    # training moved the parameters: the equality below is not that of untouched weights
    init = {k: v for k, v in runs["1x1"][1][0].items() if k.startswith(f"init/{part}")}
    moved = max(float(np.abs(got["1x1"][k.removeprefix("init/")] - v).max())
                for k, v in init.items())
    assert moved > 1e-4, f"{part}: parameters did not change ({moved})"
    _assert_close(got["2x2"], got["1x1"], f"{part} 2x2 vs 1x1")
    _assert_close(got["1x4"], got["1x1"], f"{part} 1x4 vs 1x1")


def test_only_process_zero_wrote_the_metrics(runs):
    rows = {}
    for name, (out, _) in runs.items():
        lines = (out / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 3, f"{name}: {len(lines)} metric rows for 3 steps"
        rows[name] = [json.loads(x) for x in lines]
        events = list((out / "tb").rglob("events.out.tfevents.*"))
        assert len(events) == 1, f"{name}: {len(events)} TensorBoard files"
        assert (out / "rl" / "prorl_s0" / "result.json").exists()
    for a, b in zip(rows["2x2"], rows["1x1"], strict=True):
        assert a["step"] == b["step"]
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-3, atol=1e-5)
