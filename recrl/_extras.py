"""The ImportError a module raises when a package of one of recrl's extras is missing."""

from __future__ import annotations


def missing(module: str, extra: str, error: ImportError) -> ImportError:
    """An ImportError naming ``module``, the missing package and the extra that installs it."""
    return ImportError(
        f"{module} needs {error.name or 'a package'} (not installed), which recrl's [{extra}] "
        f"extra installs: pip install 'recrl[{extra}]' (or 'recrl[all]')")
