r"""Exact POO of a selection, updated after swaps without solving from scratch.

With uniform masses :math:`a = 1/|S|`, :math:`b = 1/|V|` the transport problem, scaled by
:math:`T = |S||V|/\gcd(|S|,|V|)`, has integral supplies :math:`|V|/g` per row and demands
:math:`|S|/g` per column, so it has an integral optimal plan. :class:`ExactState` keeps
such a plan (its nonzero entries, as integer units) with optimal duals ``u`` (rows) and
``v`` (columns).

A swap removes rows and adds others at the same positions. The remaining rows keep their
flows and duals (reduced costs :math:`C_{ij} - u_i - v_j \ge 0`, = 0 where flow runs);
each new row gets :math:`u_i = \min_j (C_{ij} - v_j)`, so the duals stay feasible. The
freed columns' demand is then routed from the new rows by successive shortest paths on
reduced costs in the residual graph (label-correcting rounds, each relaxing a batch of
rows as one array operation; rows at or beyond the nearest deficit column's distance are
pruned), the potentials updated after each path so the plan stays optimal for the flow it
carries; once every new row's supply is placed the plan is optimal for the swapped
selection. Every result is certified (marginals exact in integers, duals feasible and
tight within ``tol``) before it is returned, so a numerical failure is detected (the
caller falls back to a full solve), never silently used.
"""

from __future__ import annotations

import math

import numpy as np

from recrl.coreset import objective


