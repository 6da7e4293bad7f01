"""The fetch command line (experiments/fetch.py) on an empty cache: no network is touched."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, *args):
    env = {**os.environ, "RECRL_DATA": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "experiments.fetch", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_list_verify_and_unknown_name(tmp_path):
    listed = _run(tmp_path, "--list")
    assert listed.returncode == 0, listed.stderr
    assert "ml-1m" in listed.stdout and "not fetched" in listed.stdout
    assert f"cache: {tmp_path}" in listed.stdout
    verified = _run(tmp_path, "--verify", "ml-1m")
    assert verified.returncode == 1 and "ml-1m: " in verified.stdout
    assert "is not fetched" in verified.stdout
    unknown = _run(tmp_path, "nosuch")
    assert unknown.returncode == 1
    assert "unknown dataset or model 'nosuch'; known:" in unknown.stderr
    assert not any(tmp_path.iterdir())  # nothing written
