"""ITRA timing and quality: recrl (Sinkhorn, warm starts, dual scores) vs the reference
procedure (exact EMD via POT for every dual estimate and every swap check).

    python -m benchmarks.itra                                   # 15,000 x 5,000, n = 1000
    python -m benchmarks.itra --pool 3000 --val 1000 --n 200 --swaps 20   # reduced

Both start from the same facility-location greedy init (timed separately) and run the same
swap budget (``--swaps`` accepted swaps, at most ``--max_checks`` verifications per swap).
The reference reimplementation follows the paper's code path: exact duals from
``ot.emd(..., log=True)``, the dual estimate at the R-th *largest* gap (as the reference
does), ``cut`` candidates each side, first strict improvement by exact ``ot.emd2``. It runs
twice: with recrl's candidate budget (``--cut`` x ``--cut``, ``--max_checks``) and with its
own (``--ref_cut`` = 30 x 30, ``--ref_checks`` = 900); the ratios compare with the latter.
The final exact POO of both selections is computed with ``ot.emd2``.

recrl's searches print the time per accepted move by windows of ``--window`` moves (checks
per move, Sinkhorn iterations per check, time per iteration, XLA compilations), the exact
POO of ``--random`` random n-subsets for comparison, the end-to-end time and the peak
resident memory. The paper's pool size (block moves only, no reference):

    python -m benchmarks.itra --pool 140000 --val 5000 --n 1024 --block 10 --skip_single \
        --skip_reference
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import resource
import time

import numpy as np


def synthetic_features(pool: int, val: int, dim: int, seed: int = 0):
    """Pool = mixture of 20 Gaussian clusters; validation drawn from 8 of them, shifted."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim)) * 2.0
    p = centres[rng.integers(20, size=pool)] + rng.normal(size=(pool, dim))
    v = centres[rng.integers(8, size=val)] + rng.normal(size=(val, dim)) + 0.3
    g = np.abs(rng.normal(size=pool)) * (1.0 + rng.random(pool))
    return p.astype(np.float32), v.astype(np.float32), g


def reference_refine(cost: np.ndarray, init: np.ndarray, *, max_iters: int, cut: int,
                     max_checks: int, on_accept=None) -> tuple[np.ndarray, list, int]:
    """The reference swap loop with an exact EMD for every dual estimate and check."""
    import ot

    num, nv = cost.shape
    sel = np.asarray(init).copy()
    n = sel.shape[0]
    a, b = np.full(n, 1.0 / n), np.full(nv, 1.0 / nv)
    rank = math.ceil(nv / n)
    _, log = ot.emd(a, b, cost[sel], log=True)
    value, trace, checks = log["cost"], [log["cost"]], 0
    for _ in range(max_iters):
        u = log["u"]
        fv = (cost[sel] - u[:, None]).min(0)
        gaps = cost - fv[None]
        y = -np.partition(-gaps, rank - 1, axis=1)[:, rank - 1]  # R-th largest (reference)
        f_all = y / n + np.minimum(0, gaps - y[:, None]).mean(1)
        inside = np.zeros(num, bool)
        inside[sel] = True
        outs = np.flatnonzero(~inside)
        ins = outs[np.argsort(f_all[outs], kind="stable")[:cut]]
        pos = np.argsort(-f_all[sel], kind="stable")[:cut]
        pairs = sorted(((i, p) for i in ins for p in pos),
                       key=lambda t: f_all[t[0]] - f_all[sel[t[1]]])
        accepted = False
        for i, p in pairs[:max_checks]:
            cand = sel.copy()
            cand[p] = i
            _, new_log = ot.emd(a, b, cost[cand], log=True)
            checks += 1
            if new_log["cost"] < value - 1e-12:
                sel, log, value, accepted = cand, new_log, new_log["cost"], True
                trace.append(value)
                if on_accept is not None:
                    on_accept(sel)
                break
        if not accepted:
            break
    return sel, trace, checks