class ExactState:
    """An optimal integral plan of ``sel`` (pool rows) with its duals and exact value.

    ``edges = (rows, cols, units)``: the plan's nonzero entries (row positions in ``sel``)."""

    def __init__(self, cost: np.ndarray, sel: np.ndarray, csel: np.ndarray, edges,
                 u: np.ndarray, v: np.ndarray, *, tol: float):
        self.cost, self.sel, self.csel, self.edges = cost, sel, csel, edges
        self.u, self.v, self.tol = u, v, tol
        n, m = csel.shape
        g = math.gcd(n, m)
        self.supply, self.demand, self.units = m // g, n // g, n * m // g
        ei, ej, amt = edges
        self.value = float(np.dot(amt, csel[ei, ej])) / self.units

    @classmethod
    def solve(cls, cost: np.ndarray, sel: np.ndarray, *, tol: float = 1e-9
              ) -> ExactState | None:
        """Solves ``sel`` from scratch (POT network simplex); ``None`` if POT's plan is not
        integral in the scaled units or fails the certificate."""
        sel = np.asarray(sel, np.int64).copy()
        csel = np.asarray(cost[sel], np.float32)  # the cost is float32: exact
        n, m = csel.shape
        plan, u, v = objective.emd_plan(csel)
        scaled = plan * (n * m // math.gcd(n, m))
        flow = np.rint(scaled).astype(np.int64)
        if np.abs(scaled - flow).max() > 1e-6:
            return None
        ei, ej = np.nonzero(flow)
        state = cls(cost, sel, csel, (ei, ej, flow[ei, ej]), u, v, tol=tol)
        return state if state.certified() else None

    def certified(self) -> bool:
        """Marginals exact, duals feasible (reduced costs >= -tol) and tight on the plan."""
        ei, ej, amt = self.edges
        n, m = self.csel.shape
        if (amt <= 0).any() or (np.bincount(ei, amt, n) != self.supply).any() or (
                np.bincount(ej, amt, m) != self.demand).any():
            return False
        scale = self.tol * max(1.0, float(np.abs(self.u).max()), float(np.abs(self.v).max()))
        feasible = (self.csel - self.v[None, :]).min(1) - self.u >= -scale
        tight = np.abs(self.csel[ei, ej] - self.u[ei] - self.v[ej]) <= scale
        return bool(feasible.all() and tight.all())

    def swap(self, pos: np.ndarray, rows_in: np.ndarray, *, max_searches: int | None = None
             ) -> ExactState | None:
        """The optimal state after putting pool rows ``rows_in`` at positions ``pos``
        (this state is unchanged); ``None`` if the result fails the certificate or needs
        more than ``max_searches`` shortest-path searches (each moves at least one unit, so
        at most ``len(pos) · |V|/gcd(|S|,|V|)`` are needed; where ``|S|`` does not divide
        ``|V|`` the bottlenecks are small and a swap can take 100+ searches)."""
        pos, rows_in = np.asarray(pos, np.int64), np.asarray(rows_in, np.int64)
        sel, csel = self.sel.copy(), self.csel.copy()
        sel[pos] = rows_in
        csel[pos] = self.cost[rows_in]
        ei, ej, amt = self.edges
        gone = np.isin(ei, pos)
        deficit = np.bincount(ej[gone], amt[gone], csel.shape[1]).astype(np.int64)
        flow = _Flow(ei[~gone], ej[~gone], amt[~gone])
        supply = np.zeros(sel.shape[0], np.int64)
        supply[pos] = self.supply
        u, v = self.u.copy(), self.v.copy()
        u[pos] = (csel[pos] - v[None, :]).min(1)
        searches = 0
        while supply.any():
            searches += 1
            if max_searches is not None and searches > max_searches:
                return None
            _augment(csel, u, v, flow, supply, deficit)
        new = ExactState(self.cost, sel, csel, (flow.ei, flow.ej, flow.amt), u, v,
                         tol=self.tol)
        return new if new.certified() else None


class _Flow:
    """The plan's nonzero entries as parallel arrays, updated along augmenting paths."""

    def __init__(self, ei, ej, amt):
        self.ei, self.ej, self.amt = ei, ej, amt

    def add(self, i: int, j: int, delta: int) -> None:
        k = np.flatnonzero((self.ei == i) & (self.ej == j))
        if k.size:
            self.amt[k[0]] += delta
            if self.amt[k[0]] == 0:
                keep = np.arange(self.amt.size) != k[0]
                self.ei, self.ej, self.amt = self.ei[keep], self.ej[keep], self.amt[keep]
        else:
            self.ei, self.ej = np.append(self.ei, i), np.append(self.ej, j)
            self.amt = np.append(self.amt, delta)


def _augment(csel, u, v, flow: _Flow, supply, deficit) -> None:
    """One Dijkstra, then augmentations along its shortest-path tree while the tree's
    paths to deficit columns are still intact; updates potentials and flow in place."""
    d_r, d_c, pred_r, pred_c, sinks = _dijkstra(csel, u, v, flow, supply, deficit)
    cap = d_c[sinks].max()
    u -= np.minimum(d_r, cap)  # every tree edge up to the farthest sink now has reduced
    v += np.minimum(d_c, cap)  # cost 0, and all reduced costs stay >= 0
    for t in sinks[np.argsort(d_c[sinks], kind="stable")]:
        path, i, amount = _tree_path(flow, pred_r, pred_c, int(t))
        if path is None or supply[i] == 0:
            continue
        amount = min(amount, int(supply[i]), int(deficit[t]))
        for ii, jj, sign in path:
            flow.add(ii, jj, sign * amount)
        supply[i] -= amount
        deficit[t] -= amount
        if not supply.any():
            return


def _tree_path(flow: _Flow, pred_r, pred_c, t: int):
    """The tree path from a source row to column ``t`` as ``[(row, col, +1 forward /
    -1 backward)]``, its source row and bottleneck; ``path=None`` when a backward edge has
    no flow left."""
    amount, j, path = np.iinfo(np.int64).max, t, []
    while True:
        i = int(pred_c[j])
        path.append((i, j, 1))
        jp = int(pred_r[i])
        if jp < 0:
            return path, i, amount
        have = flow.amt[(flow.ei == i) & (flow.ej == jp)]
        if not have.size:
            return None, i, 0
        amount = min(amount, int(have[0]))
        path.append((i, jp, -1))
        j = jp


def _dijkstra(csel, u, v, flow: _Flow, supply, deficit):
    """Reduced-cost Dijkstra from the rows with supply until every deficit column is
    settled. A row is relaxed once (all columns as one array operation) when first
    reached; the columns it serves are settled with it (reduced cost 0 both ways).
    Returns ``(d_r, d_c, pred_r, pred_c, sinks)`` (``inf`` = not settled)."""
    n, m = csel.shape
    d_r, d_c = np.full(n, np.inf), np.full(m, np.inf)
    pred_r, pred_c = np.full(n, -1), np.full(m, -1)
    open_c = np.full(m, np.inf)
    sinks = np.flatnonzero(deficit > 0)
    left = sinks.size
    stack = [(int(i), 0.0, -1) for i in np.flatnonzero(supply > 0)]
    by_row, by_col = _adjacency(flow, n, m)
    while True:
        while stack:  # rows reached at distance d (the current minimum)
            i, d, via = stack.pop()
            if d_r[i] <= d:
                continue
            d_r[i], pred_r[i] = d, via
            cand = (csel[i] - u[i]) - v
            cand += d
            better = cand < open_c
            better &= d_c == np.inf  # settled columns stay settled
            open_c[better] = cand[better]
            pred_c[better] = i
            for j in by_row[i].tolist():  # its own columns: reduced cost 0
                if d_c[j] == np.inf and open_c[j] <= d:
                    left -= _settle(j, d, d_c, open_c, deficit, by_col, stack)
        if left == 0:
            return d_r, d_c, pred_r, pred_c, sinks
        j = int(np.argmin(open_c))
        if open_c[j] == np.inf:
            raise RuntimeError("no augmenting path: the transport problem is infeasible")
        left -= _settle(j, float(open_c[j]), d_c, open_c, deficit, by_col, stack)


def _adjacency(flow: _Flow, n: int, m: int) -> tuple[list, list]:
    """The plan's entries as per-row column lists and per-column row lists."""
    def split(key, val, size):
        order = np.argsort(key, kind="stable")
        return np.split(val[order], np.cumsum(np.bincount(key, minlength=size))[:-1])

    return split(flow.ei, flow.ej, n), split(flow.ej, flow.ei, m)


def _settle(j, d, d_c, open_c, deficit, by_col, stack) -> int:
    """Settles column ``j`` at distance ``d``; queues the rows serving it. Returns 1 if it
    is a deficit column."""
    d_c[j], open_c[j] = d, np.inf
    stack.extend((int(i), d, j) for i in by_col[j])
    return int(deficit[j] > 0)
