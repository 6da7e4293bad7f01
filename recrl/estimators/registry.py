"""Step-level advantage estimators by name.

Every registered estimator has one signature, ``fn(step_rewards, item_mask, eos_mask) ->
[..., G, T]``, and is registered on its own definition with
:func:`register_advantage_estimator`. The registry knows estimators only: what a pipeline
does around them (reward centring, loss aggregation, a critic) is its own methods table,
e.g. ``experiments/configs/prorl.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

StepAdvantageFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
_REGISTRY: dict[str, StepAdvantageFn] = {}


def register_advantage_estimator(name: str) -> Callable[[StepAdvantageFn], StepAdvantageFn]:
    """Decorator that registers a step-level advantage estimator under ``name``."""

    def deco(fn: StepAdvantageFn) -> StepAdvantageFn:
        if name in _REGISTRY:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def get_advantage_estimator(name: str) -> StepAdvantageFn:
    """Looks up a registered estimator; unknown names list the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown advantage estimator {name!r}; known: {known}") from None


def advantage_estimator_names() -> list[str]:
    """Names of the registered advantage estimators."""
    return sorted(_REGISTRY)
