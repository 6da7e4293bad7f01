"""Fixtures: small synthetic datasets and real MovieLens (fetched when not cached)."""

from pathlib import Path

import pytest

from recrl.data import fetch
from recrl.data.synthetic import synthetic_movielens


@pytest.fixture(scope="session")
def synthetic():
    """100 users, <= 300 items, 25..80 interactions each."""
    return synthetic_movielens(100, 300, seed=0)


@pytest.fixture(scope="session")
def synthetic_small():
    """30 users, a catalogue small enough for the slow references and exhaustive checks."""
    return synthetic_movielens(30, 120, min_len=12, max_len=60, seed=3)


def real_asset(name: str) -> Path:
    """The cached asset directory; fetches it when absent, skips only if that fails."""
    try:
        return fetch.require(name)
    except FileNotFoundError:
        pass
    try:
        return fetch.fetch(name)
    except (fetch.FetchError, OSError) as e:
        pytest.skip(f"{name} is not in the cache ({fetch.cache_root()}) and fetching it "
                    f"failed: {e}")


@pytest.fixture(scope="session")
def ml1m_dir() -> Path:
    return real_asset("ml-1m")


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    return real_asset("ml-100k")
