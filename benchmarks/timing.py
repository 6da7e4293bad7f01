"""The timing loop the benchmarks share."""

from __future__ import annotations

import time

import jax
import numpy as np


def median_seconds(fn, *args, repeats: int, warmup: bool = True) -> float:
    """Median wall time of ``fn(*args)`` over ``repeats`` calls, each waited for with
    ``jax.block_until_ready``; ``warmup`` runs one untimed call first (compilation)."""
    if warmup:
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
