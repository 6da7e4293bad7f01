r"""ITRA (Initialization-Then-Refinement) for GORACS' POO.

1. **Greedy init** (facility location on :math:`C`): start from the row with the smallest
   row sum, keep :math:`m_j = \min_{i\in S} C_{ij}` and add the row with the largest gain
   :math:`\sum_j m_j - \min(m_j, C_{ej})` (= the smallest :math:`\sum_j \min(m_j, C_{ej})`).
   The gains are diminishing, so a *lazy* greedy (stale gains are upper bounds; only the
   top candidates are re-evaluated) gives exactly the greedy sequence. Equal gains are
   broken by :math:`\hat g` (larger first); once every gain is 0 (every column's nearest
   row is in S) the rest of the budget is filled by the balanced-OT dual estimate
   :math:`F_i` below (smallest first), never by index.
2. **Refinement**: solve POO(S) (Sinkhorn, warm-started), set
   :math:`f_j = \min_{k\in S}(C_{kj} - u_k)` and score every row by
   :math:`F_i = \max_y \tfrac{y}{|S|} + \tfrac1{|V|}\sum_j\min(0, C_{ij} - y - f_j)`, attained
   at the :math:`R`-th smallest gap :math:`C_{ij} - f_j`, :math:`R = \lceil |V|/|S|\rceil`.
   Try swaps (outsider with low F in, member with high F out) in order of estimated gain,
   verify each by re-solving, accept the first strict improvement. A check that needs more
   than ``exact_after`` Sinkhorn iterations (the problem turns ill-conditioned late in
   long searches) hands the search to exact verification: one network simplex, then each
   check updates the previous optimal plan (``recrl.coreset.emd_update``). On CPU the
   default ``verify="auto"`` verifies exactly from the start (measured cheaper).
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recrl.coreset import objective
from recrl.coreset.emd_update import ExactState


def _gains(cost: np.ndarray, rows: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.maximum(m[None, :] - cost[rows], 0.0).sum(1, dtype=np.float64)


def greedy_init(cost: np.ndarray, n: int, tie_break: np.ndarray | None = None, *,
                fill=None, block: int = 32) -> tuple[np.ndarray, int]:
    r"""Lazy facility-location greedy on ``cost [N, M]`` (pool x validation): returns
    ``(indices [n], k)``.

    ``k`` rows were chosen by a positive gain :math:`\sum_j \max(0, m_j - C_{ej})`; equal
    gains go to the larger ``tie_break`` (e.g. :math:`\hat g`). When all gains are 0 the
    remaining ``n - k`` rows come from ``fill(first_k_indices, n - k)`` (default: largest
    ``tie_break``). Ties are never broken by index unless ``tie_break`` is itself tied.
    """
    cost = np.asarray(cost, np.float32)
    num = cost.shape[0]
    tb = np.zeros(num) if tie_break is None else np.asarray(tie_break, np.float64)
    row_sum = cost.sum(1, dtype=np.float64)
    first = np.lexsort((-tb, row_sum))[0]
    chosen = [int(first)]
    taken = np.zeros(num, bool)
    taken[first] = True
    m = cost[first].copy()
    ub = np.zeros(num)
    for lo in range(0, num, 2048):  # exact gains after the first pick
        ub[lo:lo + 2048] = _gains(cost, np.arange(lo, min(lo + 2048, num)), m)
    ub[taken] = -np.inf
    while len(chosen) < n:
        b = min(block, num - len(chosen))
        while True:
            order = np.lexsort((-tb, -ub))  # by stale bound, then tie-break
            cand = order[:b]
            exact = _gains(cost, cand, m)
            ub[cand] = exact
            rest_bound = ub[order[b]] if b < num - len(chosen) else -np.inf
            best = cand[np.lexsort((-tb[cand], -exact))[0]]
            # accept when no unevaluated row can beat (or tie) the best exact gain
            if ub[best] > rest_bound or b >= num - len(chosen) or (
                    ub[best] <= 0.0 and rest_bound <= 0.0):
                break
            b *= 2
        if ub[best] <= 0.0:
            break
        chosen.append(int(best))
        taken[best] = True
        ub[best] = -np.inf
        np.minimum(m, cost[best], out=m)
    k = len(chosen)
    if k < n:
        idx = np.asarray(chosen)
        if fill is None:
            rest = np.flatnonzero(~taken)
            extra = rest[np.argsort(-tb[rest], kind="stable")[: n - k]]
        else:
            extra = np.asarray(fill(idx, n - k))
        chosen.extend(int(e) for e in extra)
    return np.asarray(chosen, np.int64), k


@jax.jit(static_argnames=("rank", "chunk"))
def dual_scores(cost: jax.Array, rows: jax.Array, u: jax.Array, *, rank: int,
                chunk: int = 1024) -> tuple[jax.Array, jax.Array]:
    r"""Dual estimate of each row's value as an extra source of mass :math:`1/|S|`.

    With :math:`f_j = \min_{k\in S}(C_{kj} - u_k)` and gaps :math:`\delta_{ij} = C_{ij} - f_j`:
    :math:`F_i = y_i/|S| + \frac1{|V|}\sum_j \min(0, \delta_{ij} - y_i)`, with
    :math:`y_i` the ``rank``-th smallest gap (``rank = ceil(|V|/|S|)``), the maximiser of
    this concave function of y. Returns ``(F [N], y [N])``; members get
    :math:`F_k \approx u_k/|S|` (their removal value), outsiders low F are promising.
    """
    n_sel = rows.shape[0]
    fv = jnp.min(cost[rows] - u[:, None], axis=0)
    num = cost.shape[0]
    chunk = min(chunk, num)
    # chunks read in place (no padded copy of the cost: 2.8 GB at 140,000 x 5,000); the
    # last chunk starts at num - chunk and overlaps the previous one (same values written)
    starts = jnp.minimum(jnp.arange(-(-num // chunk)) * chunk, num - chunk)

    def one(start):
        block = jax.lax.dynamic_slice_in_dim(cost, start, chunk, axis=0)
        gaps = block - fv[None, :]
        y = -jax.lax.top_k(-gaps, rank)[0][:, -1]
        f = y / n_sel + jnp.mean(jnp.minimum(0.0, gaps - y[:, None]), axis=1)
        return f, y

    f, y = jax.lax.map(one, starts)
    idx = (starts[:, None] + jnp.arange(chunk)[None, :]).reshape(-1)
    f = jnp.zeros(num, f.dtype).at[idx].set(f.reshape(-1))
    y = jnp.zeros(num, y.dtype).at[idx].set(y.reshape(-1))
    return f, y


class ITRAResult(NamedTuple):
    """Indices of the selected rows, the POO trace and bookkeeping."""

    indices: np.ndarray  # [n] selected pool rows
    trace: np.ndarray  # POO after the initialisation and after every accepted swap
    greedy_positive: int  # rows chosen by positive facility-location gain
    semi_relaxed: float  # (1/|V|) Σ_j min_{i∈S_init} C_ij, a lower bound on POO(S_init)
    checks: int  # verification solves
    seconds: float


@jax.jit(static_argnames="n")
def _swap_init(cost: jax.Array, f: jax.Array, g: jax.Array, eps: jax.Array, pos: jax.Array,
               row: jax.Array, n: int) -> jax.Array:
    # warm start after swaps: each new row's potential is its soft c-transform of g,
    # f_i = ε log a_i − ε LSE_j((g_j − C_ij)/ε) with a_i = 1/n (ott's parametrisation)
    new = -eps * jnp.log(n) - eps * jax.nn.logsumexp((g[None] - cost[row]) / eps, axis=1)
    return f.at[pos].set(new)


def cold_solve(cost: jax.Array, rows: np.ndarray, *, epsilon: float, threshold: float,
               factor: float = 4.0, steps: int = 3, momentum: float = 1.0
               ) -> objective.POOResult:
    """POO of ``rows`` by ε-scaling: solve at ``epsilon·factor^steps`` first, then divide ε
    by ``factor`` and warm-start from the previous potentials (fewer total iterations).
    ``momentum`` over-relaxes the warm-started stages (the first one is plain Sinkhorn)."""
    rows = jnp.asarray(rows)
    res = None
    for k in range(steps, -1, -1):
        f, g = (None, None) if res is None else (res.f, res.g)
        res = objective.poo_sinkhorn_rows(cost, rows, f, g, epsilon=epsilon * factor**k,
                                          threshold=threshold,
                                          momentum=1.0 if res is None else momentum)
    return res


def refine(cost: jax.Array, init: np.ndarray, *, max_iters: int = 100, cut: int = 10,
           max_checks: int = 20, epsilon: float = 0.05, threshold: float = 1e-3,
           verify: str = "auto", rel_tol: float = 1e-6, block: int = 1,
           momentum: float = 1.5, on_accept=None, max_iterations: int = 2000,
           retry_iterations: int = 20000, check_convergence: bool = True,
           exact_after: int | str | None = "auto", exact_solver: str = "update",
           info: dict | None = None) -> tuple[np.ndarray, list, int]:
    """Dual-guided verified swap search from ``init``; returns ``(indices, trace, checks)``.

    ``max_iters`` caps the accepted single-row swaps. With ``block > 1`` each round first
    tries the ``block`` best disjoint promising pairs (``F_in < F_out``) as one move,
    verified by one solve, and falls back to single swaps when that move does not improve
    (an extension of the paper's procedure; ``block=1`` is the paper's).
    ``verify="sinkhorn"`` compares entropic POO values (warm-started solves);
    ``verify="exact"`` compares exact POT values and takes the dual estimate from the exact
    duals (the reference's procedure, with exact checks updated from the previous plan,
    see ``exact_solver``); ``verify="auto"`` (default) = ``"exact"`` on the CPU backend
    (measured there at 1000 x 5000: the exact start and updated exact checks cost no more
    than the Sinkhorn start and checks at any stage of a search, and late Sinkhorn checks
    cost far more; where ``|S|`` does not divide ``|V|`` the checks may be full solves,
    see ``SEARCHES_PER_ROW``, not measured against Sinkhorn), ``"sinkhorn"`` elsewhere.
    A swap is accepted only if the verified value drops by more than
    ``rel_tol · |value|``, so the trace is strictly decreasing. Verification solves start
    from the previous potentials (the swapped rows' entries replaced by soft
    c-transforms) and over-relax the Sinkhorn updates by ``momentum`` (1 = plain
    Sinkhorn; 1.5 cuts the iterations ~2x).
    ``on_accept(selection)`` is called after every accepted move (e.g. to time the
    search's progress).

    Convergence: a Sinkhorn solve that has not converged within ``max_iterations`` is
    continued from its own potentials with plain updates for up to ``retry_iterations``;
    if it still has not converged, the move is decided by the exact POT values of the
    candidate and the current set instead (accepted only if the exact value drops), so an
    unconverged (possibly too low) entropic value never accepts a swap
    (``check_convergence=False`` trusts every value, as recrl did before). After such an
    exactly decided acceptance the search verifies exactly (a feasible entropic plan's
    cost is not below the exact value, so the trace keeps falling).

    Late in long searches the selection's transport problem gets ill-conditioned: the
    warm-started solves need 10-100x the iterations of the first checks (measured: a
    median of 14-36 in the first 35 moves, 2,000+ from move ~45 on, 400 x 2,000; a cold
    ε-scaling solve is faster than the warm start there). ``exact_after`` caps a check's
    Sinkhorn iterations (continuation included); a check that needs more is decided
    exactly and the search continues with exact verification (network simplex, whose cost
    does not grow), so the time per accepted move stays flat. ``None`` = no cap;
    ``"auto"`` = ``EXACT_AFTER_CPU`` (20) on the CPU backend (where an updated exact check
    costs about as much as 15-25 warm Sinkhorn iterations, measured at 1000 x 5000, so
    longer Sinkhorn checks are the slower verifier), ``EXACT_AFTER_ACCELERATOR`` (100)
    elsewhere (iterations are cheap there; not measured).
    ``exact_solver="update"`` (default) solves the current selection once by network
    simplex and then gets each exact check from that optimal plan by rerouting only the
    swapped rows' mass (``recrl.coreset.emd_update.ExactState``; exact, certified,
    a full POT solve when the certificate fails); ``"pot"`` solves every check from scratch.
    ``info`` (a dict, if given) receives ``retries``, ``exact_fallbacks``, ``iterations``
    (per Sinkhorn check, including a continuation's), ``checks`` (so far, updated live),
    ``exact_from_check`` (the check at which exact verification took over, 0 when it
    verified exactly from the start, ``None`` if never), ``exact_full_solves``
    (network-simplex solves from scratch), ``update_stopped_at_check`` (the check whose
    update needed more than ``SEARCHES_PER_ROW`` shortest-path searches per swapped row or
    failed its certificate, after which every exact check is a full solve; ``None``) and
    the seconds spent so far in the dual estimate (``score_seconds``) and in checks
    (``check_seconds``).
    """
    verify, exact_after = _verification(verify, exact_after, exact_solver)
    search = _SwapSearch(cost, init, epsilon=epsilon, threshold=threshold, rel_tol=rel_tol,
                         momentum=momentum, max_iterations=max_iterations,
                         retry_iterations=retry_iterations,
                         check_convergence=check_convergence, exact_after=exact_after,
                         stats=info if info is not None else {}, exact_solver=exact_solver)
    search.start(verify)
    while search.done < max_iters and search.n < search.num:
        moves = _candidate_moves(search.scores(), search.sel, cut=cut, max_checks=max_checks,
                                 block=block, room=max_iters - search.done)
        if not any(search.try_move(move, on_accept) for move in moves):
            break
    return search.sel, search.trace, search.checks


def _verification(verify: str, exact_after: int | str | None,
                  exact_solver: str) -> tuple[str, int | None]:
    """``refine``'s verification options, checked, with ``"auto"`` resolved by the default
    JAX backend: ``(verify, exact_after)``."""
    if verify not in ("auto", "sinkhorn", "exact"):
        raise ValueError(f"verify must be 'auto', 'sinkhorn' or 'exact'; got {verify!r}")
    if verify == "auto":
        verify = "exact" if jax.default_backend() == "cpu" else "sinkhorn"
    if exact_solver not in ("update", "pot"):
        raise ValueError(f"exact_solver must be 'update' or 'pot'; got {exact_solver!r}")
    return verify, _exact_after(exact_after)


UPDATE_MAX_ROWS = 2  # larger moves: one network simplex from scratch (each swapped row
# costs ~5 shortest-path searches at 1000 x 5000, a full solve ~10-20)
SEARCHES_PER_ROW = 16  # an update needing more (e.g. |S| = 1024, |V| = 5000: 34-123
# searches) is abandoned and the search solves from scratch from then on
EXACT_AFTER_CPU = 20
EXACT_AFTER_ACCELERATOR = 100


def _exact_after(exact_after: int | str | None) -> int | None:
    """Resolves ``exact_after`` (``"auto"``: by the default JAX backend) and checks it."""
    if isinstance(exact_after, str):
        if exact_after != "auto":
            raise ValueError(f"exact_after must be an int >= 1, None or 'auto'; "
                             f"got {exact_after!r}")
        return EXACT_AFTER_CPU if jax.default_backend() == "cpu" else EXACT_AFTER_ACCELERATOR
    if exact_after is not None and exact_after < 1:
        raise ValueError(f"exact_after must be >= 1 or None; got {exact_after}")
    return exact_after


def _candidate_moves(f_all: np.ndarray, sel: np.ndarray, *, cut: int, max_checks: int,
                     block: int, room: int) -> list[list[tuple[int, int]]]:
    """Moves to verify, best estimated gain first: single swaps ``[(row in, position
    out)]`` among the ``cut`` lowest-F outsiders x ``cut`` highest-F members, preceded
    (``block > 1``) by up to ``min(block, room)`` disjoint promising pairs as one move."""
    inside = np.zeros(f_all.shape[0], bool)
    inside[sel] = True
    out_rows = np.flatnonzero(~inside)
    ins = out_rows[np.argsort(f_all[out_rows], kind="stable")[:cut]]
    outs_pos = np.argsort(-f_all[sel], kind="stable")[:cut]  # positions in sel
    pairs = [(a, p) for a in ins for p in outs_pos]
    pairs.sort(key=lambda t: f_all[t[0]] - f_all[sel[t[1]]])
    moves = [[pr] for pr in pairs[:max_checks]]
    if block > 1:
        used_a, used_p, big = set(), set(), []
        for a, p in pairs:
            if len(big) == min(block, room) or f_all[a] >= f_all[sel[p]]:
                break
            if a not in used_a and p not in used_p:
                big.append((a, p))
                used_a.add(a)
                used_p.add(p)
        if len(big) > 1:
            moves.insert(0, big)
    return moves


class _SwapSearch:
    """The state of :func:`refine`: current selection, its value and duals, the
    verification mode (``sinkhorn`` or ``exact``) and the counters."""

    def __init__(self, cost, init, *, epsilon, threshold, rel_tol, momentum, max_iterations,
                 retry_iterations, check_convergence, exact_after, stats: dict,
                 exact_solver: str = "update"):
        self.cost = jnp.asarray(cost, jnp.float32)
        self.cost_np = np.asarray(self.cost)  # host view for the exact solves (float64 subsets)
        self.num, self.nv = self.cost.shape
        self.sel = np.asarray(init, np.int64).copy()
        self.n = self.sel.shape[0]
        self.rank = min(math.ceil(self.nv / self.n), self.nv)
        self.kw = dict(epsilon=epsilon, threshold=threshold)
        self.rel_tol, self.momentum, self.exact_after = rel_tol, momentum, exact_after
        self.retry_iterations, self.check_convergence = retry_iterations, check_convergence
        self.budget = (max_iterations if exact_after is None
                       else min(max_iterations, exact_after))
        self.stats = stats
        stats.update(retries=0, exact_fallbacks=0, iterations=[], exact_from_check=None,
                     checks=0, exact_full_solves=0, score_seconds=0.0, check_seconds=0.0,
                     update_stopped_at_check=None)
        self.use_update, self.state = exact_solver == "update", None
        self.checks = self.done = 0

    def converged(self, r: objective.POOResult, rows: np.ndarray):
        """The solve of ``rows``, continued when unconverged: ``(result, ok, iterations)``."""
        if bool(r.converged) or not self.check_convergence:
            return r, True, int(r.n_iters)
        left = self.retry_iterations if self.exact_after is None else min(
            self.retry_iterations, self.exact_after - int(r.n_iters))
        if left <= 0:
            return r, False, int(r.n_iters)
        self.stats["retries"] += 1
        r2 = objective.poo_sinkhorn_rows(self.cost, jnp.asarray(rows), r.f, r.g,
                                         max_iterations=left, **self.kw)
        return r2, bool(r2.converged), int(r.n_iters) + int(r2.n_iters)

    def exact(self, rows: np.ndarray) -> tuple[float, jax.Array]:
        """Exact POO of ``rows`` and its row duals (a full network-simplex solve)."""
        self.stats["exact_full_solves"] += 1
        if self.use_update:
            self.state = ExactState.solve(self.cost_np, rows)
            if self.state is not None:
                return self.state.value, jnp.asarray(self.state.u, jnp.float32)
        v, u, _ = objective.poo_exact(self.cost_np, rows, return_duals=True)
        return v, jnp.asarray(u, jnp.float32)

    def exact_check(self, cand: np.ndarray, pos, rows_in):
        """Exact POO and row duals of ``cand`` (= the current selection with ``rows_in`` at
        ``pos``), and the candidate's :class:`ExactState` (``None``: solved by POT)."""
        if (self.use_update and self.state is not None and len(pos) <= UPDATE_MAX_ROWS
                and np.array_equal(self.state.sel, self.sel)):
            new = self.state.swap(pos, rows_in, max_searches=SEARCHES_PER_ROW * len(pos))
            if new is not None:
                return new.value, jnp.asarray(new.u, jnp.float32), new
            # over the search budget or uncertified: full solves for the rest of the search
            self.use_update, self.state = False, None
            self.stats["update_stopped_at_check"] = self.checks
        cur_state = self.state
        v, duals = self.exact(cand)
        new, self.state = self.state, cur_state
        return v, duals, new

    def start(self, verify: str) -> None:
        """Value and duals of the initial selection."""
        self.mode = verify
        if verify == "exact":
            self.stats["exact_from_check"] = 0
            self.value, self.duals = self.exact(self.sel)
            self.res, self.res_ok = None, True
        else:
            res = cold_solve(self.cost, self.sel, momentum=self.momentum, **self.kw)
            self.res, self.res_ok, _ = self.converged(res, self.sel)
            self.value, self.duals = float(self.res.value), self.res.f
        self.trace = [self.value]

    def scores(self) -> np.ndarray:
        """The dual estimate ``F [N]`` of every pool row."""
        t = time.perf_counter()
        f_all, _ = dual_scores(self.cost, jnp.asarray(self.sel), self.duals, rank=self.rank)
        f_all = np.asarray(f_all, np.float64)
        self.stats["score_seconds"] += time.perf_counter() - t
        return f_all

    def _sinkhorn_check(self, cand, pos, rows_in):
        """Entropic verification (exact when unconverged or over the iteration cap):
        ``(better, value, duals, new result or None, ok)``."""
        f0 = _swap_init(self.cost, self.res.f, self.res.g, self.res.epsilon,
                        jnp.asarray(pos, jnp.int32), jnp.asarray(rows_in, jnp.int32), self.n)
        new = objective.poo_sinkhorn_rows(self.cost, jnp.asarray(cand), f0, self.res.g,
                                          momentum=self.momentum, max_iterations=self.budget,
                                          **self.kw)
        new, ok, iters = self.converged(new, cand)
        self.stats["iterations"].append(iters)
        if ok and self.res_ok and (self.exact_after is None or iters <= self.exact_after):
            v, new_duals = float(new.value), new.f
            return v < self.value - self.rel_tol * abs(self.value), v, new_duals, new, ok
        # an unconverged entropic value may be too low, and a check over the iteration cap
        # means the problem has become ill-conditioned: decide exactly, and verify exactly
        # from here on when the cap was the cause or the swap is accepted (exact <=
        # entropic: the trace keeps falling)
        self.stats["exact_fallbacks"] += 1
        cur, cur_duals = self.exact(self.sel)
        v, new_duals, self.cand_state = self.exact_check(cand, pos, rows_in)
        better = v < cur - self.rel_tol * abs(cur)
        if better or (self.exact_after is not None and iters >= self.exact_after):
            self.mode = "exact"
            self.stats["exact_from_check"] = self.checks
            self.value, self.duals = cur, cur_duals
        return better, v, new_duals, new, ok

    def try_move(self, move, on_accept) -> bool:
        """Verifies one move; accepts it (and records the new value) when it improves."""
        cand = self.sel.copy()
        rows_in = np.array([a for a, _ in move])
        pos = np.array([p for _, p in move])
        cand[pos] = rows_in
        self.checks += 1
        self.stats["checks"] = self.checks
        self.cand_state, t = None, time.perf_counter()
        if self.mode == "exact":
            v, new_duals, self.cand_state = self.exact_check(cand, pos, rows_in)
            better, new, ok = v < self.value - self.rel_tol * abs(self.value), None, True
        else:
            better, v, new_duals, new, ok = self._sinkhorn_check(cand, pos, rows_in)
        self.stats["check_seconds"] += time.perf_counter() - t
        if not better:
            return False
        self.res_ok = True if new is None else ok
        self.sel, self.value, self.duals = cand, v, new_duals
        if self.mode == "exact":
            self.state = self.cand_state
        if new is not None and self.mode != "exact":
            self.res = new
        self.trace.append(v)
        self.done += len(move)
        if on_accept is not None:
            on_accept(self.sel)
        return True


def itra(cost: jax.typing.ArrayLike, n: int, *, tie_break: np.ndarray | None = None,
         max_iters: int = 100, cut: int = 10, max_checks: int = 20, epsilon: float = 0.05,
         threshold: float = 1e-3, verify: str = "auto", block: int = 1,
         momentum: float = 1.5, exact_after: int | str | None = "auto",
         exact_solver: str = "update") -> ITRAResult:
    """Greedy facility-location init, then dual-guided verified swaps (see module doc;
    ``exact_after``, ``exact_solver``: see :func:`refine`)."""
    t0 = time.perf_counter()
    cost_np = np.asarray(cost, np.float32)
    cost_j = jnp.asarray(cost_np)
    num, nv = cost_np.shape
    if not 1 <= n <= num:
        raise ValueError(f"budget n={n} must be in [1, pool size {num}]")

    def fill(first: np.ndarray, k: int) -> np.ndarray:
        res = cold_solve(cost_j, first, epsilon=epsilon, threshold=threshold)
        f_all, _ = dual_scores(cost_j, jnp.asarray(first), res.f,
                               rank=min(math.ceil(nv / len(first)), nv))
        f_all = np.asarray(f_all, np.float64)
        f_all[first] = np.inf
        tb = np.zeros(num) if tie_break is None else -np.asarray(tie_break, np.float64)
        return np.lexsort((tb, f_all))[:k]

    init, k = greedy_init(cost_np, n, tie_break, fill=fill)
    semi = objective.semi_relaxed(cost_np, init)
    sel, trace, checks = refine(cost_j, init, max_iters=max_iters, cut=cut,
                                max_checks=max_checks, epsilon=epsilon, threshold=threshold,
                                verify=verify, block=block, momentum=momentum,
                                exact_after=exact_after, exact_solver=exact_solver)
    return ITRAResult(sel, np.asarray(trace), k, semi, checks, time.perf_counter() - t0)
