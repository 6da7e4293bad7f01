r"""GORACS' proxy optimisation objective (POO) on ott-jax, with an exact POT reference.

.. math::
    d_{ij} = \frac{\|h_i - v_j\|}{\max_{kl}\|h_k - v_l\|},\quad
    \hat g_i = \frac{g_i}{\max_k g_k},\quad C_{ij} = d_{ij} - \lambda \hat g_i,

    \mathrm{POO}(S) = \min_{\pi\in\Pi(\frac1{|S|}1_S,\,\frac1{|V|}1_V)} \langle \pi, C\rangle
                    = W_d(\mu_S, \mu_V) - \lambda\,\mathrm{mean}_{i\in S}\hat g_i .

Rows are training-pool samples, columns validation samples. The row shift
:math:`-\lambda\hat g_i` does not change the optimal plan (row masses are fixed), so the
entropic solve runs on ``C[S]`` and its transport cost is the POO value.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recrl._extras import missing

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import acceleration, sinkhorn
except ImportError as e:
    raise missing(__name__, "goracs", e) from e


def check_inputs(pool: np.ndarray, val: np.ndarray, grad_norms: np.ndarray | None,
                 n: int | None = None) -> None:
    """Raises ``ValueError`` with a clear message for unusable selection inputs."""
    pool, val = np.asarray(pool), np.asarray(val)
    if pool.ndim != 2 or val.ndim != 2:
        raise ValueError(f"features must be 2-D [N, d]; got pool {pool.shape}, val {val.shape}")
    if val.shape[0] == 0:
        raise ValueError("the validation set is empty: POO needs at least one target sample")
    if pool.shape[0] == 0:
        raise ValueError("the training pool is empty")
    if pool.shape[1] != val.shape[1]:
        raise ValueError(f"feature dimensions differ: pool d={pool.shape[1]}, "
                         f"validation d={val.shape[1]}")
    for name, x in (("pool features", pool), ("validation features", val)):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} contain NaN or inf ({int((~np.isfinite(x)).sum())} "
                             "entries)")
    if grad_norms is not None:
        g = np.asarray(grad_norms)
        if g.shape != (pool.shape[0],):
            raise ValueError(f"grad_norms must have shape ({pool.shape[0]},); got {g.shape}")
        if not np.all(np.isfinite(g)):
            raise ValueError(f"grad_norms contain NaN or inf ({int((~np.isfinite(g)).sum())} "
                             "entries)")
        if np.any(g < 0):
            raise ValueError("grad_norms must be non-negative")
    if n is not None:
        if n < 1:
            raise ValueError(f"budget n must be >= 1; got {n}")
        if n > pool.shape[0]:
            raise ValueError(f"budget n={n} exceeds the pool size {pool.shape[0]}")


@jax.jit
def _distances(pool: jax.Array, val: jax.Array) -> jax.Array:
    sq = (jnp.sum(pool**2, 1)[:, None] + jnp.sum(val**2, 1)[None, :]
          - 2.0 * pool @ val.T)
    return jnp.sqrt(jnp.maximum(sq, 0.0))


def cost_matrix(pool: jax.typing.ArrayLike, val: jax.typing.ArrayLike,
                grad_norms: jax.typing.ArrayLike | None = None, lam: float = 0.1, *,
                block_rows: int | None = None) -> jax.Array | np.ndarray:
    r"""The POO cost :math:`C_{ij} = d_{ij} - \lambda\hat g_i` (``[N_pool, N_val]`` float32).

    ``d`` is the Euclidean distance divided by its maximum over all pairs (1 if all are 0);
    ``ĝ = g / max g`` (0 if all are 0). ``grad_norms=None`` means ``λ = 0``.

    Pools of more than ``block_rows`` rows (default 16,384) are computed ``block_rows`` rows
    at a time into one host float32 array, returned as ``np.ndarray``: the peak memory is the
    matrix itself plus one block (the dense path holds several matrix-sized temporaries,
    ~4x the matrix at 140,000 x 5,000). Smaller pools return a ``jax.Array``; both paths
    give the same values (same float32 arithmetic per entry).
    """
    check_inputs(np.asarray(pool), np.asarray(val), None if grad_norms is None
                 else np.asarray(grad_norms))
    num = np.shape(pool)[0]
    block = _BLOCK_ROWS if block_rows is None else int(block_rows)
    if block < 1:
        raise ValueError(f"block_rows must be >= 1; got {block_rows}")
    ghat = None if grad_norms is None or lam == 0 else normalise_grad_norms(grad_norms)
    if num <= block:
        d = _distances(jnp.asarray(pool, jnp.float32), jnp.asarray(val, jnp.float32))
        d = d / jnp.maximum(jnp.max(d), 1e-30)
        return d if ghat is None else d - lam * ghat[:, None]
    pool_np = np.asarray(pool, np.float32)
    val_j = jnp.asarray(val, jnp.float32)
    out = np.empty((num, np.shape(val)[0]), np.float32)
    for lo in range(0, num, block):  # equal block shapes: one compilation
        part = pool_np[lo:lo + block]
        if part.shape[0] < block:
            part = np.concatenate([part, np.zeros((block - part.shape[0], part.shape[1]),
                                                  np.float32)])
        out[lo:lo + block] = np.asarray(_distances(jnp.asarray(part), val_j))[:num - lo]
    # the same float32 ops as the dense path, in place: d / max(max d, 1e-30) - λ ĝ
    out /= np.maximum(out.max(), np.float32(1e-30))
    if ghat is not None:
        out -= np.float32(lam) * np.asarray(ghat)[:, None]
    return out


_BLOCK_ROWS = 16384


def normalise_grad_norms(grad_norms: jax.typing.ArrayLike) -> jax.Array:
    r""":math:`\hat g = g / \max_k g_k` (zeros stay zeros)."""
    g = jnp.asarray(grad_norms, jnp.float32)
    return g / jnp.maximum(jnp.max(g), 1e-30)


class POOResult(NamedTuple):
    """Entropic POO of one subset: ``value = <π_ε, C[S]>`` and the solver's duals."""

    value: jax.Array  # transport cost of the entropic plan (→ exact POO as ε → 0)
    f: jax.Array  # [n] source (subset) potentials
    g: jax.Array  # [|V|] target potentials
    converged: jax.Array
    n_iters: jax.Array
    epsilon: jax.Array  # the absolute ε used (epsilon · std(C_S))


