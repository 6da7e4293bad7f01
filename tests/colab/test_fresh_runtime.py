"""recrl as a new user meets it: the wheel installed into a fresh virtual environment, used
from an empty directory with no checkout on the path.

- The core install (``pip install <wheel>``, no extras) runs docs/examples/own_train_step.md
  and brings none of the pipelines' heavy dependencies.
- Each Colab notebook runs on a simulated fresh runtime: a fresh venv holding only a Jupyter
  kernel (as Colab has), where the notebook's own first cell installs recrl from the wheel
  (``RECRL_INSTALL_SOURCE``) with the notebook's extras. The estimators notebook runs in the
  default suite; the other three, each with its own heavier extras, are slow tests.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from tests.colab import fresh
from tests.colab.test_notebooks import EXPECTED

ROOT = fresh.ROOT
EXAMPLE = ROOT / "docs" / "examples" / "own_train_step.md"
KERNEL = ["ipykernel>=6.29", "nbclient>=0.10", "nbformat>=5.10"]  # what a Colab runtime has


def example_code() -> str:
    (code,) = re.findall(r"```python\n(.*?)```", EXAMPLE.read_text(), re.S)
    return code


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    return fresh.build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def core(wheel, tmp_path_factory):
    """A venv with the wheel and no extras; what it holds and what the example page printed,
    recorded before any later test adds packages to it."""
    tmp = tmp_path_factory.mktemp("core")
    python = fresh.make_venv(tmp / "venv")
    fresh.run([str(python), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp)
    work = tmp / "empty"
    work.mkdir()
    (work / "example.py").write_text(example_code())
    env = fresh.clean_env(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4")
    example = fresh.run([str(python), "example.py"], cwd=work, env=env).stdout
    probe = ("import importlib\n"
             "for m in ('recrl.estimators', 'recrl.parallel', 'recrl.checkpoint', "
             "'recrl.coreset', 'recrl.models', 'recrl.models.tokenizer', 'recrl.data.movielens', "
             "'experiments.length_bias', 'experiments.prorl', 'experiments.goracs', "
             "'experiments.icrlvr'):\n"
             "    try:\n        importlib.import_module(m); print(m, 'ok')\n"
             "    except ImportError as e:\n        print(m, 'ImportError', e)\n")
    imports = fresh.run([str(python), "-c", probe], cwd=work, env=env).stdout
    return dict(python=python, installed=fresh.installed(python), example=example,
                imports=imports, work=work)


def test_example_page_is_short():
    assert len(example_code().splitlines()) < 40


def test_core_install_is_light(core):
    heavy = sorted(set(fresh.NOT_IN_CORE) & core["installed"])
    assert not heavy, f"the core install brought {heavy}"
    assert {"jax", "flax", "optax", "chex", "orbax-checkpoint", "recrl"} <= core["installed"]


def test_core_install_runs_the_example_page(core):
    before, after = (float(x) for x in
                     re.findall(r"P\(even item\) (?:before|after): ([0-9.]+)", core["example"]))
    # reward part 0 pays for even items: the trained policy must favour them clearly
    assert after > before + 0.1, core["example"]


def test_core_modules_import_and_extras_are_named(core):
    lines = dict(line.split(" ", 1) for line in core["imports"].splitlines())
    for m in ("recrl.estimators", "recrl.parallel", "recrl.checkpoint"):
        assert lines[m] == "ok", core["imports"]
    assert "[goracs]" in lines["recrl.coreset"], core["imports"]
    # recrl.models exports lazily: the package imports, its tokenizer module names [lm]
    assert lines["recrl.models"] == "ok", core["imports"]
    assert "[lm]" in lines["recrl.models.tokenizer"], core["imports"]
    assert "[prorl]" in lines["recrl.data.movielens"], core["imports"]
    # the launchers ship in the wheel; those of the pipelines name their extra
    assert lines["experiments.length_bias"] == "ok", core["imports"]
    for launcher, extra in (("prorl", "prorl"), ("goracs", "goracs"), ("icrlvr", "rlvr")):
        assert f"[{extra}]" in lines[f"experiments.{launcher}"], core["imports"]


def run_fresh_notebook(name: str, python: pathlib.Path, wheel: pathlib.Path,
                       work: pathlib.Path) -> None:
    fresh.run([str(python), "-m", "pip", "install", "-q", *KERNEL], cwd=work)
    env = fresh.clean_env(RECRL_INSTALL_SOURCE=str(wheel), RECRL_NOTEBOOK_TEST="1",
                          RECRL_DATA=str(work / "data"), JAX_PLATFORMS="cpu")
    env.pop("MPLBACKEND", None)
    nb = fresh.execute_notebook(python, ROOT / "colab" / name, work, env)
    assert not fresh.errors(nb), fresh.errors(nb)[0]
    text = fresh.stream_text(nb)
    for line in EXPECTED[name]:
        assert line in text, f"{name} did not print {line!r}"
    assert fresh.has_image(nb), f"{name} shows no plot"
    assert "test sizes" in text and "on cpu" in text


def test_estimators_notebook_on_a_fresh_runtime(core, wheel):
    # runs after the core checks above (module order); it adds the kernel and [plots]
    run_fresh_notebook("estimators.ipynb", core["python"], wheel, core["work"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["prorl.ipynb", "goracs.ipynb", "icrlvr.ipynb"])
def test_notebook_on_a_fresh_runtime(name, wheel, tmp_path):
    python = fresh.make_venv(tmp_path / "venv")
    work = tmp_path / "empty"
    work.mkdir()
    run_fresh_notebook(name, python, wheel, work)
