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
