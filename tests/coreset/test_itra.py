"""ITRA: lazy greedy vs a plain loop, tie handling, dual estimates, verified swaps."""

import importlib
import math

import numpy as np
import pytest

from recrl import coreset

itra_module = importlib.import_module("recrl.coreset.itra")  # the module (not the function)


def _cost(n_pool=40, n_val=16, seed=0, lam=0.1):
    rng = np.random.default_rng(seed)
    p, v, g = rng.normal(size=(n_pool, 4)), rng.normal(size=(n_val, 4)), rng.random(n_pool)
    return np.asarray(coreset.cost_matrix(p, v, g, lam), np.float64), g


def _plain_greedy(c, n, tb):
    """Reference: evaluate every row every step (no laziness), same tie rule."""
    first = np.lexsort((-tb, c.sum(1)))[0]
    chosen, m = [first], c[first].copy()
    while len(chosen) < n:
        gains = np.maximum(m[None] - c, 0).sum(1)
        gains[chosen] = -np.inf
        if gains.max() <= 0:
            break
        best = np.lexsort((-tb, -gains))[0]
        chosen.append(best)
        m = np.minimum(m, c[best])
    return chosen


def test_lazy_greedy_equals_plain_greedy():
    c, g = _cost(n_pool=60, n_val=30, seed=1)
    got, k = coreset.greedy_init(c, 12, g, block=2)
    want = _plain_greedy(c, 12, g)
    assert k == len(want) == 12
    np.testing.assert_array_equal(got, want)


def test_ties_are_not_broken_by_index():
    # 2 validation points: after two picks every gain is 0, the rest is a tie on gains
    c, g = _cost(n_pool=30, n_val=2, seed=2)
    sel, k = coreset.greedy_init(c, 6, g)
    assert k <= 3 and len(set(sel.tolist())) == 6  # first row + at most 2 argmins
    perm = np.random.default_rng(0).permutation(30)  # row order must not matter
    sel_p, _ = coreset.greedy_init(c[perm], 6, g[perm])
    np.testing.assert_array_equal(np.sort(perm[sel_p]), np.sort(sel))
    res = coreset.itra(c, 6, tie_break=g, max_iters=0)
    perm_res = coreset.itra(c[perm], 6, tie_break=g[perm], max_iters=0)
    np.testing.assert_array_equal(np.sort(perm[perm_res.indices]), np.sort(res.indices))


def test_dual_scores_maximise_the_concave_estimate():
    c, _ = _cost(seed=3)
    sel = np.arange(0, 40, 5)
    _value, u, _ = coreset.poo_exact(c, sel, return_duals=True)
    f, _y = coreset.dual_scores(c.astype(np.float32), sel, u.astype(np.float32),
                               rank=math.ceil(16 / 8))
    fv = (c[sel] - u[:, None]).min(0)
    gaps = c - fv[None]

    def estimate(i, yy):
        return yy / len(sel) + np.minimum(0, gaps[i] - yy).sum() / c.shape[1]

    for i in range(c.shape[0]):
        grid = np.concatenate([gaps[i], np.linspace(gaps[i].min() - 1, gaps[i].max() + 1, 50)])
        best = max(estimate(i, yy) for yy in grid)
        assert f[i] == pytest.approx(best, abs=1e-5)
    # a member's estimate is its dual value / |S| (it is its own R-th nearest "gap")
    np.testing.assert_allclose(np.asarray(f)[sel], u / len(sel), atol=1e-5)


@pytest.mark.parametrize(("verify", "block"), [("exact", 1), ("exact", 2), ("exact", 3),
                                               ("sinkhorn", 1),
                                               ("sinkhorn", 3)])
def test_every_accepted_swap_strictly_lowers_poo(verify, block):
    c, _g = _cost(n_pool=40, n_val=16, seed=4)
    init = np.arange(8)  # a poor start so refinement has work to do
    sel, trace, checks = coreset.refine(c, init, max_iters=6, cut=6, max_checks=12,
                                        verify=verify, epsilon=0.01, threshold=1e-6,
                                        block=block, exact_after=None)  # Sinkhorn throughout
    assert len(trace) >= 2 and checks >= len(trace) - 1
    assert np.all(np.diff(trace) < 0)
    if verify == "exact":
        assert trace[-1] == pytest.approx(coreset.poo_exact(c, sel), abs=1e-9)
    else:
        assert trace[-1] == pytest.approx(
            coreset.poo_sinkhorn(c, sel, threshold=1e-6), abs=1e-4)
    assert coreset.poo_exact(c, sel) < coreset.poo_exact(c, init)
    assert len(set(sel.tolist())) == 8


