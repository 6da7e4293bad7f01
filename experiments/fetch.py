"""Fetches pinned data sets and model weights into the local cache (``recrl.data.fetch``).

Usage::

    python -m experiments.fetch ml-1m smollm2   # or ml-100k, minilm, all
    python -m experiments.fetch --list          # what is cached (also with no names)
    python -m experiments.fetch --verify ml-1m  # re-hash the cached files
    python -m experiments.fetch --force ml-1m   # fetch again even if cached

The cache lives in ``$RECRL_DATA`` (default ``~/.cache/recrl``). Exit status 1 on any error.
"""

from __future__ import annotations

import sys

from absl import app, flags

from recrl.data import fetch as fetch_lib

FLAGS = flags.FLAGS


def list_assets() -> int:
    """Prints every asset with its cache status; returns 0."""
    for a in fetch_lib.ASSETS.values():
        status = "cached" if fetch_lib.is_fetched(a.name) else "not fetched"
        print(f"{a.name:8s} {a.requirement:28s} {status:12s} {a.description}")
    print(f"cache: {fetch_lib.cache_root()}")
    return 0


def verify_assets(names: list[str]) -> int:
    """Re-hashes the cached files of ``names``; 1 if any is damaged or unknown."""
    bad = 0
    for n in names:
        try:
            problems = fetch_lib.verify(n)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{n}: " + ("; ".join(problems) if problems else "ok"))
        bad += bool(problems)
    return 1 if bad else 0


def fetch_assets(names: list[str], force: bool) -> int:
    """Fetches ``names`` (``force``: again even if cached); 1 on the first error."""
    for n in names:
        try:
            path = fetch_lib.fetch(n, force=force)
        except (ValueError, fetch_lib.FetchError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{n}: {path}")
    return 0


def main(argv: list[str]) -> int:
    names = argv[1:]
    if FLAGS.list or not names:
        return list_assets()
    names = list(fetch_lib.ASSETS) if names == ["all"] else names
    return verify_assets(names) if FLAGS.verify else fetch_assets(names, FLAGS.force)


if __name__ == "__main__":
    flags.DEFINE_bool("list", False, "List the assets and their status.")
    flags.DEFINE_bool("force", False, "Fetch again even if cached.")
    flags.DEFINE_bool("verify", False,
                      "Check the cached files' sizes and sha256 against the marker.")
    app.run(lambda argv: sys.exit(main(argv)))
