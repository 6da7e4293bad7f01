"""Slow NumPy loops written straight from the formulas, to test the estimators against."""

import numpy as np


def reward_to_go(r, m, gamma=1.0):
    r = np.asarray(r, np.float64)
    m = np.asarray(m, np.float64)
    out = np.zeros_like(r)
    for idx in np.ndindex(r.shape[:-1]):
        for t in range(r.shape[-1]):
            out[idx + (t,)] = sum(
                gamma ** (l - t) * r[idx + (l,)] * m[idx + (l,)] for l in range(t, r.shape[-1])
            )
    return out


def lengths_to_masks(lengths, T):
    lengths = np.asarray(lengths)
    item = np.zeros(lengths.shape + (T,))
    eos = np.zeros(lengths.shape + (T,))
    for idx in np.ndindex(lengths.shape):
        L = lengths[idx]
        for t in range(T):
            item[idx + (t,)] = t < L
            eos[idx + (t,)] = t == L
    return item, eos


def psae(r, lengths, gamma=1.0, leave_one_out=False):
    """r: [P, G, T]; lengths: [P, G]."""
    P, G, T = r.shape
    out = np.zeros((P, G, T))
    for p in range(P):
        # returns and activity per sample
        rets = np.zeros((G, T))
        act = np.zeros((G, T), bool)
        for g in range(G):
            L = lengths[p, g]
            if L == 0:
                continue  # invalid path: no action counted, no gradient
            for t in range(T):
                if t < L:
                    act[g, t] = True
                    rets[g, t] = sum(gamma ** (l - t) * r[p, g, l] for l in range(t, L))
                elif t == L:
                    act[g, t] = True  # EOS, reward-to-go 0
        for g in range(G):
            for t in range(T):
                if not act[g, t]:
                    continue
                peers = [h for h in range(G) if act[h, t] and (h != g or not leave_one_out)]
                b = np.mean([rets[h, t] for h in peers]) if peers else 0.0
                out[p, g, t] = rets[g, t] - b
    return out


def reinforce(r, lengths):
    P, G, T = r.shape
    out = np.zeros((P, G, T))
    for p in range(P):
        for g in range(G):
            L = lengths[p, g]
            if L == 0:
                continue
            R = sum(r[p, g, t] for t in range(L))
            for t in range(min(L + 1, T)):
                out[p, g, t] = R
    return out


def rtg(r, lengths, gamma=1.0):
    P, G, T = r.shape
    out = np.zeros((P, G, T))
    for p in range(P):
        for g in range(G):
            L = lengths[p, g]
            for t in range(L):
                out[p, g, t] = sum(gamma ** (l - t) * r[p, g, l] for l in range(t, L))
    return out


def grpo(R, valid=None, scale="std", eps=1e-6):
    R = np.asarray(R, np.float64)
    valid = np.ones_like(R, bool) if valid is None else np.asarray(valid, bool)
    out = np.zeros_like(R)
    for idx in np.ndindex(R.shape[:-1]):
        vals = [R[idx + (g,)] for g in range(R.shape[-1]) if valid[idx + (g,)]]
        if len(vals) < 2:
            continue
        mu = sum(vals) / len(vals)
        sd = (sum((v - mu) ** 2 for v in vals) / len(vals)) ** 0.5
        for g in range(R.shape[-1]):
            if valid[idx + (g,)]:
                a = R[idx + (g,)] - mu
                out[idx + (g,)] = a / (sd + eps) if scale == "std" else a
    return out


def rloo(R, valid=None):
    R = np.asarray(R, np.float64)
    valid = np.ones_like(R, bool) if valid is None else np.asarray(valid, bool)
    out = np.zeros_like(R)
    for idx in np.ndindex(R.shape[:-1]):
        G = R.shape[-1]
        for g in range(G):
            others = [R[idx + (h,)] for h in range(G) if h != g and valid[idx + (h,)]]
            if valid[idx + (g,)] and others:
                out[idx + (g,)] = R[idx + (g,)] - sum(others) / len(others)
    return out


def running_moments(rows):
    """Mean and population std of a list of K-vectors, by two passes."""
    x = np.asarray(rows, np.float64)
    mu = x.sum(0) / len(x)
    return mu, np.sqrt(((x - mu) ** 2).sum(0) / len(x))
