"""Evaluation of path generators with a frozen simulator, and two heuristic baselines.

Metrics @1 use greedy decoding; @K take, per prompt, the best of ``K`` sampled paths by
each metric (the best path for IoI need not be the best for CTR). Path diversity is
``1 −`` the mean pairwise item-Jaccard of the ``K`` sampled paths of a prompt.

Baselines (no learning):

- **IPG** (Iterative Preference Guidance): at each step take the simulator's top-``k``
  candidates and pick the one maximising ``P(i|S) · (e_T·e_u' − e_T·e_u)`` with the
  simulated user update ``e_u' = γ e_u + (1 − γ) e_i`` (γ = 0.8).
- **Greedy sequential**: at each step take the top-``k`` candidates and pick the one whose
  embedding is closest (dot product) to the target's. Both never pick the target itself (a
  path is the intermediates; the target is out of every generator's action space) and run
  to ``T`` items.

Evaluation over users (the test split's prompts are clustered by user: a user contributes
many cut points): :func:`stratified_prompts` picks a validation subset spread evenly over
users, and :func:`cluster_bootstrap` gives confidence intervals of a mean (or of a paired
difference between two systems on the same prompts) by resampling users, not prompts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recrl import parallel
from recrl.prs import simulator as simlib
from recrl.prs.policy import PathPolicy
from recrl.prs.rewards import diversity, path_metrics
from recrl.prs.rollout import generate

METRICS = ("ctr", "coherence", "ioi", "ior", "length", "has_target")


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _metric_arrays(sim: Any, history: jax.Array, target: jax.Array, path: jax.Array,
                   lengths: jax.Array, genres: jax.Array, num_items: int) -> dict:
    """Per-path metrics (jax arrays ``[B]``) of generated paths under ``sim``."""
    safe = jnp.where(path < num_items, path, 0)
    scores = simlib.score_paths(sim, history, safe, lengths, target)
    m = path_metrics(scores, safe, lengths, target, genres)
    return {k: getattr(m, k) for k in METRICS}


def score_generated(sim: Any, history: jax.Array, target: jax.Array, path: jax.Array,
                    lengths: jax.Array, genres: jax.Array, num_items: int) -> dict:
    """Per-path metrics (arrays ``[B]``) of generated paths under ``sim``."""
    return {k: np.asarray(v) for k, v in
            _metric_arrays(sim, history, target, path, lengths, genres, num_items).items()}


@functools.partial(jax.jit, static_argnums=(0, 7))
def _metrics_jit(graphdef: nnx.GraphDef, state: Any, history: jax.Array, target: jax.Array,
                 path: jax.Array, lengths: jax.Array, genres: jax.Array, num_items: int) -> dict:
    """:func:`_metric_arrays` in one jitted step (batches split over a mesh)."""
    return _metric_arrays((graphdef, state), history, target, path, lengths, genres, num_items)


def _put_rows(mesh: Any, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Global arrays of ``arrays`` split over ``mesh``, padded with copies of the first row
    to a multiple of the devices (each process builds only its rows)."""
    n = len(arrays[0])
    idx = np.pad(np.arange(n), (0, -n % mesh.shape[parallel.DATA_AXIS]))
    return parallel.global_rows(lambda r: tuple(np.asarray(x)[idx[r]] for x in arrays),
                                len(idx), mesh)


