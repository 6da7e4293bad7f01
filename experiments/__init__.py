"""Launchers: absl-flags entry points, one per experiment.

Shipped in recrl's wheel as the top-level package ``experiments`` (run one with
``python -m experiments.prorl --config=prorl.py:demo`` from any directory); each needs its
pipeline's extra (``recrl[prorl]``, ``recrl[goracs]``, ``recrl[rlvr]``): importing a launcher
without it raises an ImportError naming the extra and the missing packages.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

# launcher -> (the extra that installs its dependencies, modules it imports from that extra)
_NEEDS = {
    "prorl": ("prorl", ("ml_collections", "tensorboardX", "datasets", "pyarrow")),
    "goracs": ("goracs", ("ml_collections", "ott", "datasets", "pyarrow", "tokenizers")),
    "icrlvr": ("rlvr", ("ml_collections", "tokenizers")),
}


class _ExtraCheck(importlib.abc.MetaPathFinder):
    """Checks a launcher's extra before it loads (then defers to the usual finders)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, launcher = fullname.partition(".")
        if prefix != __name__ or launcher not in _NEEDS:
            return None
        extra, modules = _NEEDS[launcher]
        missing = [m for m in modules
                   if m not in sys.modules and importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(
                f"{fullname} needs {', '.join(missing)} (not installed), which recrl's [{extra}] "
                f"extra installs: pip install 'recrl[{extra}]' (or 'recrl[all]')", name=fullname)
        return None


if not any(isinstance(f, _ExtraCheck) for f in sys.meta_path):
    sys.meta_path.insert(0, _ExtraCheck())
