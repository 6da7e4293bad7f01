"""pyproject's install sets and the launchers' config resolution from the installed package."""

import pathlib
import tomllib

import pytest
from absl import flags

from experiments import configs
from tests.colab.fresh import NOT_IN_CORE

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    out = set()
    for r in requirements:
        name = r.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        out.add(name.lower().replace("_", "-"))
    return out


def test_core_dependencies_are_light():
    assert not names(PROJECT["dependencies"]) & set(NOT_IN_CORE)


def test_all_is_the_union_of_the_pipeline_extras():
    extras = PROJECT["optional-dependencies"]
    union = set().union(*(names(extras[e]) for e in ("lm", "prorl", "goracs", "rlvr", "plots", "notebook")))
    assert names(extras["all"]) == union


def test_makefile_installs_everything():
    assert "'.[all,dev]'" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("spec", ["prorl.py:tiny", "experiments/configs/prorl.py:tiny"])
def test_config_specs_resolve_from_the_package(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkout here
    path, variant = configs.resolve(spec).split(":")
    assert pathlib.Path(path) == configs.HERE / "prorl.py" and variant == "tiny"


def test_an_existing_file_is_used_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prorl.py").write_text("def get_config(v):\n    return {'mine': v}\n")
    assert configs.resolve("prorl.py:x") == f"{tmp_path / 'prorl.py'}:x"


def test_an_unknown_config_names_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'nope\.py'.*goracs\.py, icrlvr\.py, prorl\.py"):
        configs.resolve("nope.py:tiny")


def test_config_flag_resolves_and_takes_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["prog", "--config=prorl.py:tiny", "--config.rl.epochs=7"]
    monkeypatch.setattr("sys.argv", argv)  # config_flags reads overrides from sys.argv
    fv = flags.FlagValues()
    holder = configs.define_config_flag("prorl.py:ml1m_cpu", flag_values=fv)
    fv(argv)
    assert holder.value.variant == "tiny" and holder.value.rl.epochs == 7
    bad = flags.FlagValues()
    configs.define_config_flag("prorl.py:ml1m_cpu", flag_values=bad)
    with pytest.raises(flags.IllegalFlagValueError, match="packaged configs"):
        bad(["prog", "--config=nope.py:tiny"])


def test_a_launcher_without_its_extra_names_it(monkeypatch):
    import importlib
    import sys

    import experiments

    monkeypatch.setitem(experiments._NEEDS, "prorl", ("prorl", ("ml_collections", "no_such_mod")))
    monkeypatch.delitem(sys.modules, "experiments.prorl", raising=False)
    with pytest.raises(ImportError, match=r"experiments\.prorl needs no_such_mod .*\[prorl\]"):
        importlib.import_module("experiments.prorl")