class _Evaluator:
    """Decodes and scores one batch of prompts: on one device, or split over ``mesh`` (the
    batch padded with copies of its first prompt to a multiple of the devices, each process
    building only its rows, the padding dropped from the results)."""

    def __init__(self, policy: PathPolicy, sims: dict[str, Any], genres: np.ndarray, k: int,
                 mask_target: bool, mesh: Any):
        graphdef, state = nnx.split(policy)
        self.k, self.mesh, self.n_items = k, mesh, policy.cfg.num_items
        if mesh is None:
            self.sims, self.state, self.genres = sims, state, jnp.asarray(genres)
        else:
            self.state, self.genres = parallel.replicate((state, np.asarray(genres)), mesh)
            split = {n: s if isinstance(s, tuple) else nnx.split(s) for n, s in sims.items()}
            self.sims = {n: (g, parallel.replicate(s, mesh)) for n, (g, s) in split.items()}
        self.greedy = jax.jit(lambda state, h, t: generate(
            nnx.merge(graphdef, state), h, t, None, greedy=True, mask_target=mask_target))
        # each prompt runs once per group of k sampled paths (rows p*k .. p*k+k-1)
        self.sample = jax.jit(lambda state, h, t, key: generate(
            nnx.merge(graphdef, state), h, t, key, mask_target=mask_target, group_size=k))

    def _put(self, history: np.ndarray, target: np.ndarray) -> tuple[jax.Array, jax.Array]:
        if self.mesh is None:
            return jnp.asarray(history), jnp.asarray(target)
        return _put_rows(self.mesh, history, target)

    def _host(self, x: Any) -> Any:
        return np.asarray(x) if self.mesh is None else parallel.to_host(x)

    def _score(self, h: jax.Array, t: jax.Array, path: jax.Array, lengths: jax.Array
               ) -> dict[str, dict[str, np.ndarray]]:
        """``{sim: {metric: [rows] host array}}`` (padding rows included)."""
        if self.mesh is None:
            return {n: score_generated(s, h, t, path, lengths, self.genres, self.n_items)
                    for n, s in self.sims.items()}
        return {n: parallel.to_host(_metrics_jit(g, s, h, t, path, lengths, self.genres,
                                                 self.n_items))
                for n, (g, s) in self.sims.items()}

    def batch(self, history: np.ndarray, target: np.ndarray, key: jax.Array
              ) -> dict[str, np.ndarray]:
        """Per-prompt values ``{"<sim>/<metric>@1" [, "@K", "diversity@K"]: [B]}``."""
        b, k = len(target), self.k
        h, t = self._put(history, target)
        out = self.greedy(self.state, h, t)
        res = {f"{n}/{m}@1": v[:b] for n, per in self._score(h, t, out.path, out.lengths).items()
               for m, v in per.items()}
        if k:
            s = self.sample(self.state, h, t, key)
            rows = h.shape[0]
            res["diversity@K"] = self._host(diversity(
                s.path.reshape(rows, k, -1), s.lengths.reshape(rows, k), self.n_items))[:b]
            per_sim = self._score(jnp.repeat(h, k, 0), jnp.repeat(t, k, 0), s.path, s.lengths)
            for n, per in per_sim.items():
                for m, v in per.items():
                    v = v.reshape(rows, k)[:b]
                    res[f"{n}/{m}@K"] = v.mean(1) if m in ("length", "has_target") else v.max(1)
        return res


def evaluate_policy(policy: PathPolicy, sims: dict[str, Any], history: np.ndarray,
                    target: np.ndarray, genres: np.ndarray, *, k: int = 0, seed: int = 0,
                    batch_size: int = 512, mask_target: bool = True,
                    per_prompt: bool = False, mesh: Any = None
                    ) -> dict[str, float] | tuple[dict, dict]:
    """Mean metrics @1 (greedy) and, with ``k > 0``, @K and diversity, for each simulator.

    Args:
      mask_target: keep the target out of the policy's action space (as in training).
      per_prompt: also return every prompt's values (for :func:`cluster_bootstrap`).
      mesh: optional data mesh: decoding and scoring run data-parallel, every batch split
        over the mesh (the last one padded with copies of its first prompt, whose results
        are dropped); each process builds only its prompts; the paths are those of one
        device (greedy, and sampled with the same keys: padding appended after the real
        prompts leaves their sampling noise unchanged), the metrics up to float rounding.

    Returns:
      ``{"<sim>/<metric>@1": value, "<sim>/<metric>@K": value, "diversity@K": value}``;
      with ``per_prompt``, ``(means, {name: [N] array})``.
    """
    ev = _Evaluator(policy, sims, genres, k, mask_target, mesh)
    acc: dict[str, list] = {}
    key = jax.random.key(seed)
    for sl in _batches(len(target), batch_size):
        key, sub = jax.random.split(key)
        for name, v in ev.batch(np.asarray(history[sl]), np.asarray(target[sl]), sub).items():
            acc.setdefault(name, []).append(v)
    values = {name: np.concatenate(v) for name, v in acc.items()}
    means = {name: float(np.mean(v)) for name, v in values.items()}
    return (means, values) if per_prompt else means


