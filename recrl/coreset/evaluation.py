r"""Statistics of the GORACS decisive comparison: user-level bootstrap, Spearman ρ with a
permutation p-value, a value's percentile in a distribution.

The user-level bootstrap resamples *users* with replacement (all windows of a drawn user
together) and recomputes the window mean
:math:`\bar v^{(b)} = \sum_u c^{(b)}_u S_u / \sum_u c^{(b)}_u n_u` (:math:`c^{(b)}_u` = times
user :math:`u` was drawn, :math:`S_u` its windows' sum, :math:`n_u` their number), so that
test windows clustered on few users do not overstate the sample size. For a paired
comparison pass the per-window differences.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Interval(NamedTuple):
    """A mean and its bootstrap percentile interval."""

    mean: float
    lo: float
    hi: float


def user_bootstrap(values: np.ndarray, users: np.ndarray, *, num: int = 2000,
                   seed: int = 0) -> np.ndarray:
    """Bootstrap distribution ``[num]`` of the mean of ``values [N]`` resampling ``users
    [N]`` (one id per window) with replacement."""
    v = np.asarray(values, np.float64)
    u = np.asarray(users)
    if v.ndim != 1 or u.shape != v.shape or v.size == 0:
        raise ValueError(f"values and users must be equal-length 1-D arrays; got {v.shape}, "
                         f"{u.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite")
    if num < 1:
        raise ValueError(f"num must be >= 1; got {num}")
    ids, inv = np.unique(u, return_inverse=True)
    sums = np.bincount(inv, weights=v, minlength=ids.size)
    counts = np.bincount(inv, minlength=ids.size).astype(np.float64)
    picks = np.random.default_rng(seed).integers(0, ids.size, size=(num, ids.size))
    out = np.empty(num)
    for lo in range(0, num, 256):  # draw counts per resample, in blocks (bounded memory)
        p = picks[lo:lo + 256]
        c = np.zeros((p.shape[0], ids.size))
        np.add.at(c, (np.arange(p.shape[0])[:, None], p), 1.0)
        out[lo:lo + 256] = (c @ sums) / (c @ counts)
    return out


def user_interval(values: np.ndarray, users: np.ndarray, *, level: float = 0.95,
                  num: int = 2000, seed: int = 0) -> Interval:
    """The window mean of ``values`` and its user-level bootstrap percentile interval."""
    boot = user_bootstrap(values, users, num=num, seed=seed)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [a, 1.0 - a])
    return Interval(float(np.mean(values)), float(lo), float(hi))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank."""
    order = np.argsort(x, kind="stable")
    r = np.empty(x.size)
    r[order] = np.arange(1, x.size + 1)
    _, inv = np.unique(x, return_inverse=True)
    return (np.bincount(inv, weights=r) / np.bincount(inv))[inv]


def spearman(x: np.ndarray, y: np.ndarray, *, permutations: int = 10000,
             seed: int = 0) -> tuple[float, float]:
    """Spearman ρ of ``x`` and ``y`` and the one-sided permutation p-value of ρ being this
    large or larger (``(1 + #{ρ_perm >= ρ}) / (1 + permutations)``)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 3:
        raise ValueError(f"x and y must be equal-length 1-D arrays of >= 3; got {x.shape}, "
                         f"{y.shape}")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx**2).sum() * (ry**2).sum())
    if den == 0:
        return float("nan"), 1.0
    rho = float(rx @ ry / den)
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random((permutations, x.size)), axis=1)
    rhos = (ry[perm] @ rx) / den
    p = float((1 + np.sum(rhos >= rho - 1e-12)) / (1 + permutations))
    return rho, p


def percentile(value: float, dist: np.ndarray) -> float:
    """Share (in %) of ``dist`` strictly below ``value`` (0 = below every member)."""
    d = np.asarray(dist, np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"dist must be a non-empty 1-D array; got {d.shape}")
    return float(100.0 * np.mean(d < value))
