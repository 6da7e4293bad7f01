"""Registry of coreset selection methods: one signature, looked up by name.

Every selector is a function ``(features, n, seed, options) -> (indices, trace)``:

* ``features`` maps names to per-sample arrays over the pool (N rows) or the validation
  set (M rows): ``pool_emb [N, D]``, ``val_emb [M, D]``, ``grad [N]`` (GORACS's ĝ: the
  gradient norm of the last block's ``v_proj.lora_b``), ``grand [N]`` (GraNd's score),
  ``el2n [N]``, and optionally ``influence [N]`` (DEALRec), ``pool_labels [N]`` /
  ``val_labels [M]`` (the click task's labels);
* ``n`` is the budget, ``seed`` the seed of a randomised method;
* ``options`` is the method's sub-config as a mapping (``{}`` for methods without one);
* ``indices`` are pool rows, ``trace`` GORACS's POO after each accepted swap (``[]`` for
  the others).

A method table (``experiments/configs/goracs.py``) names, per method, the selector and
the sub-config it reads (:class:`Method`); :func:`run_method` resolves one entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from recrl.coreset import baselines
from recrl.coreset.select import select as goracs_select

Features = Mapping[str, np.ndarray]
SelectorFn = Callable[[Features, int, int, Mapping[str, Any]], tuple[np.ndarray, list]]


class Selector(NamedTuple):
    """A registered selection method."""

    name: str
    fn: SelectorFn
    deterministic: bool  # the selection does not depend on the seed (reused across seeds)


class Method(NamedTuple):
    """An entry of a pipeline's methods table: the selector and the sub-config it reads."""

    selector: str  # a name in SELECTORS
    options: str | None = None  # the config key of its options (None: it takes none)


SELECTORS: dict[str, Selector] = {}


def register(name: str, *, deterministic: bool = False) -> Callable[[SelectorFn], SelectorFn]:
    """Registers ``fn`` as the selector ``name`` (a decorator; the function is returned)."""
    def wrap(fn: SelectorFn) -> SelectorFn:
        if name in SELECTORS:
            raise ValueError(f"selector {name!r} is already registered")
        SELECTORS[name] = Selector(name, fn, deterministic)
        return fn
    return wrap


def get_selector(name: str) -> Selector:
    """The selector registered as ``name``; a clear error naming the known ones."""
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; known: {', '.join(sorted(SELECTORS))}")
    return SELECTORS[name]


def run_method(method: Method, features: Features, n: int, seed: int,
               options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One coreset of ``method``: ``{"indices", "seconds", "trace"}``."""
    fn = get_selector(method.selector).fn
    t0 = time.perf_counter()
    idx, trace = fn(features, n, seed, options or {})
    return {"indices": idx, "seconds": time.perf_counter() - t0, "trace": trace}


def _itra(features: Features, n: int, options: Mapping[str, Any], max_iters: int):
    out = goracs_select(features["pool_emb"], features["val_emb"], features["grad"], n,
                        lam=options["lam"], max_iters=max_iters, cut=options["cut"],
                        max_checks=options["max_checks"], epsilon=options["epsilon"],
                        threshold=options["threshold"], block=options.get("block", 1),
                        pool_labels=features.get("pool_labels"),
                        val_labels=features.get("val_labels"))
    return out.indices, out.trace.tolist()


@register("goracs", deterministic=True)
def goracs(features: Features, n: int, seed: int, options: Mapping[str, Any]):
    """GORACS (:func:`recrl.coreset.select`) with the ``select`` options (``lam`` resolved);
    label-enhanced when the features carry labels."""
    del seed
    return _itra(features, n, options, options["max_iters"])


@register("greedy", deterministic=True)
def greedy(features: Features, n: int, seed: int, options: Mapping[str, Any]):
    """GORACS's greedy start alone (no ITRA swaps)."""
    del seed
    return _itra(features, n, options, 0)


@register("random")
def random(features: Features, n: int, seed: int, options: Mapping[str, Any]):
    """A uniform random subset."""
    return baselines.random_subset(features["pool_emb"].shape[0], n, seed), []


@register("el2n", deterministic=True)
def el2n(features: Features, n: int, seed: int, options: Mapping[str, Any]):
    """The ``n`` highest EL2N scores."""
    return baselines.el2n(features["el2n"], n, seed), []


@register("grand", deterministic=True)
def grand(features: Features, n: int, seed: int, options: Mapping[str, Any]):
    """The ``n`` highest GraNd scores (``features["grand"]``)."""
    return baselines.grand(features["grand"], n, seed), []


@register("ccs")
def ccs(features: Features, n: int, seed: int, options: Mapping[str, Any]):
    """Coverage-centric stratified sampling over EL2N."""
    return baselines.ccs(features["el2n"], n, seed=seed), []


@register("kcenter")
def kcenter(features: Features, n: int, seed: int, options: Mapping[str, Any]):
    """k-center greedy on the pool embeddings."""
    return baselines.kcenter_greedy(features["pool_emb"], n, seed), []


@register("dealrec")
def dealrec(features: Features, n: int, seed: int, options: Mapping[str, Any]):
    """DEALRec: influence (when given) + ``gamma`` · effort (the GraNd score)."""
    return baselines.dealrec(features["grand"], n, influence=features.get("influence"),
                             gamma=options.get("gamma", 1.0), seed=seed), []


@register("d2pruning")
def d2pruning(features: Features, n: int, seed: int, options: Mapping[str, Any]):
    """D2 pruning: message passing over the embeddings' k-NN graph, EL2N as difficulty."""
    del seed
    return baselines.d2_pruning(features["pool_emb"], features["el2n"], n, k=options["k"],
                                gamma_forward=options["gamma_forward"],
                                gamma_reverse=options["gamma_reverse"]), []


@register("full", deterministic=True)
def full(features: Features, n: int, seed: int, options: Mapping[str, Any]):
    """The whole pool (the budget is ignored)."""
    return baselines.full_data(features["pool_emb"].shape[0]), []
