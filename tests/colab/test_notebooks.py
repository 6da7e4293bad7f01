"""Executes every notebook under colab/ at its test sizes with the checkout under test, from an
empty working directory (a notebook must not rely on the repository as its directory), and
checks that the generated notebooks and README's badges are up to date.

tests/colab/test_fresh_runtime.py runs them the way a new user does: wheel-only, fresh venv.
"""

import os
import pathlib
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
# lines each notebook must print (results a reader can check; the last one ends the notebook)
EXPECTED = {
    "estimators.ipynb": ["PSAE has a lower variance than REINFORCE: True",
                         "gradient = -A / n_actions: True", "| prorl |"],
    "prorl.ipynb": ["| **prorl** (1 seeds) |"],
    "goracs.ipynb": ["GORACS has the lowest exact POO: True"],
    "icrlvr.ipynb": ["5 {'reward':", "mean reward: first step"],
}


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} == set(EXPECTED)


def test_generated_files_are_up_to_date():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "make_notebooks.py"), "--check"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_cell_names_the_repository_url_from_pyproject():
    import tomllib

    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    for path in NOTEBOOKS:
        first = nbformat.read(path, as_version=4).cells[1]
        assert f'RECRL_SOURCE = "git+{url}"' in first.source, path.name
        assert "RECRL_INSTALL_SOURCE" in first.source, path.name


def check_outputs(name: str, nb) -> None:
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    for line in EXPECTED[name]:
        assert line in text, f"{name} did not print {line!r}"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} shows no plot"
    assert "test sizes" in text  # the set-up cell picked the test sizes


# the estimators notebook runs on a simulated fresh runtime in the default suite instead
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name != "estimators.ipynb"],
                         ids=lambda p: p.name)
def test_notebook_runs_from_an_empty_directory(path, tmp_path, monkeypatch):
    monkeypatch.setenv("RECRL_NOTEBOOK_TEST", "1")
    monkeypatch.setenv("RECRL_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows plots
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    check_outputs(path.name, nb)


class FakePip:
    """Stands in for ``subprocess`` in the install cell: records commands, answers the jax
    probe with ``backend`` and fails the constrained install when ``pins_conflict``."""

    def __init__(self, backend: str | None, pins_conflict: bool = False):
        self.backend, self.pins_conflict, self.calls = backend, pins_conflict, []

    def run(self, cmd, check=False, **kwargs):
        if cmd[1] == "-c":  # the probe: python -c "import jax; print(jax.default_backend())"
            ok = self.backend is not None
            return subprocess.CompletedProcess(cmd, 0 if ok else 1, stdout=f"{self.backend}\n")
        self.calls.append(list(cmd))
        if "-c" in cmd:
            self.pins = pathlib.Path(cmd[cmd.index("-c") + 1]).read_text()
        failed = self.pins_conflict and "-c" in cmd
        return subprocess.CompletedProcess(cmd, 1 if failed else 0)


def install_functions(fake: FakePip) -> dict:
    """The install cell's functions (not its last lines, which would run them), on ``fake``."""
    source = nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source
    namespace: dict = {}
    exec(source.split("\nif not all(")[0], namespace)
    namespace["subprocess"] = fake
    return namespace


@pytest.mark.parametrize("backend", [None, "cpu"])
def test_install_cell_without_an_accelerator_installs_recrls_jax(backend, monkeypatch):
    monkeypatch.setenv("RECRL_INSTALL_SOURCE", str(ROOT))
    fake = FakePip(backend)
    install_functions(fake)["install_recrl"]()
    (cmd,) = fake.calls
    assert cmd[-1].startswith("recrl[") and f"@ {ROOT.as_uri()}" in cmd[-1] and "-c" not in cmd


@pytest.mark.parametrize("backend, plugin", [("gpu", "jax[cuda12]"), ("tpu", "jax[tpu]")])
def test_install_cell_keeps_an_accelerator_jax(backend, plugin, monkeypatch):
    from importlib import metadata

    monkeypatch.setenv("RECRL_INSTALL_SOURCE", str(ROOT))
    fake = FakePip(backend)
    install_functions(fake)["install_recrl"]()
    (cmd,) = fake.calls  # one install, constrained to the runtime's jax
    assert f"jax=={metadata.version('jax')}" in fake.pins.splitlines()
    assert f"jaxlib=={metadata.version('jaxlib')}" in fake.pins.splitlines()
    # a runtime jax outside recrl's range: recrl's jax with the accelerator's plugin
    fake = FakePip(backend, pins_conflict=True)
    install_functions(fake)["install_recrl"]()
    assert len(fake.calls) == 2 and fake.calls[1][-1] == plugin and "-c" not in fake.calls[1]
