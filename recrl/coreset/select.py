"""GORACS entry point: ``select(pool_features, val_features, grad_norms, n)``."""

from __future__ import annotations

import math
import numbers
import time
from typing import NamedTuple

import numpy as np

from recrl.coreset import objective
from recrl.coreset.itra import itra as run_itra


class Selection(NamedTuple):
    """Selected pool rows and how POO evolved."""

    indices: np.ndarray  # [n] sorted pool indices
    trace: np.ndarray  # POO after init and after each accepted swap (per label: concatenated)
    seconds: float
    checks: int


def select(pool_features: np.ndarray, val_features: np.ndarray,
           grad_norms: np.ndarray | None, n: int, *, lam: float = 0.1,
           max_iters: int = 100, cut: int = 10, max_checks: int = 20,
           epsilon: float = 0.05, threshold: float = 1e-3, verify: str = "sinkhorn",
           pool_labels: np.ndarray | None = None,
           val_labels: np.ndarray | None = None, block: int = 1,
           momentum: float = 1.5, exact_after: int | str | None = 100,
           exact_solver: str = "pot") -> Selection:
    r"""GORACS: minimise :math:`\mathrm{POO}(S) = W_d(\mu_S,\mu_V) - \lambda\,
    \mathrm{mean}_{i\in S}\hat g_i` over :math:`|S| = n` with ITRA.

    Label-enhanced variant (binary click task) when ``pool_labels``/``val_labels`` are given:
    the budget is split by the validation positive rate, :math:`n_1 = \mathrm{round}(n\,
    \bar y_V)` (clipped to what each label's pool holds), and ITRA runs per label (= an
    infinite cost across labels). The cost is normalised once on the whole pool.

    ``block > 1`` first tries ``block`` disjoint promising swaps as one verified move each
    round (recrl's extension; ~3x faster at equal exact POO in ``benchmarks/itra.py``);
    ``momentum`` over-relaxes the verification solves (see :func:`refine`).
    ``exact_after`` / ``exact_solver`` default to the switch after 100 Sinkhorn iterations
    and full POT solves, the settings behind the GORACS results in docs/goracs.md (so a
    rerun reproduces them); ``exact_after="auto"`` with ``exact_solver="update"`` is
    :func:`refine`'s faster CPU default, which can walk a different path of equal-value
    swaps.
    """
    t0 = time.perf_counter()
    cost = _checked_cost(pool_features, val_features, grad_norms, n, lam, epsilon, threshold)
    tb = None if grad_norms is None else np.asarray(grad_norms, np.float64)
    kw = dict(max_iters=max_iters, cut=cut, max_checks=max_checks, epsilon=epsilon,
              threshold=threshold, verify=verify, block=block, momentum=momentum,
              exact_after=exact_after, exact_solver=exact_solver)
    if pool_labels is None and val_labels is None:
        r = run_itra(cost, int(n), tie_break=tb, **kw)
        return Selection(np.sort(r.indices), r.trace, time.perf_counter() - t0, r.checks)
    indices, trace, checks = _select_per_label(cost, int(n), pool_labels, val_labels, tb, kw)
    return Selection(indices, trace, time.perf_counter() - t0, checks)


def _checked_cost(pool_features, val_features, grad_norms, n, lam, epsilon,
                  threshold) -> np.ndarray:
    """The POO cost matrix, after checking the budget, ITRA's tolerances and the features
    (a clear error for a non-integer budget, bad tolerances or an overflowing cost)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"budget `n` must be an integer, got {n!r} ({type(n).__name__})")
    for name, value in (("epsilon", epsilon), ("threshold", threshold)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
    objective.check_inputs(pool_features, val_features, grad_norms, int(n))
    cost = np.asarray(objective.cost_matrix(pool_features, val_features,
                                            grad_norms, lam))
    if not np.all(np.isfinite(cost)):
        big = max(float(np.max(np.abs(pool_features))), float(np.max(np.abs(val_features))))
        raise ValueError(f"the transport cost overflowed (non-finite entries): feature "
                         f"coordinates reach {big:.3g}; rescale pool_features / val_features "
                         "(squared distances must fit float32)")
    return cost


def _select_per_label(cost, n, pool_labels, val_labels, tie_break, kw):
    """The label-enhanced variant: ``n`` split by the validation positive rate, ITRA per
    label. ``(sorted pool indices, concatenated traces, exact checks)``."""
    if pool_labels is None or val_labels is None:
        raise ValueError("give both pool_labels and val_labels (or neither)")
    pl, vl = np.asarray(pool_labels).astype(bool), np.asarray(val_labels).astype(bool)
    if pl.shape != (cost.shape[0],) or vl.shape != (cost.shape[1],):
        raise ValueError(f"label shapes {pl.shape}, {vl.shape} do not match the pool "
                         f"({cost.shape[0]}) and validation ({cost.shape[1]}) sizes")
    n_pos = int(np.clip(round(n * vl.mean()), n - (~pl).sum(), pl.sum()))
    parts, traces, checks = [], [], 0
    for lab, k in ((True, n_pos), (False, n - n_pos)):
        rows, cols = np.flatnonzero(pl == lab), np.flatnonzero(vl == lab)
        if k == 0:
            continue
        if cols.size == 0:  # no validation sample of this label: nothing to match
            cols = np.arange(cost.shape[1])
        r = run_itra(cost[np.ix_(rows, cols)], k,
                     tie_break=None if tie_break is None else tie_break[rows], **kw)
        parts.append(rows[r.indices])
        traces.append(r.trace)
        checks += r.checks
    return np.sort(np.concatenate(parts)), np.concatenate(traces), checks