def test_select_beats_random_and_label_variant_respects_labels():
    rng = np.random.default_rng(5)
    p, v, g = rng.normal(size=(60, 4)), rng.normal(size=(20, 4)) + 0.5, rng.random(60)
    out = coreset.select(p, v, g, 8, max_iters=3, max_checks=6)
    c = np.asarray(coreset.cost_matrix(p, v, g, 0.1))
    rand = [coreset.poo_exact(c, coreset.random_subset(60, 8, s)) for s in range(10)]
    assert coreset.poo_exact(c, out.indices) < min(rand)
    assert np.all(np.diff(out.trace) < 0)
    blk = coreset.select(p, v, g, 8, max_iters=6, max_checks=6, block=3)
    assert len(set(blk.indices.tolist())) == 8 and np.all(np.diff(blk.trace) < 0)
    assert coreset.poo_exact(c, blk.indices) < min(rand)
    pl, vl = rng.random(60) < 0.5, np.arange(20) < 15  # 75 % positive validation
    lab = coreset.select(p, v, g, 8, max_iters=2, max_checks=4, pool_labels=pl,
                         val_labels=vl)
    assert pl[lab.indices].sum() == 6 and len(set(lab.indices.tolist())) == 8
    with pytest.raises(ValueError, match="both"):
        coreset.select(p, v, g, 8, pool_labels=pl)


def test_unconverged_sinkhorn_never_accepts_a_swap_that_raises_the_exact_poo():
    c, _ = _cost(n_pool=60, n_val=30, seed=6)
    init = np.arange(10)
    kw = dict(max_iters=8, cut=6, max_checks=12, epsilon=0.01, threshold=1e-6,
              max_iterations=10, retry_iterations=10,  # 10 iterations: never converged
              verify="sinkhorn")

    def exact_steps(check):
        ex, info = [coreset.poo_exact(c, init)], {}
        coreset.refine(c, init, check_convergence=check, info=info,
                       on_accept=lambda s: ex.append(coreset.poo_exact(c, s)), **kw)
        return np.diff(ex), info

    unchecked, _ = exact_steps(False)
    assert unchecked.max() > 1e-3  # trusting the unconverged values accepts a bad swap
    checked, info = exact_steps(True)
    assert len(checked) >= 4 and np.all(checked < 0)
    assert info["exact_fallbacks"] >= 1 and info["retries"] >= 1
    # converged solves need no fallback (no iteration cap)
    info = {}
    coreset.refine(c, init, max_iters=3, cut=6, max_checks=12, epsilon=0.05,
                   threshold=1e-3, info=info, exact_after=None, verify="sinkhorn")
    assert info["exact_fallbacks"] == 0 and len(info["iterations"]) >= 3
    assert info["exact_from_check"] is None


def test_iteration_cap_hands_the_search_to_exact_verification():
    c, _ = _cost(n_pool=60, n_val=30, seed=6)
    init = np.arange(10)
    kw = dict(max_iters=8, cut=6, max_checks=12, epsilon=0.01, threshold=1e-6,
              verify="sinkhorn")
    ex, info = [coreset.poo_exact(c, init)], {}
    sel, trace, checks = coreset.refine(
        c, init, exact_after=30, info=info,
        on_accept=lambda s: ex.append(coreset.poo_exact(c, s)), **kw)
    k = info["exact_from_check"]
    assert k is not None and max(info["iterations"]) <= 30
    assert len(info["iterations"]) == k  # no Sinkhorn check after the switch
    assert np.all(np.diff(ex) < 0) and len(ex) >= 3  # every accepted move lowers exact POO
    assert trace[-1] == pytest.approx(coreset.poo_exact(c, sel), abs=1e-9)
    assert checks >= k
    # without a cap the checks run longer than 30 iterations
    info = {}
    coreset.refine(c, init, exact_after=None, info=info, **kw)
    assert max(info["iterations"]) > 30  # so the cap of 30 did cut checks short
    with pytest.raises(ValueError, match="exact_after"):
        coreset.refine(c, init, exact_after=0)
    with pytest.raises(ValueError, match="exact_after"):
        coreset.refine(c, init, exact_after="sometimes")
    # "auto" is the measured CPU cap here (the tests run on the CPU backend)
    info = {}
    coreset.refine(c, init, exact_after="auto", info=info, **kw)
    assert max(info["iterations"]) <= itra_module.EXACT_AFTER_CPU == 20
    # verify="auto" (the default) verifies exactly on CPU: no Sinkhorn check, one POT solve
    info = {}
    sel_a, trace, _ = coreset.refine(c, init, info=info, **{**kw, "verify": "auto"})
    assert info["iterations"] == [] and info["exact_full_solves"] == 1
    assert trace[-1] == pytest.approx(coreset.poo_exact(c, sel_a), abs=1e-12)