def _solve(cost: jax.Array, init_f: jax.Array | None, init_g: jax.Array | None,
           epsilon: float, threshold: float, max_iterations: int,
           momentum: float = 1.0) -> POOResult:
    n, m = cost.shape
    geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon, relative_epsilon="std")
    prob = linear_problem.LinearProblem(geom, a=jnp.full((n,), 1.0 / n),
                                        b=jnp.full((m,), 1.0 / m))
    extra = {} if momentum == 1.0 else {
        "momentum": acceleration.Momentum(value=momentum, start=0)}
    solver = sinkhorn.Sinkhorn(threshold=threshold, max_iterations=max_iterations, **extra)
    out = solver(prob, init=(init_f, init_g))
    value = jnp.sum(out.matrix * cost)  # transport cost of the entropic plan
    return POOResult(value, out.f, out.g, out.converged, out.n_iters, geom.epsilon)


@jax.jit(static_argnames=("max_iterations", "momentum"))
def _poo_rows(cost, rows, init_f, init_g, epsilon, threshold, max_iterations, momentum=1.0):
    return _solve(cost[rows], init_f, init_g, epsilon, threshold, max_iterations, momentum)


def poo_sinkhorn_rows(cost: jax.Array, rows: jax.Array, init_f: jax.Array | None = None,
                      init_g: jax.Array | None = None, *, epsilon: float = 0.01,
                      threshold: float = 1e-4, max_iterations: int = 2000,
                      momentum: float = 1.0) -> POOResult:
    r"""Entropic POO of ``rows`` of the full cost (``C`` passed as a jit argument).

    Solves :math:`\min_\pi \langle\pi, C_S\rangle + \varepsilon\,\mathrm{KL}(\pi\|ab)` with
    uniform ``a = 1/|S|``, ``b = 1/|V|`` and ``ε = epsilon · std(C_S)``; ``init_f/init_g``
    warm-start the potentials (e.g. the previous solve's, with a swapped row's entry
    replaced; zeros when ``None``). ``epsilon`` and ``threshold`` are traced, so changing
    them does not recompile. ``momentum`` in ``[1, 2)`` over-relaxes the Sinkhorn updates
    (1 = plain Sinkhorn); from a warm start near the solution 1.5-1.8 cut the iterations
    2-3x. Returns :class:`POOResult`.
    """
    if not 1.0 <= momentum < 2.0:
        raise ValueError(f"momentum must be in [1, 2), got {momentum}")
    rows = jnp.asarray(rows)
    if init_f is None:
        init_f = jnp.zeros(rows.shape[0], jnp.float32)
        init_g = jnp.zeros(cost.shape[1], jnp.float32)
    return _poo_rows(cost, rows, init_f, init_g, jnp.float32(epsilon), jnp.float32(threshold),
                     max_iterations, float(momentum))


