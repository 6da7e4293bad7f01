"""Executes every notebook under colab/ (tiny sizes) and fails on any cell error."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
# a line each notebook must print when it ran to the end
EXPECTED = {"estimators.ipynb": "| prorl |", "prorl.ipynb": "| **prorl** (1 seeds) |",
            "goracs.ipynb": "GORACS has the lowest exact POO: True",
            "icrlvr.ipynb": "5 {'reward':"}


def test_there_are_notebooks():
    assert NOTEBOOKS, "colab/ holds no notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    env_cwd = str(ROOT)
    os.environ.setdefault("MPLBACKEND", "Agg")
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": env_cwd}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert path.name in EXPECTED, f"add the line {path.name} prints at its end to EXPECTED"
    assert EXPECTED[path.name] in text
