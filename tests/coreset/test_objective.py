"""POO objective: cost normalisation, Sinkhorn vs exact OT, assignment and lower bounds."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from recrl import coreset


def _data(n_pool=24, n_val=12, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_pool, d)), rng.normal(size=(n_val, d)), rng.random(n_pool) + 0.1


def test_cost_matrix_by_hand():
    p, v, g = _data()
    dist = np.sqrt(((p[:, None, :] - v[None]) ** 2).sum(-1))
    want = dist / dist.max() - 0.3 * (g / g.max())[:, None]
    np.testing.assert_allclose(coreset.cost_matrix(p, v, g, 0.3), want, atol=2e-6)
    np.testing.assert_allclose(coreset.cost_matrix(p, v), dist / dist.max(), atol=2e-6)


def test_sinkhorn_approaches_exact_as_epsilon_shrinks():
    p, v, g = _data()
    c = np.asarray(coreset.cost_matrix(p, v, g, 0.1))
    subset = np.arange(0, 24, 3)
    exact = coreset.poo_exact(c, subset)
    errs = [abs(coreset.poo_sinkhorn(c, subset, epsilon=e, threshold=1e-6) - exact)
            for e in (0.3, 0.03, 0.003)]
    assert errs[0] > errs[1] > errs[2] or errs[2] < 1e-5
    assert errs[2] < 2e-3


def test_exact_equals_assignment_when_sizes_match():
    p, v, g = _data(n_pool=10, n_val=10)
    c = np.asarray(coreset.cost_matrix(p, v, g, 0.1), np.float64)
    r, col = linear_sum_assignment(c)
    assert coreset.poo_exact(c) == pytest.approx(c[r, col].mean(), abs=1e-9)
    assert coreset.poo_sinkhorn(c, epsilon=0.003, threshold=1e-6) == pytest.approx(
        c[r, col].mean(), abs=2e-3)


def test_poo_is_distance_ot_minus_gradient_term_and_above_semi_relaxed():
    p, v, g = _data(seed=1)
    lam, subset = 0.5, np.array([1, 4, 5, 9, 13, 20])
    c = np.asarray(coreset.cost_matrix(p, v, g, lam), np.float64)
    d = np.asarray(coreset.cost_matrix(p, v), np.float64)
    ghat = g / g.max()
    assert coreset.poo_exact(c, subset) == pytest.approx(
        coreset.poo_exact(d, subset) - lam * ghat[subset].mean(), abs=1e-6)
    assert coreset.semi_relaxed(c, subset) <= coreset.poo_exact(c, subset) + 1e-12
    # semi-relaxed value by brute force: every column to its nearest member
    assert coreset.semi_relaxed(c, subset) == pytest.approx(
        np.mean([min(c[i, j] for i in subset) for j in range(c.shape[1])]))


def test_exact_duals_are_feasible_and_tight():
    p, v, g = _data(seed=2)
    c = np.asarray(coreset.cost_matrix(p, v, g, 0.1), np.float64)[:6]
    value, u, w = coreset.poo_exact(c, return_duals=True)
    assert np.all(u[:, None] + w[None, :] <= c + 1e-9)
    assert value == pytest.approx(u.mean() + w.mean(), abs=1e-9)


@pytest.mark.parametrize("case", ["n_too_big", "empty_val", "nan_pool", "nan_grad", "dims",
                                  "grad_shape", "negative_grad"])
def test_clear_errors(case):
    p, v, g = _data()
    kwargs = dict(pool_features=p, val_features=v, grad_norms=g, n=5)
    msg = {"n_too_big": "exceeds the pool size", "empty_val": "validation set is empty",
           "nan_pool": "NaN", "nan_grad": "NaN", "dims": "dimensions differ",
           "grad_shape": "shape", "negative_grad": "non-negative"}[case]
    if case == "n_too_big":
        kwargs["n"] = 25
    elif case == "empty_val":
        kwargs["val_features"] = v[:0]
    elif case == "nan_pool":
        p = p.copy()
        p[3, 1] = np.nan
        kwargs["pool_features"] = p
    elif case == "nan_grad":
        kwargs["grad_norms"] = np.where(np.arange(24) == 2, np.nan, g)
    elif case == "dims":
        kwargs["val_features"] = v[:, :4]
    elif case == "grad_shape":
        kwargs["grad_norms"] = g[:-1]
    else:
        kwargs["grad_norms"] = -g
    with pytest.raises(ValueError, match=msg):
        coreset.select(**kwargs)


def test_brute_force_semi_relaxed_bounds_greedy():
    p, v, g = _data(n_pool=9, n_val=7, seed=3)
    c = np.asarray(coreset.cost_matrix(p, v, g, 0.1), np.float64)
    n = 3
    best = min(coreset.semi_relaxed(c, np.array(s))
               for s in itertools.combinations(range(9), n))
    init, _ = coreset.greedy_init(c, n, g)
    assert best <= coreset.semi_relaxed(c, init) + 1e-12
    # facility location greedy guarantee: gain >= (1 - 1/e) of the optimal gain
    base = c.max(0).mean()  # value with no facility (every column at its worst row)
    assert base - coreset.semi_relaxed(c, init) >= (1 - 1 / np.e) * (base - best) - 1e-9


def test_over_relaxed_sinkhorn_reaches_the_same_value_in_fewer_iterations():
    """Momentum changes the path, not the fixed point: same value, fewer warm iterations."""
    import jax.numpy as jnp

    from recrl.coreset import objective

    rng = np.random.default_rng(4)
    cost = jnp.asarray(coreset.cost_matrix(rng.normal(size=(300, 8)), rng.normal(size=(200, 8)),
                                           rng.random(300), 0.1))
    rows = jnp.arange(40)
    base = objective.poo_sinkhorn_rows(cost, rows, epsilon=0.05, threshold=1e-5)
    swapped = rows.at[7].set(250)  # warm start from the neighbouring subset's potentials
    plain = objective.poo_sinkhorn_rows(cost, swapped, base.f, base.g, epsilon=0.05,
                                        threshold=1e-5)
    fast = objective.poo_sinkhorn_rows(cost, swapped, base.f, base.g, epsilon=0.05,
                                       threshold=1e-5, momentum=1.6)
    assert bool(plain.converged) and bool(fast.converged)
    assert abs(float(fast.value) - float(plain.value)) < 1e-4 * abs(float(plain.value))
    assert int(fast.n_iters) < int(plain.n_iters)
    with pytest.raises(ValueError, match="momentum"):
        objective.poo_sinkhorn_rows(cost, rows, momentum=2.0)


def test_blocked_cost_matrix_equals_the_dense_one_and_itra_selects_the_same_rows():
    rng = np.random.default_rng(7)
    p, v, g = rng.normal(size=(103, 5)), rng.normal(size=(17, 5)) + 0.3, rng.random(103)
    dense = coreset.cost_matrix(p, v, g, 0.1)
    blocked = coreset.cost_matrix(p, v, g, 0.1, block_rows=16)  # 7 blocks, last one short
    assert isinstance(blocked, np.ndarray) and blocked.dtype == np.float32
    np.testing.assert_allclose(blocked, np.asarray(dense), rtol=0, atol=1e-6)
    np.testing.assert_allclose(coreset.cost_matrix(p, v, None, block_rows=10),
                               np.asarray(coreset.cost_matrix(p, v)), rtol=0, atol=1e-6)
    # the selection and its exact objective do not depend on the path
    a = coreset.itra(np.asarray(dense), 9, tie_break=g, max_iters=4, max_checks=8)
    b = coreset.itra(blocked, 9, tie_break=g, max_iters=4, max_checks=8)
    np.testing.assert_array_equal(np.sort(a.indices), np.sort(b.indices))
    assert coreset.poo_exact(blocked, b.indices) == pytest.approx(
        coreset.poo_exact(np.asarray(dense), a.indices), abs=1e-6)
    with pytest.raises(ValueError, match="block_rows"):
        coreset.cost_matrix(p, v, g, block_rows=0)


@pytest.mark.parametrize(("n_pool", "n", "m"), [(40, 10, 30), (40, 12, 30), (40, 7, 16)])
def test_exact_update_after_swaps_equals_pot(n_pool, n, m):
    """Updated exact states (single and block swaps, chained) = POT's exact EMD from
    scratch; their duals are feasible and tight (dual objective = value)."""
    import ot

    from recrl.coreset.emd_update import ExactState

    rng = np.random.default_rng(n + m)
    c = rng.random((n_pool, m)).astype(np.float32)  # float32 like the POO cost
    state = ExactState.solve(c, np.arange(n))
    assert state is not None and state.value == pytest.approx(
        ot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), c[:n].astype(np.float64)), abs=1e-12)
    for k in [1, 1, 3, 1, 2, 1, 4, 1]:
        outside = np.setdiff1d(np.arange(n_pool), state.sel)
        pos = rng.choice(n, k, replace=False)
        rows_in = rng.choice(outside, k, replace=False)
        new = state.swap(pos, rows_in)
        want_sel = state.sel.copy()
        want_sel[pos] = rows_in
        np.testing.assert_array_equal(new.sel, want_sel)
        cs = c[want_sel].astype(np.float64)
        want = ot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), cs)
        assert new.value == pytest.approx(want, abs=1e-12)
        assert np.all(new.u[:, None] + new.v[None, :] <= cs + 1e-9)
        assert new.u.mean() + new.v.mean() == pytest.approx(want, abs=1e-12)
        assert state.swap(pos, rows_in).value == new.value  # the old state is unchanged
        state = new


def test_exact_update_certificate_rejects_wrong_duals():
    from recrl.coreset.emd_update import ExactState

    c = np.random.default_rng(0).random((20, 15)).astype(np.float32)
    state = ExactState.solve(c, np.arange(5))
    assert state.certified()
    state.u[2] += 1e-3  # infeasible for some column or no longer tight on its flow
    assert not state.certified()
    state.u[2] -= 2e-3
    assert not state.certified()


def test_exact_update_over_its_search_budget_returns_none():
    from recrl.coreset.emd_update import ExactState

    c = np.random.default_rng(3).random((30, 31)).astype(np.float32)  # 7 x 31: 31 units/row
    state = ExactState.solve(c, np.arange(7))
    assert state.swap([2], [20], max_searches=1) is None
    full = state.swap([2], [20])
    assert full is not None and full.value == pytest.approx(
        coreset.poo_exact(c, full.sel), abs=1e-12)
