"""Coreset baselines: random, EL2N, GraNd, CCS, k-center greedy, DEALRec, D2-Pruning, full.

Every function returns sorted unique pool indices (``int64``) of length ``n`` (all for
``full``). Score-based methods take the score per pool sample (EL2N: mean per-token
``||softmax − onehot||₂`` of the answer; GraNd: per-sample gradient norm).
"""

from __future__ import annotations

import numpy as np


def _check(num: int, n: int) -> None:
    if not 1 <= n <= num:
        raise ValueError(f"budget n={n} must be in [1, pool size {num}]")


def _finite(scores: np.ndarray, name: str) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)):
        raise ValueError(f"{name} must be a finite 1-D array; got shape {s.shape}")
    return s


def random_subset(num: int, n: int, seed: int = 0) -> np.ndarray:
    """Uniform subset of size ``n`` without replacement."""
    _check(num, n)
    return np.sort(np.random.default_rng(seed).choice(num, n, replace=False))


def full_data(num: int) -> np.ndarray:
    """Every pool index."""
    return np.arange(num, dtype=np.int64)


def top_score(scores: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The ``n`` highest scores (EL2N, GraNd); equal scores in a seeded random order."""
    s = _finite(scores, "scores")
    _check(s.shape[0], n)
    jitter = np.random.default_rng(seed).random(s.shape[0])
    return np.sort(np.lexsort((jitter, -s))[:n])


el2n = top_score
grand = top_score


def stratified(scores: np.ndarray, n: int, *, bins: int = 50, prune_hard: float = 0.0,
               seed: int = 0) -> np.ndarray:
    """Coverage-centric stratified sampling (CCS, Zheng et al. 2023).

    Drop the ``prune_hard`` fraction with the highest scores, cut the score range into
    ``bins`` equal-width strata, then repeatedly give each non-empty stratum an equal share
    of the remaining budget (smallest strata first, each capped at its size) and sample
    uniformly inside each stratum.
    """
    s = _finite(scores, "scores")
    num = s.shape[0]
    _check(num, n)
    rng = np.random.default_rng(seed)
    keep = np.argsort(-s, kind="stable")[int(prune_hard * num):]
    if keep.shape[0] < n:
        keep = np.argsort(-s, kind="stable")[num - n:]
    edges = np.linspace(s[keep].min(), s[keep].max(), bins + 1)
    which = np.clip(np.searchsorted(edges, s[keep], side="right") - 1, 0, bins - 1)
    strata = [keep[which == b] for b in range(bins) if np.any(which == b)]
    strata.sort(key=len)
    chosen, budget = [], n
    for i, st in enumerate(strata):
        take = min(len(st), budget // (len(strata) - i))
        chosen.append(rng.choice(st, take, replace=False))
        budget -= take
    out = np.concatenate(chosen)
    if out.shape[0] < n:  # rounding leftovers: uniform over the rest
        rest = np.setdiff1d(keep, out)
        out = np.concatenate([out, rng.choice(rest, n - out.shape[0], replace=False)])
    return np.sort(out)


def ccs(scores: np.ndarray, n: int, *, prune_hard: float = 0.1, bins: int = 50,
        seed: int = 0) -> np.ndarray:
    """CCS on a difficulty score (default 10 % hardest pruned, 50 strata)."""
    return stratified(scores, n, bins=bins, prune_hard=prune_hard, seed=seed)


def influence_scores(grads: np.ndarray, *, damping: float = 0.01) -> np.ndarray:
    r"""Influence of removing each sample on the empirical risk (DEALRec's influence term).

    :math:`I_i = \bar g^\top (F + \delta I)^{-1} g_i` with per-sample gradients
    ``grads [N, num_params]``, their mean :math:`\bar g`, the empirical Fisher (Gauss–Newton
    approximation of the NLL Hessian) :math:`F = G^\top G / N` and damping
    :math:`\delta` = ``damping`` · mean eigenvalue of ``F``. A first-order estimate of how
    much the mean training loss rises when sample ``i`` is left out (larger = more
    influential); exact for a quadratic loss whose Hessian is ``F + δI``.
    """
    g = np.asarray(grads, np.float64)
    if g.ndim != 2 or g.shape[0] == 0 or not np.all(np.isfinite(g)):
        raise ValueError(f"grads must be a finite, non-empty [N, num_params] array; got {g.shape}")
    if damping <= 0:
        raise ValueError(f"damping must be > 0; got {damping}")
    fisher = g.T @ g / g.shape[0]
    delta = damping * max(np.trace(fisher) / g.shape[1], np.finfo(np.float64).tiny)
    x = np.linalg.solve(fisher + delta * np.eye(g.shape[1]), g.mean(0))
    return g @ x


def dealrec(grad_norms: np.ndarray, n: int, *, influence: np.ndarray | None = None,
            gamma: float = 1.0, bins: int = 50, seed: int = 0) -> np.ndarray:
    r"""DEALRec-style: score :math:`s_i = \tilde I_i + \gamma\,\tilde g_i` (influence +
    effort), then coverage-stratified sampling over ``s`` (no pruning).

    Both terms are scaled by their largest magnitude (:math:`\tilde x = x / \max|x|`) so
    ``gamma`` weighs scale-free quantities. Without an influence estimate (see
    :func:`influence_scores`) the score is the effort term alone.
    """
    g = _finite(grad_norms, "grad_norms")
    score = gamma * g / max(np.abs(g).max(), 1e-30)
    if influence is not None:
        inf = _finite(influence, "influence")
        if inf.shape != g.shape:
            raise ValueError(f"influence {inf.shape} and grad_norms {g.shape} differ in shape")
        score = score + inf / max(np.abs(inf).max(), 1e-30)
    return stratified(score, n, bins=bins, prune_hard=0.0, seed=seed)


def kcenter_greedy(features: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    r"""k-center greedy (Sener & Savarese 2018): start at a seeded random point, then add
    :math:`\arg\max_i \min_{s\in S}\|x_i - x_s\|` until ``n`` points are chosen."""
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"features must be a finite [N, D] array; got shape {x.shape}")
    num = x.shape[0]
    _check(num, n)
    sq = np.einsum("nd,nd->n", x, x)
    first = int(np.random.default_rng(seed).integers(num))
    chosen = [first]
    dist = np.maximum(sq - 2 * x @ x[first] + sq[first], 0.0)
    for _ in range(n - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        np.minimum(dist, np.maximum(sq - 2 * x @ x[nxt] + sq[nxt], 0.0), out=dist)
        dist[chosen] = -1.0
    return np.sort(np.asarray(chosen, np.int64))


def d2_pruning(features: np.ndarray, scores: np.ndarray, n: int, *, k: int = 10,
               gamma_forward: float = 1.0, gamma_reverse: float = 1.0,
               prune_hard: float = 0.0) -> np.ndarray:
    r"""D2-Pruning (Maharana et al., ICLR 2024): message passing on a kNN graph of the
    samples whose node values are difficulty scores, then diversity-aware greedy selection.

    1. Graph: each sample is joined to its ``k`` nearest neighbours (Euclidean distance
       :math:`d` of ``features``), edge weights :math:`w_{ij} = e^{-\gamma_f d_{ij}}`.
    2. Forward message passing: :math:`s'_i = s_i + \sum_{j\in\mathcal N_k(i)} w_{ij} s_j`
       (a sample is worth more in a dense region of difficult samples).
    3. Reverse message passing: repeatedly take the sample with the largest :math:`s'`,
       then lower each of its neighbours :math:`j` by :math:`e^{-\gamma_r d_{ij}}\,s'_i`
       (so near-duplicates of chosen samples become less attractive).

    ``prune_hard`` drops that fraction of the highest scores first (the paper's optional
    β); the graph is built on the rest. Distances are divided by their median kNN distance
    so the γ's are scale-free. Equal values go to the lower index.
    """
    x = np.asarray(features, np.float64)
    s = _finite(scores, "scores")
    if x.ndim != 2 or x.shape[0] != s.shape[0] or not np.all(np.isfinite(x)):
        raise ValueError(f"features must be a finite [N, D] array matching scores [N]; got "
                         f"{x.shape}, {s.shape}")
    num = s.shape[0]
    _check(num, n)
    keep = np.sort(np.argsort(-s, kind="stable")[int(prune_hard * num):])
    if keep.shape[0] < n:
        keep = np.sort(np.argsort(-s, kind="stable")[num - n:])
    x, s = x[keep], s[keep]
    m = x.shape[0]
    kk = min(k, m - 1)
    nbr = np.zeros((m, kk), np.int64)
    dist = np.zeros((m, kk))
    sq = np.einsum("nd,nd->n", x, x)
    for lo in range(0, m, 1024):
        d2 = np.maximum(sq[lo:lo + 1024, None] - 2 * x[lo:lo + 1024] @ x.T + sq[None], 0.0)
        d2[np.arange(d2.shape[0]), np.arange(lo, lo + d2.shape[0])] = np.inf  # no self loop
        part = np.argsort(d2, axis=1, kind="stable")[:, :kk]
        nbr[lo:lo + 1024] = part
        dist[lo:lo + 1024] = np.sqrt(np.take_along_axis(d2, part, axis=1))
    if kk > 0:
        dist = dist / max(np.median(dist), 1e-30)
    val = s + (np.exp(-gamma_forward * dist) * s[nbr]).sum(1)
    w_rev = np.exp(-gamma_reverse * dist)
    chosen = np.zeros(m, bool)
    out = []
    for _ in range(n):
        i = int(np.argmax(np.where(chosen, -np.inf, val)))
        out.append(i)
        chosen[i] = True
        np.subtract.at(val, nbr[i], w_rev[i] * val[i])
    return np.sort(keep[np.asarray(out, np.int64)])
