"""The ImportError a module raises when a package of one of recrl's extras is missing, and
the lazy imports that keep a package usable without the extras of its other parts."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def missing(module: str, extra: str, error: ImportError) -> ImportError:
    """An ImportError naming ``module``, the missing package and the extra that installs it."""
    return ImportError(
        f"{module} needs {error.name or 'a package'} (not installed), which recrl's [{extra}] "
        f"extra installs: pip install 'recrl[{extra}]' (or 'recrl[all]')")


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object],
                                                                  Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` of a package whose names ``exports`` (name -> submodule)
    are imported on first use (PEP 562), so that using one submodule, or one extra's part of
    a package, does not import the others."""

    def getattr_(name: str) -> object:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return getattr_, dir_
