"""Helpers for tests that run recrl the way a new user does: from a wheel, in a fresh virtual
environment, in an empty directory (no checkout on the path)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
# what the core install must not bring (the heavy pipeline dependencies)
NOT_IN_CORE = ("datasets", "matplotlib", "tensorboardx", "gguf", "ott-jax", "pyarrow", "pot")
_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info",
                                 "__pycache__", "_build", ".pytest_cache", ".ruff_cache")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything pointing at the checkout or the dev venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "RECRL_INSTALL_SOURCE")}
    env.update(extra)
    return env


def run(cmd: list[str], cwd: pathlib.Path, env: dict[str, str] | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """Runs ``cmd``; on failure raises with its output (so the test report shows why)."""
    proc = subprocess.run(cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def build_wheel(tmp: pathlib.Path) -> pathlib.Path:
    """Builds recrl's wheel from a copy of the checkout (the checkout itself stays untouched)."""
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"),
         str(src)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("recrl-*.whl")
    return wheel


def make_venv(path: pathlib.Path) -> pathlib.Path:
    """A fresh virtual environment (no site packages); returns its python."""
    run([sys.executable, "-m", "venv", str(path)], cwd=path.parent)
    return path / "bin" / "python"


def installed(python: pathlib.Path) -> set[str]:
    """Normalised names of the distributions installed in ``python``'s environment."""
    out = run([str(python), "-m", "pip", "list", "--format=json"], cwd=python.parent).stdout
    return {d["name"].lower().replace("_", "-") for d in json.loads(out)}


_RUNNER = """
import sys, nbformat
from nbclient import NotebookClient
src, dst, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
nb = nbformat.read(src, as_version=4)
client = NotebookClient(nb, timeout=timeout, kernel_name="recrl-fresh",
                        resources={"metadata": {"path": "."}})
try:
    client.execute()
finally:
    nbformat.write(nb, dst)
"""


def execute_notebook(python: pathlib.Path, notebook: pathlib.Path, workdir: pathlib.Path,
                     env: dict[str, str], timeout: int = 600) -> dict:
    """Executes ``notebook`` with a kernel of ``python``'s environment, in ``workdir``; returns
    the executed notebook (also when a cell failed: the caller inspects its outputs)."""
    prefix = python.parent.parent
    run([str(python), "-m", "ipykernel", "install", "--prefix", str(prefix), "--name",
         "recrl-fresh"], cwd=workdir, env=env)
    out = workdir / f"executed-{notebook.name}"
    runner = workdir / "run_notebook.py"
    runner.write_text(_RUNNER)
    proc = subprocess.run([str(python), str(runner), str(notebook), str(out), str(timeout)],
                          cwd=workdir, env=env, capture_output=True, text=True)
    if not out.exists():
        raise AssertionError(f"the notebook runner failed\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def outputs(nb: dict) -> list[dict]:
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def stream_text(nb: dict) -> str:
    return "".join("".join(o.get("text", "")) for o in outputs(nb)
                   if o.get("output_type") == "stream")


def errors(nb: dict) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}\n" + "\n".join(o.get("traceback", []))[-3000:]
            for o in outputs(nb) if o.get("output_type") == "error"]


def has_image(nb: dict) -> bool:
    return any("image/png" in o.get("data", {}) for o in outputs(nb))
