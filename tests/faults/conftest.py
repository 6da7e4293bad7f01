"""Helpers for the fault-injection tests: a fake pinned asset and a subprocess runner."""

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from recrl.data import fetch

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, *args: str, timeout: float = 300, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter that imports this checkout (not another one)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep
                + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def fake_asset(tmp_path):
    """A wheel holding two small files under an asset prefix, and its pinned ``Asset``."""
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/data/a.inter", "user_id:token\titem_id:token\n" + "1\t2\n" * 5000)
        zf.writestr("fake/data/sub/b.bin", os.urandom(200_000))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    asset = fetch.Asset("fake", "fake", "1.0", digest, "fake/data/", "test asset")
    return asset, wheel
