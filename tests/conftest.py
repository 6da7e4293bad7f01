"""Test set-up: 4 fake CPU devices (before JAX initialises) and the `slow` marker."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RECRL_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set RECRL_SLOW=1 (make test-slow) to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
