"""GORACS ``protocol=decisive`` with real multi-process JAX (slow: ``make test-slow``).

``tests/multiprocess/decisive_worker.py`` runs the launcher's ``run_decisive`` (features,
selections, early-stopped fine-tunes with Orbax checkpoints, test evaluation) on a small
decisive config as 2 OS processes × 2 CPU devices joined by ``jax.distributed`` on
127.0.0.1, as 1 process × 4 devices and as 1 process × 1 device, then reruns it after
process 0 removed one finished run; then 2 × 2 resumes a copy of 1 × 1's run and 1 × 1 a
copy of 2 × 2's, each with one finished run removed. The selections, features and
per-window test results must agree, only process 0 may have written files (outside the
checkpoints), and each rerun must redo the removed run only. The configurations of each
phase run at the same time.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.multiprocess import decisive_worker
from tests.multiprocess.test_multiprocess import CONFIGS, _assert_close, _free_port, worker_env

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 900
pytestmark = pytest.mark.slow


RESUMES = {"2x2 resumes 1x1": ("1x1", 2, 2), "1x1 resumes 2x2": ("2x2", 1, 1)}


def _start(out: Path, nproc: int, ndev: int, env: dict, *extra: str) -> list:
    port = _free_port()
    return [subprocess.Popen(
        [sys.executable, "-m", "tests.multiprocess.decisive_worker", str(out), str(nproc),
         str(pid), str(port), str(ndev), *extra], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in range(nproc)]


def _wait(procs: dict[str, tuple[Path, list]]) -> None:
    try:
        for name, (_, ps) in procs.items():
            logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in ps]
            for p, log in zip(ps, logs, strict=True):
                assert p.returncode == 0, f"{name} worker failed:\n{log[-4000:]}"
    finally:
        for _, ps in procs.values():
            for p in ps:
                if p.poll() is None:
                    p.kill()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three layouts; then 2 × 2 resuming 1 × 1's finished run and 1 × 1 resuming
    2 × 2's, each with the run ``REDO`` removed. ``{name: (out, processes)}``."""
    base = tmp_path_factory.mktemp("decisive")
    env = worker_env(base)
    procs = {}
    for name, (nproc, ndev) in CONFIGS.items():
        (base / name).mkdir()
        procs[name] = (base / name, _start(base / name, nproc, ndev, env))
    _wait(procs)
    resumed = {}
    for name, (src, nproc, ndev) in RESUMES.items():
        out = base / name.replace(" ", "_")
        shutil.copytree(base / src / "decisive", out / "decisive")
        (out / "decisive" / "runs" / f"{decisive_worker.REDO}.json").unlink()
        resumed[name] = (out, _start(out, nproc, ndev, env, "resume"))
    _wait(resumed)
    return {name: (out, len(ps)) for name, (out, ps) in {**procs, **resumed}.items()}


def _decisive(out: Path) -> tuple[dict, dict, dict]:
    """Selections, features and ``{run: (record, per-window arrays)}`` of the decisive run."""
    run = out / "decisive"
    runs = {p.stem: (json.loads(p.read_text()), dict(np.load(p.with_suffix(".npz"))))
            for p in (run / "runs").glob("*.json")}
    return (json.loads((run / "selections.json").read_text()),
            dict(np.load(run / "features.npz")), runs)


def test_decisive_protocol_equal_on_2x2_1x4_and_1x1(runs):
    """``protocol=decisive`` (features, selections, early-stopped fine-tunes, test
    evaluation) gives the same selections and test results on every layout."""
    sels, feats, want = _decisive(runs["1x1"][0])
    assert set(want) == {"base", "full", "goracs_n6", f"{decisive_worker.REDO}"}
    # fine-tuning changed the model: equal test results below are not the base model's
    assert abs(want["full"][0]["test_nll"] - want["base"][0]["test_nll"]) > 1e-3
    for name in ("2x2", "1x4", *RESUMES):
        got_sels, got_feats, got = _decisive(runs[name][0])
        assert {k: v["indices"] for k, v in got_sels.items()} == {
            k: v["indices"] for k, v in sels.items()}, name
        _assert_close(got_feats, feats, f"decisive features {name} vs 1x1")
        assert got.keys() == want.keys()
        for run, (rec, per) in want.items():
            for key in ("best_step", "steps_run", "HR@10"):
                assert got[run][0][key] == rec[key], f"{name} {run} {key}"
            np.testing.assert_allclose(got[run][0]["val_curve"], rec["val_curve"],
                                       rtol=1e-5, err_msg=f"{name} {run}")
            np.testing.assert_allclose(got[run][1]["nll"], per["nll"], rtol=1e-5,
                                       err_msg=f"{name} {run}")
            np.testing.assert_array_equal(got[run][1]["ranks"], per["ranks"])


def test_decisive_only_process_zero_wrote_files_and_rerun_redoes_one_run(runs):
    for name, (out, nproc) in runs.items():
        logs = [json.loads((out / f"decisive_writes_p{pid}.json").read_text())
                for pid in range(nproc)]
        for pid, log in enumerate(logs[1:], 1):
            assert log == {"first": [], "second": []}, f"{name}: process {pid} wrote {log}"
        written = {Path(w.split(" ", 1)[1]).name for w in logs[0]["first"]}
        if name in RESUMES:  # only the rerun: features, selections and 3 runs were there
            assert not written and not any("features" in w or "selections" in w
                                           for w in logs[0]["second"]), name
        else:
            assert {"features.npz", "selections.json", "report.md", "test_users.npy",
                    "goracs_n6.json", "goracs_n6.npz", "base.npz", "full.json"} <= written, name
        # the rerun: only the removed run again (its files through temporary names)
        redone = {Path(w.split(" ", 1)[1]).name for w in logs[0]["second"]
                  if "/runs/" in w}
        assert {n.removesuffix(".tmp") for n in redone} == {
            f"{decisive_worker.REDO}.json", f"{decisive_worker.REDO}.npz"}, f"{name}: {redone}"


def test_early_stopped_fine_tune_continues_from_its_checkpoint(runs):
    """On every layout a fine-tune continued from the checkpoint of its first 4 steps ends
    as the uninterrupted one (the same curve and adapters, on every process), and all
    layouts agree with 1 × 1; a fine-tune whose best point stays step 0 saves and ends."""
    want = json.loads((runs["1x1"][0] / "fine_tunes_p0.json").read_text())
    assert want["uninterrupted"]["best_step"] > 0
    assert want["stopped"]["steps_run"] == 4 and want["resumed"]["steps_run"] == 6
    assert want["diverged"]["best_step"] == 0 and len(want["diverged"]["val_curve"]) == 3
    for name, (out, nproc) in runs.items():
        if name in RESUMES:
            continue
        for pid in range(nproc):
            got = json.loads((out / f"fine_tunes_p{pid}.json").read_text())
            assert got["resumed"] == got["uninterrupted"], f"{name} process {pid}"
            for run in ("resumed", "diverged"):
                assert got[run]["best_step"] == want[run]["best_step"], name
                np.testing.assert_allclose(got[run]["val_curve"], want[run]["val_curve"],
                                           rtol=1e-5, err_msg=f"{name} {run}")
                for a, b in zip(got[run]["adapters"], want[run]["adapters"], strict=True):
                    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6,
                                               err_msg=f"{name} {run}")
