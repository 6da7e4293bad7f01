"""The API reference (``make docs``) builds without warnings, documents every public function
and class of the five library packages, and fails on a broken cross-reference."""

import importlib
import inspect
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "api"
MODULES = ["recrl.estimators", "recrl.parallel", "recrl.checkpoint", "recrl.coreset",
           "recrl.models"]


def sphinx(src: pathlib.Path, out: pathlib.Path) -> subprocess.CompletedProcess:
    # the flags of `make docs`: warnings (and unresolved references, -n) are errors
    return subprocess.run([sys.executable, "-m", "sphinx", "-E", "-W", "-n", "--keep-going", "-q",
                           "-b", "html", str(src), str(out)], cwd=ROOT, capture_output=True,
                          text=True)


def public_names(name: str) -> list[str]:
    module = importlib.import_module(name)
    if hasattr(module, "__all__"):
        names = list(module.__all__)
    else:
        names = [n for n, obj in vars(module).items() if not n.startswith("_")
                 and getattr(obj, "__module__", None) == name]
    return [n for n in names if inspect.isfunction(getattr(module, n))
            or inspect.isclass(getattr(module, n))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    proc = sphinx(DOCS, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not proc.stderr.strip(), proc.stderr
    return out


def test_every_public_function_is_documented(built):
    from sphinx.util.inventory import InventoryFile

    with open(built / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", lambda base, uri: uri)
    items = getattr(inventory, "data", inventory)  # Sphinx >= 8.2 wraps the mapping
    documented = {name for entries in items.values() for name in entries}
    missing = [f"{m}.{n}" for m in MODULES for n in public_names(m)
               if f"{m}.{n}" not in documented]
    assert not missing, f"not in the API reference: {missing}"
    assert len([1 for m in MODULES for _ in public_names(m)]) > 60


def test_a_broken_reference_fails_the_build(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DOCS / "conf.py", src / "conf.py")
    (src / "index.rst").write_text("Broken\n======\n\nSee :func:`recrl.estimators.no_such_fn`.\n")
    proc = sphinx(src, tmp_path / "out")
    assert proc.returncode != 0
    assert "no_such_fn" in proc.stderr