def poo_sinkhorn(cost: jax.typing.ArrayLike, subset: np.ndarray | None = None, *,
                 epsilon: float = 0.01, threshold: float = 1e-4,
                 max_iterations: int = 2000) -> float:
    """Entropic POO value of ``subset`` (all rows when ``None``) as a float."""
    cost = jnp.asarray(cost, jnp.float32)
    rows = jnp.arange(cost.shape[0]) if subset is None else jnp.asarray(subset)
    return float(poo_sinkhorn_rows(cost, rows, epsilon=epsilon, threshold=threshold,
                                   max_iterations=max_iterations).value)


def poo_exact(cost: np.ndarray, subset: np.ndarray | None = None, *,
              return_duals: bool = False, num_itermax: int = 10_000_000):
    r"""Exact POO by network simplex (POT ``ot.emd``), in float64.

    Returns the value :math:`\min_\pi\langle\pi, C_S\rangle`, or ``(value, u, v)`` with the
    dual potentials (``u_k + v_j <= C_kj``) when ``return_duals``.

    Raises:
      ImportError: POT is not installed (``pip install 'recrl[goracs]'``); it serves only as the
        exact reference, selection itself runs on ott-jax.
    """
    ot = _pot("recrl.coreset.poo_exact")
    # subset first: converting the whole pool's cost to float64 would double its memory
    c = np.asarray(cost) if subset is None else np.asarray(cost)[np.asarray(subset)]
    c = np.asarray(c, np.float64)
    n, m = c.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    if not return_duals:
        return float(ot.emd2(a, b, c, numItermax=num_itermax))
    _plan, log = ot.emd(a, b, c, numItermax=num_itermax, log=True)
    return float(log["cost"]), np.asarray(log["u"]), np.asarray(log["v"])


def _pot(name: str):
    try:
        import ot
    except ImportError as e:
        raise missing(name, "goracs", e) from e
    return ot


def emd_plan(c: np.ndarray, *, num_itermax: int = 10_000_000):
    """Exact optimal plan of ``c [n, m]`` with uniform masses (POT network simplex, float64):
    ``(plan [n, m], u [n], v [m])``."""
    ot = _pot("recrl.coreset.emd_plan")
    c = np.asarray(c, np.float64)
    n, m = c.shape
    plan, log = ot.emd(np.full(n, 1.0 / n), np.full(m, 1.0 / m), c, numItermax=num_itermax,
                       log=True)
    return np.asarray(plan), np.asarray(log["u"]), np.asarray(log["v"])


def semi_relaxed(cost: np.ndarray, subset: np.ndarray) -> float:
    r"""Semi-relaxed OT :math:`\frac1{|V|}\sum_j \min_{i\in S} C_{ij}` (a lower bound on POO)."""
    c = np.asarray(cost)[np.asarray(subset)]
    return float(np.min(c, axis=0).mean())