def progress_row(prog: list, marks: list, lo: int, hi: int) -> str:
    """One row of the per-window table: moves ``lo..hi`` (0-based, inclusive)."""
    t0, (c0, it0, comp0, sc0, ch0) = (prog[lo - 1][0], marks[lo - 1]) if lo else (
        0.0, (0, 0, 0, 0.0, 0.0))
    t, (c, it, comp, sc, ch) = prog[hi][0], marks[hi]
    dm, dc, dit = hi + 1 - lo, c - c0, it - it0
    per_it = f"{1e3 * (ch - ch0) / dit:.1f}" if dit else "- (exact checks)"
    return (f"| {lo + 1}-{hi + 1} | {(t - t0) / dm:.2f} | {(sc - sc0) / dm:.2f} | "
            f"{(ch - ch0) / dm:.2f} | {dc / dm:.1f} | {dit / max(dc, 1):.0f} | {per_it} | "
            f"{comp - comp0} |")


TABLE_HEAD = ("| moves | s/move | dual estimate s/move | checks s/move | checks/move | "
              "iterations/check | ms/iteration | compiles |\n|---|---|---|---|---|---|---|---|")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=int, default=15000)
    ap.add_argument("--val", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--swaps", type=int, default=100)
    ap.add_argument("--cut", type=int, default=10)
    ap.add_argument("--max_checks", type=int, default=20)
    ap.add_argument("--lam", type=float, default=0.1)
    ap.add_argument("--epsilon", type=float, default=0.05, help="ε relative to std(C_S)")
    ap.add_argument("--threshold", type=float, default=1e-3, help="Sinkhorn tolerance")
    ap.add_argument("--block", type=int, default=10,
                    help="also run recrl with block moves of this many disjoint swaps (0: no)")
    ap.add_argument("--momentum", type=float, default=1.5,
                    help="Sinkhorn over-relaxation in recrl's verification solves (1 = off)")
    ap.add_argument("--verify", default="auto", choices=("auto", "sinkhorn", "exact"),
                    help="recrl's verifier ('auto': the library default, exact on CPU)")
    ap.add_argument("--exact_after", default="auto",
                    help="Sinkhorn iterations after which recrl verifies exactly ('auto': "
                         "the library default for the backend; 'none': never)")
    ap.add_argument("--probe", type=int, default=5,
                    help="exact POO of recrl's selection every this many moves (untimed)")
    ap.add_argument("--ref_cut", type=int, default=30,
                    help="the reference's own candidate cut (its code: 30 x 30)")
    ap.add_argument("--ref_checks", type=int, default=900,
                    help="the reference's own verification budget per swap (30 x 30)")
    ap.add_argument("--skip_reference", action="store_true")
    ap.add_argument("--skip_single", action="store_true",
                    help="run only the block-move search (paper-sized pools)")
    ap.add_argument("--random", type=int, default=3,
                    help="exact POO of this many random n-subsets (seeds 0..), for comparison")
    ap.add_argument("--window", type=int, default=10,
                    help="print time per accepted move over windows of this many moves")
    return ap.parse_args(argv)


@dataclasses.dataclass
class Bench:
    """One benchmark problem and what its searches produced."""

    args: argparse.Namespace
    cost: np.ndarray
    init: np.ndarray
    exact_init: float
    compile_events: list[float]
    # (name, refine seconds, moves, checks, exact POO); recrl rows first, then the reference's
    rows: list[tuple[str, float, int, int, float]] = dataclasses.field(default_factory=list)
    # recrl run name -> [(seconds, selection) after each accepted move]
    progress: dict[str, list] = dataclasses.field(default_factory=dict)
    ref_progress: list[float] = dataclasses.field(default_factory=list)  # reference's own
    ref_swaps: int = 0


def setup(args: argparse.Namespace) -> Bench:
    """Features, cost matrix and the greedy start (timed and printed)."""
    from jax import monitoring

    from recrl import coreset

    compile_events: list[float] = []  # XLA compilations (any function), for recompiles
    monitoring.register_event_duration_secs_listener(
        lambda event, secs, **_: compile_events.append(secs)
        if event.endswith("backend_compile_duration") else None)
    p, v, g = synthetic_features(args.pool, args.val, args.dim)
    t = time.perf_counter()
    cost = np.asarray(coreset.cost_matrix(p, v, g, args.lam))
    t_cost = time.perf_counter() - t
    t = time.perf_counter()
    init, k = coreset.greedy_init(cost, args.n, g)
    t_init = time.perf_counter() - t
    exact_init = coreset.poo_exact(cost, init)
    print(f"pool {args.pool} x val {args.val}, d={args.dim}, n={args.n}, swaps<={args.swaps},"
          f" cut={args.cut}, max_checks={args.max_checks}, lambda={args.lam}")
    print(f"cost matrix {t_cost:.2f} s; greedy init {t_init:.2f} s ({k} rows by positive gain);"
          f" exact POO(init) = {exact_init:.6f}")
    return Bench(args, cost, init, exact_init, compile_events)


def refine_kwargs(args: argparse.Namespace) -> dict:
    """recrl's ``coreset.refine`` settings from the flags."""
    exact_after = {"auto": "auto", "none": None}.get(args.exact_after.lower(), None)
    if args.exact_after.lower() not in ("auto", "none"):
        exact_after = int(args.exact_after)
    return dict(max_iters=args.swaps, cut=args.cut, max_checks=args.max_checks,
                epsilon=args.epsilon, threshold=args.threshold, momentum=args.momentum,
                exact_after=exact_after, verify=args.verify)


def run_recrl(bench: Bench, cost_j, name: str, **extra) -> None:
    """One recrl search, printing its per-window table as it goes; appends to ``bench``."""
    from recrl import coreset

    args, kw = bench.args, {**refine_kwargs(bench.args), **extra}
    # compile (untimed) the Sinkhorn path and the exact path's (the dual estimate from
    # exact duals), so the window where the search switches to exact carries no compile
    coreset.refine(cost_j, bench.init, **{**kw, "max_iters": 2})
    coreset.refine(cost_j, bench.init, **{**kw, "max_iters": 1, "verify": "exact"})
    prog: list[tuple[float, np.ndarray]] = []
    # per move: (checks, iterations, compiles, dual-estimate seconds, check seconds)
    marks: list[tuple[int, int, int, float, float]] = []
    info: dict = {}
    compiles0 = len(bench.compile_events)

    def on_accept(s: np.ndarray) -> None:  # prints each window as it completes
        prog.append((time.perf_counter() - t0, s.copy()))
        marks.append((info["checks"], int(sum(info["iterations"])),
                      len(bench.compile_events) - compiles0, info["score_seconds"],
                      info["check_seconds"]))
        if len(prog) % args.window == 0:
            print(progress_row(prog, marks, len(prog) - args.window, len(prog) - 1))

    print(f"{name}: time per accepted move, by windows of {args.window} moves "
          "(the rest of s/move: the start's solves and bookkeeping; iterations/check: "
          "Sinkhorn iterations over all the window's checks, 0 once exact verification "
          "took over; ms/iteration: the window's check time over them)")
    print(TABLE_HEAD)
    t0 = time.perf_counter()
    sel, trace, checks = coreset.refine(cost_j, bench.init, **kw, info=info,
                                        on_accept=on_accept)
    secs = time.perf_counter() - t0
    if len(prog) % args.window:
        print(progress_row(prog, marks, len(prog) - len(prog) % args.window, len(prog) - 1))
    it = np.asarray(info["iterations"] or [0])
    print(f"{name}: Sinkhorn iterations per check: median {np.median(it):.0f}, max "
          f"{it.max()}; {info['retries']} unconverged solves continued, "
          f"{info['exact_fallbacks']} decided exactly; exact verification from check "
          f"{info['exact_from_check']} ({info['exact_full_solves']} full network-simplex "
          "solves, the other exact checks updated from the previous plan; updates "
          f"stopped at check {info['update_stopped_at_check']}); "
          f"{len(bench.compile_events) - compiles0} compiles during the timed search")
    bench.rows.append((name, secs, len(trace) - 1, checks, coreset.poo_exact(bench.cost, sel)))
    bench.progress[name] = prog


def run_reference(bench: Bench) -> None:
    """The reference with recrl's candidate budget, then with its own (the last row is the
    reference that the ratios compare with)."""
    args = bench.args
    budgets = [(args.cut, args.max_checks), (args.ref_cut, args.ref_checks)]
    for cut, max_checks in dict.fromkeys(budgets):
        bench.ref_progress = []
        t = time.perf_counter()
        _sel_r, trace_r, checks_r = reference_refine(
            bench.cost, bench.init, max_iters=args.swaps, cut=cut, max_checks=max_checks,
            on_accept=lambda s, t=t, rp=bench.ref_progress: rp.append(time.perf_counter() - t))
        t_ref = time.perf_counter() - t
        bench.rows.append((f"reference (EMD, {cut} x {cut} / {max_checks} checks)", t_ref,
                           len(trace_r) - 1, checks_r, trace_r[-1]))
        bench.ref_swaps = len(trace_r) - 1


def print_quality(bench: Bench) -> None:
    """Exact POO of random subsets and of every selection, relative to random."""
    from recrl import coreset

    args = bench.args
    rand = [coreset.poo_exact(bench.cost, np.random.default_rng(s).choice(
        args.pool, args.n, replace=False)) for s in range(args.random)]
    if not rand:
        return
    print(f"random n-subsets (seeds 0-{args.random - 1}): exact POO mean "
          f"{np.mean(rand):.6f} (std {np.std(rand):.6f}); greedy init "
          f"{bench.exact_init - np.mean(rand):+.6f} vs random")
    for name, _, _, _, val in bench.rows:
        print(f"{name}: exact POO {val:.6f}, {val - np.mean(rand):+.6f} vs random "
              f"({100 * (val - np.mean(rand)) / abs(np.mean(rand)):+.2f} %)")


def print_table(bench: Bench) -> None:
    print("\n| method | refine s | moves | checks | s/check | exact POO | vs init |")
    print("|---|---|---|---|---|---|---|")
    for name, secs, swaps, ch, val in bench.rows:
        print(f"| {name} | {secs:.1f} | {swaps} | {ch} | {secs / max(ch, 1):.3f} | "
              f"{val:.6f} | {100 * (val - bench.exact_init) / abs(bench.exact_init):+.2f} % |")


def print_vs_reference(bench: Bench) -> None:
    """Speed ratios over the whole search, and time to reach the reference's exact POO
    (recrl's selection probed every ``--probe`` moves, exact solves outside the timed loop)."""
    from recrl import coreset

    ref = bench.rows[-1]
    t_ref, target = ref[1], ref[4]
    for name, secs, _, _, val in bench.rows[:len(bench.progress)]:
        print(f"{name}: {t_ref / secs:.1f}x faster than the reference over the whole "
              f"search; exact POO difference {val - target:+.6f}")
    t_ref_done = bench.ref_progress[-1] if bench.ref_progress else 0.0
    print(f"reference: final exact POO {target:.6f} after {bench.ref_swaps} swaps "
          f"({t_ref_done:.1f} s to its last accepted swap, {t_ref:.1f} s in all)")
    for name, prog in bench.progress.items():
        step = 1 if "block" in name else bench.args.probe
        hit = None
        for k in [*range(step - 1, len(prog), step), len(prog) - 1]:
            if k >= 0 and coreset.poo_exact(bench.cost, prog[k][1]) <= target:
                hit = (k + 1, prog[k][0])
                break
        if hit is None:
            print(f"{name} did not reach the reference's exact POO")
        else:
            print(f"{name} reached it after {hit[0]} moves, {hit[1]:.2f} s: "
                  f"{t_ref / hit[1]:.1f}x faster to equal exact POO (vs the reference's "
                  f"whole run), {t_ref_done / hit[1]:.1f}x vs its last improvement")


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp

    t_start = time.perf_counter()
    bench = setup(args)
    cost_j = jnp.asarray(bench.cost)
    verify = "exact" if (args.verify == "auto" and jax.default_backend() == "cpu") else (
        "sinkhorn" if args.verify == "auto" else args.verify)
    verifier = ("exact checks" if verify == "exact" else "Sinkhorn") + (
        ", verify=auto" if args.verify == "auto" else "")
    if not args.skip_single:
        run_recrl(bench, cost_j, f"recrl ({verifier})")
    if args.block > 1:
        run_recrl(bench, cost_j, f"recrl ({verifier}, block {args.block})", block=args.block)
    t_total = time.perf_counter() - t_start  # recrl end to end (the reference is timed apart)
    if not args.skip_reference:
        run_reference(bench)
    print_quality(bench)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"end to end (features, cost, init, recrl searches incl. their compile warm-ups "
          f"and exact POO checks): {t_total:.1f} s; peak resident memory {peak:.2f} GiB")
    print_table(bench)
    if not args.skip_reference:
        print_vs_reference(bench)


if __name__ == "__main__":
    main()
