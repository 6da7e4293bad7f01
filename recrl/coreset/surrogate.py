r"""DEALRec's surrogate recommender and its influence scores (the DEALRec baseline).

DEALRec (Lin et al., SIGIR 2024) scores each training sample by its influence on the
empirical risk, estimated on a small *surrogate* sequential recommender instead of the LLM:

.. math:: I_i = \frac1N \sum_k \nabla\ell(z_k)^\top H^{-1} \nabla\ell(z_i)
          = \bar g^\top H^{-1} g_i

(``I_remove,loss``: how much the mean training loss rises when :math:`z_i` is left out),
plus :math:`\gamma` times the LLM's effort score (gradient norm), then coverage-enhanced
(stratified) sampling (:func:`recrl.coreset.baselines.dealrec`).

Surrogate here: next item from the mean embedding of the history items,
``logits = mean(E_in[history]) E_outᵀ + b`` (full softmax over the catalogue), trained with
Adam. :math:`H` is the damped Gauss–Newton matrix of the mean loss,
:math:`\frac1N\sum_i J_i^\top(\mathrm{diag}\,p_i - p_ip_i^\top)J_i + \delta I` (positive
definite, the usual stand-in for the Hessian of a non-convex model), and
:math:`H^{-1}\bar g` is solved by conjugate gradient with exact matrix-vector products
(forward- and reverse-mode through the logits); :math:`g_i^\top x` for every sample is one
forward-mode pass of the per-sample losses.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree


def init_surrogate(num_items: int, dim: int = 32, seed: int = 0) -> dict[str, jax.Array]:
    """Parameters ``{"emb_in" [I, d], "emb_out" [I, d], "bias" [I]}``."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    s = 1.0 / np.sqrt(dim)
    return {"emb_in": s * jax.random.normal(k1, (num_items, dim)),
            "emb_out": s * jax.random.normal(k2, (num_items, dim)),
            "bias": jnp.zeros(num_items)}


def surrogate_logits(params, history: jax.Array, mask: jax.Array) -> jax.Array:
    """``[N, I]`` next-item logits from the mean history embedding (``history [N, H]`` ids,
    ``mask [N, H]`` real positions)."""
    w = mask.astype(jnp.float32)
    h = (params["emb_in"][jnp.maximum(history, 0)] * w[..., None]).sum(1)
    h = h / jnp.maximum(w.sum(1, keepdims=True), 1.0)
    return h @ params["emb_out"].T + params["bias"]


def _losses(params, history, mask, target):
    logits = surrogate_logits(params, history, mask)
    return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, target[:, None], 1)[:, 0]


def _check(history, mask, target, num_items):
    h, m, t = np.asarray(history), np.asarray(mask), np.asarray(target)
    if h.ndim != 2 or m.shape != h.shape or t.shape != (h.shape[0],) or h.shape[0] == 0:
        raise ValueError(f"history [N, H], mask [N, H] and target [N] expected; got "
                         f"{h.shape}, {m.shape}, {t.shape}")
    if t.min() < 0 or t.max() >= num_items or h[m.astype(bool)].max(initial=0) >= num_items:
        raise ValueError(f"item ids must be in [0, {num_items})")
    return jnp.asarray(h, jnp.int32), jnp.asarray(m, bool), jnp.asarray(t, jnp.int32)


def train_surrogate(history: np.ndarray, mask: np.ndarray, target: np.ndarray,
                    num_items: int, *, dim: int = 32, steps: int = 500, batch_size: int = 512,
                    lr: float = 1e-2, seed: int = 0) -> dict[str, jax.Array]:
    """Adam on the mean next-item cross-entropy over minibatches of the pool."""
    h, m, t = _check(history, mask, target, num_items)
    params = init_surrogate(num_items, dim, seed)
    opt = optax.adam(lr)
    state = opt.init(params)

    @jax.jit
    def step(params, state, idx):
        loss, g = jax.value_and_grad(lambda p: _losses(p, h[idx], m[idx], t[idx]).mean())(
            params)
        up, state = opt.update(g, state, params)
        return optax.apply_updates(params, up), state, loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = jnp.asarray(rng.choice(h.shape[0], min(batch_size, h.shape[0]), replace=False))
        params, state, _ = step(params, state, idx)
    return params


def surrogate_influence(params, history: np.ndarray, mask: np.ndarray, target: np.ndarray,
                        *, damping: float = 1e-3, cg_iters: int = 100, tol: float = 1e-6,
                        batch_size: int = 2048) -> np.ndarray:
    r""":math:`I_i = \bar g^\top (G + \delta I)^{-1} g_i` for every sample (``[N]``
    float64); ``G`` = Gauss–Newton matrix of the mean loss, ``δ = damping``."""
    num_items = params["bias"].shape[0]
    h, m, t = _check(history, mask, target, num_items)
    flat, unravel = ravel_pytree(params)
    num = h.shape[0]
    chunks = [slice(lo, min(lo + batch_size, num)) for lo in range(0, num, batch_size)]

    @jax.jit
    def mean_grad_part(theta, hh, mm, tt):
        return jax.grad(lambda th: _losses(unravel(th), hh, mm, tt).sum())(theta)

    @jax.jit
    def ggn_part(theta, v, hh, mm):
        def f(th):
            return surrogate_logits(unravel(th), hh, mm)

        z, jv = jax.jvp(f, (theta,), (v,))
        p = jax.nn.softmax(z, -1)
        hv = p * jv - p * (p * jv).sum(-1, keepdims=True)
        return jax.vjp(f, theta)[1](hv)[0]

    @jax.jit
    def directional(theta, v, hh, mm, tt):
        return jax.jvp(lambda th: _losses(unravel(th), hh, mm, tt), (theta,), (v,))[1]

    gbar = sum(mean_grad_part(flat, h[c], m[c], t[c]) for c in chunks) / num

    def matvec(v):
        return sum(ggn_part(flat, v, h[c], m[c]) for c in chunks) / num + damping * v

    x = jnp.zeros_like(gbar)  # conjugate gradient on (G + δI) x = ḡ
    r = gbar - matvec(x)
    p, rr = r, r @ r
    stop = tol**2 * (gbar @ gbar)
    for _ in range(cg_iters):
        if rr <= stop:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        rr_new = r @ r
        p, rr = r + (rr_new / rr) * p, rr_new
    rel = float(jnp.sqrt(rr / jnp.maximum(gbar @ gbar, 1e-30)))
    if rel > 1e-3:
        warnings.warn(f"surrogate_influence: conjugate gradient stopped at relative residual "
                      f"{rel:.1e} after {cg_iters} iterations (raise cg_iters or damping)",
                      stacklevel=2)
    return np.concatenate([np.asarray(directional(flat, x, h[c], m[c], t[c]), np.float64)
                           for c in chunks])