def stratified_prompts(users: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` prompts spread as evenly as possible over users.

    Every user's prompts are shuffled; the ``j``-th prompt of each user is taken before any
    user's ``(j+1)``-th, users in a random order within a round. So ``n >=`` the number of
    users takes at least one prompt of every user, and no user has more than one prompt more
    than another (unless it has no more prompts).

    Args:
      users: ``[N]`` the user of each prompt.
      n: how many to take (all when ``n <= 0`` or ``n >= N``).
      seed: shuffling seed.

    Returns:
      ``[min(n, N)]`` sorted prompt indices.
    """
    users = np.asarray(users)
    if n <= 0 or n >= len(users):
        return np.arange(len(users))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(users))
    u = users[perm]
    order = np.argsort(u, kind="stable")  # random order within each user
    su = u[order]
    first = np.r_[0, np.flatnonzero(su[1:] != su[:-1]) + 1]
    within = np.arange(len(su)) - np.repeat(first, np.diff(np.r_[first, len(su)]))
    user_rank = rng.permutation(int(su.max()) + 1)[su]  # random user order per round
    pick = np.lexsort((user_rank, within))[:n]
    return np.sort(perm[order[pick]])


def cluster_bootstrap(values: np.ndarray, clusters: np.ndarray, *, n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Percentile bootstrap interval of a mean, resampling whole clusters (users).

    Each replicate draws ``C`` clusters with replacement out of the ``C`` clusters present
    and averages all values of the drawn clusters (a cluster drawn twice counts twice), so
    prompts of one user vary together. For a paired comparison of two systems on the same
    prompts pass the per-prompt differences.

    Args:
      values: ``[N]`` per-prompt values.
      clusters: ``[N]`` cluster (user) id of each value.
      n_boot: replicates.
      seed: resampling seed.
      level: interval coverage.

    Returns:
      ``{"mean", "lo", "hi", "se", "clusters"}`` (``se``: the replicates' std).
    """
    v = np.asarray(values, np.float64)
    c = np.asarray(clusters)
    if v.shape != c.shape or v.ndim != 1 or not len(v):
        raise ValueError(f"values and clusters must be equal-length 1-d arrays: {v.shape}, "
                         f"{c.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    _, idx = np.unique(c, return_inverse=True)
    n_c = int(idx.max()) + 1
    sums = np.bincount(idx, weights=v, minlength=n_c)
    counts = np.bincount(idx, minlength=n_c).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_c, (n_boot, n_c))
    w = np.zeros((n_boot, n_c))
    np.add.at(w, (np.repeat(np.arange(n_boot), n_c), draws.ravel()), 1.0)
    reps = (w @ sums) / (w @ counts)
    a = (1 - level) / 2
    return {"mean": float(v.mean()), "lo": float(np.quantile(reps, a)),
            "hi": float(np.quantile(reps, 1 - a)), "se": float(reps.std(ddof=1)),
            "clusters": n_c}


def _extend_paths(sim: Any, history: jax.Array, target: jax.Array, max_len: int,
                  pick: Callable[..., jax.Array], top_k: int) -> tuple[jax.Array, jax.Array]:
    """Shared loop of the heuristic baselines: extend every path by one candidate per step
    (eager on one device, or traced under ``jit`` with the rows split over a mesh)."""
    model = sim if not isinstance(sim, tuple) else nnx.merge(*sim)
    emb = model.item_embeddings()
    b, h = history.shape
    seq = jnp.concatenate([history, jnp.zeros((b, max_len), history.dtype)], 1)
    for t in range(max_len):
        cur = seq[:, : h + t]
        seq_len = jnp.full((b,), h + t)
        logits = simlib.next_item_logits(sim, cur, seq_len)
        e_u = simlib.sequence_representation(sim, cur, seq_len)
        seen = jnp.zeros(logits.shape, bool).at[jnp.arange(b)[:, None], cur].set(True)
        seen = seen.at[jnp.arange(b), target].set(True)  # never the target
        logits = jnp.where(seen, -jnp.inf, logits)
        top = jax.lax.top_k(logits, top_k)[1]  # [B, k]
        seq = seq.at[:, h + t].set(pick(logits, top, e_u, emb, target).astype(seq.dtype))
    return seq[:, h:], jnp.full((b,), max_len, jnp.int32)


def _heuristic_paths(sim: Any, history: np.ndarray, target: np.ndarray, max_len: int,
                     pick: Callable[..., jax.Array], top_k: int, mesh: Any = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_extend_paths` of every prompt: eager on one device, or jitted with the
    prompts split over ``mesh`` (padded to a multiple of the devices, the padding dropped),
    every process getting all the paths."""
    history, n = np.asarray(history), len(target)
    if mesh is None:
        path, lengths = _extend_paths(sim, jnp.asarray(history), jnp.asarray(target), max_len,
                                      pick, top_k)
    else:
        graphdef, state = sim if isinstance(sim, tuple) else nnx.split(sim)
        fn = jax.jit(lambda st, h, t: _extend_paths((graphdef, st), h, t, max_len, pick,
                                                    top_k))
        out = fn(parallel.on_mesh(state, mesh), *_put_rows(mesh, history, target))
        path, lengths = (x[:n] for x in parallel.to_host(out))
    return np.asarray(path).astype(history.dtype), np.asarray(lengths)


def ipg_paths(sim: Any, history: np.ndarray, target: np.ndarray, max_len: int = 10,
              top_k: int = 20, gamma: float = 0.8, mesh: Any = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """IPG heuristic paths (see the module docstring); the prompts split over ``mesh`` when
    given."""

    def pick(logits, top, e_u, emb, tgt):
        p = jnp.take_along_axis(jax.nn.softmax(logits, -1), top, -1)
        e_t = emb[tgt][:, None]  # [B, 1, d]
        e_new = gamma * e_u[:, None] + (1 - gamma) * emb[top]
        gain = jnp.sum(e_t * e_new, -1) - jnp.sum(e_t[:, 0] * e_u, -1)[:, None]
        return jnp.take_along_axis(top, jnp.argmax(p * gain, -1)[:, None], -1)[:, 0]

    return _heuristic_paths(sim, history, target, max_len, pick, top_k, mesh)


def greedy_sequential_paths(sim: Any, history: np.ndarray, target: np.ndarray,
                            max_len: int = 10, top_k: int = 20, mesh: Any = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy sequential baseline paths (see the module docstring); the prompts split over
    ``mesh`` when given."""

    def pick(logits, top, e_u, emb, tgt):
        close = jnp.sum(emb[top] * emb[tgt][:, None], -1)
        return jnp.take_along_axis(top, jnp.argmax(close, -1)[:, None], -1)[:, 0]

    return _heuristic_paths(sim, history, target, max_len, pick, top_k, mesh)


def evaluate_paths(sims: dict[str, Any], history: np.ndarray, target: np.ndarray,
                   path: np.ndarray, lengths: np.ndarray, genres: np.ndarray,
                   num_items: int, per_prompt: bool = False, mesh: Any = None
                   ) -> dict[str, float] | tuple[dict, dict]:
    """Mean metrics of fixed paths (e.g. a heuristic's) for each simulator (and, with
    ``per_prompt``, every prompt's values). With ``mesh`` the prompts are split over its
    devices (padded to a multiple of the devices, the padding dropped)."""
    values, n = {}, len(target)
    if mesh is not None:
        rows = _put_rows(mesh, history, target, path, lengths)
        genres_in = parallel.replicate(np.asarray(genres), mesh)
    for name, sim in sims.items():
        if mesh is None:
            m = score_generated(sim, jnp.asarray(history), jnp.asarray(target),
                                jnp.asarray(path), jnp.asarray(lengths), jnp.asarray(genres),
                                num_items)
        else:
            graphdef, state = sim if isinstance(sim, tuple) else nnx.split(sim)
            m = {k: v[:n] for k, v in parallel.to_host(_metrics_jit(
                graphdef, parallel.on_mesh(state, mesh), *rows, genres_in, num_items)).items()}
        values.update({f"{name}/{k}@1": v for k, v in m.items()})
    means = {k: float(np.mean(v)) for k, v in values.items()}
    return (means, values) if per_prompt else means
