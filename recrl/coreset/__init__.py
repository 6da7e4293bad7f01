"""GORACS: OT-guided coreset selection (POO objective, ITRA, baselines)."""

from recrl.coreset.baselines import (
    ccs,
    d2_pruning,
    dealrec,
    el2n,
    full_data,
    grand,
    influence_scores,
    kcenter_greedy,
    random_subset,
    stratified,
    top_score,
)
from recrl.coreset.itra import ITRAResult, dual_scores, greedy_init, itra, refine
from recrl.coreset.objective import (
    POOResult,
    check_inputs,
    cost_matrix,
    normalise_grad_norms,
    poo_exact,
    poo_sinkhorn,
    poo_sinkhorn_rows,
    semi_relaxed,
)
from recrl.coreset.select import Selection, select

__all__ = [
    "ITRAResult", "POOResult", "Selection", "ccs", "check_inputs", "cost_matrix",
    "d2_pruning",
    "dealrec", "dual_scores", "el2n", "full_data", "grand", "greedy_init",
    "influence_scores", "itra", "kcenter_greedy", "normalise_grad_norms", "poo_exact",
    "poo_sinkhorn",
    "poo_sinkhorn_rows", "random_subset", "refine", "select", "semi_relaxed",
    "stratified", "top_score",
]
