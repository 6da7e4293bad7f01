"""Runs the docstring examples (doctests) of recrl's library modules.

Every module whose docstrings hold ``>>>`` examples is listed here; a test fails when an
example's output differs, and when a module gains examples without being listed.
"""

import doctest
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULES = [
    "recrl.estimators._checks",
    "recrl.estimators.advantages",
    "recrl.estimators.evidence",
    "recrl.estimators.losses",
    "recrl.estimators.returns",
    "recrl.parallel",
    "recrl.checkpoint",
    "recrl.prs.simulator",
]


def test_every_module_with_examples_is_listed():
    with_examples = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "recrl").rglob("*.py") if ">>>" in p.read_text()}
    assert with_examples <= set(MODULES), f"add to MODULES: {sorted(with_examples - set(MODULES))}"


@pytest.mark.parametrize("name", MODULES)
def test_doctests_pass(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_estimator_examples_exist():
    # the estimators are the documented entry point: their examples must not silently vanish
    attempted = sum(doctest.testmod(importlib.import_module(m), report=False,
                                    optionflags=doctest.ELLIPSIS).attempted
                    for m in MODULES if m.startswith("recrl.estimators"))
    assert attempted >= 15