def test_dual_scores_with_a_partial_last_chunk_match_one_chunk():
    c, _ = _cost(n_pool=45, n_val=12, seed=8)
    c = c.astype(np.float32)
    sel = np.arange(0, 45, 9)
    u = np.random.default_rng(0).normal(size=5).astype(np.float32) * 0.01
    whole = coreset.dual_scores(c, sel, u, rank=3, chunk=64)  # one chunk (clipped to 45)
    parts = coreset.dual_scores(c, sel, u, rank=3, chunk=8)  # 6 chunks, the last overlaps
    for w, p in zip(whole, parts, strict=True):
        np.testing.assert_allclose(np.asarray(p), np.asarray(w), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("n_val", "n", "seed"), [(31, 7, 0), (31, 7, 1), (45, 8, 2)])
def test_exact_update_search_equals_the_pot_search(n_val, n, seed):
    """Exact verification by updated plans accepts the same moves as POT solves from
    scratch where the exact duals are unique (|S|, |V| coprime here), and always gives
    the POT exact value of each accepted selection."""
    c, _ = _cost(n_pool=60, n_val=n_val, seed=seed)
    c = c.astype(np.float32)
    kw = dict(max_iters=12, cut=6, max_checks=12, verify="exact")
    got, info = [], {}
    sel, trace, checks = coreset.refine(c, np.arange(n), exact_solver="update", info=info,
                                        on_accept=lambda s: got.append(s.copy()), **kw)
    sel_p, trace_p, checks_p = coreset.refine(c, np.arange(n), exact_solver="pot", **kw)
    assert info["exact_full_solves"] == 1 and len(trace) >= 4  # one POT solve, then updates
    np.testing.assert_array_equal(sel, sel_p)
    np.testing.assert_allclose(trace, trace_p, rtol=0, atol=1e-12)
    assert checks == checks_p
    np.testing.assert_allclose(trace[1:], [coreset.poo_exact(c, s) for s in got], atol=1e-12)


def test_exact_update_search_with_degenerate_duals_lowers_pot_exact_poo():
    """|S| divides |V| (a degenerate problem: many optimal duals, so the candidates may
    differ from the POT search's): every accepted move still lowers POT's exact POO."""
    c, _ = _cost(n_pool=80, n_val=40, seed=9)
    c = c.astype(np.float32)
    ex, info = [coreset.poo_exact(c, np.arange(8))], {}
    _sel, trace, _ = coreset.refine(c, np.arange(8), max_iters=10, cut=6, max_checks=12,
                                   verify="exact", info=info,
                                   on_accept=lambda s: ex.append(coreset.poo_exact(c, s)))
    assert len(ex) >= 4 and np.all(np.diff(ex) < 0)
    np.testing.assert_allclose(trace, ex, rtol=0, atol=1e-12)
    assert info["exact_full_solves"] == 1
    with pytest.raises(ValueError, match="exact_solver"):
        coreset.refine(c, np.arange(8), exact_solver="simplex")


def test_failed_update_certificate_falls_back_to_full_solves(monkeypatch):
    """When every updated plan fails its certificate, each check is a POT solve from
    scratch: the same moves, trace and checks as the POT search."""
    from recrl.coreset.emd_update import ExactState

    c, _ = _cost(n_pool=60, n_val=30, seed=3)
    c = c.astype(np.float32)
    kw = dict(max_iters=6, cut=6, max_checks=12, verify="exact")
    want = coreset.refine(c, np.arange(6), exact_solver="pot", **kw)
    monkeypatch.setattr(ExactState, "swap", lambda self, pos, rows_in, **_: None)
    info = {}
    got = coreset.refine(c, np.arange(6), info=info, **kw)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-12)
    assert got[2] == want[2] and len(got[1]) >= 3
    assert info["exact_full_solves"] == got[2] + 1  # the start + one per check


def test_an_update_over_budget_hands_the_search_to_full_solves(monkeypatch):
    monkeypatch.setattr(itra_module, "SEARCHES_PER_ROW", 1)  # every update is over budget
    c, _ = _cost(n_pool=60, n_val=31, seed=0)
    c = c.astype(np.float32)
    kw = dict(max_iters=6, cut=6, max_checks=12, verify="exact")
    info = {}
    got = coreset.refine(c, np.arange(7), info=info, **kw)
    want = coreset.refine(c, np.arange(7), exact_solver="pot", **kw)
    assert info["update_stopped_at_check"] == 1
    assert info["exact_full_solves"] == got[2] + 1
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-12)
