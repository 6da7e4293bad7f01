"""Argument checks shared by the estimators.

Shape checks run at trace time and raise ``ValueError`` naming the argument. Finiteness
checks run eagerly when an argument is a concrete array (a plain call outside ``jit``) and,
inside a traced function, only under :func:`checked`, which functionalises them with
``jax.experimental.checkify`` so that a NaN reward is reported instead of propagated.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

_CHECK_TRACED = contextvars.ContextVar("recrl_check_traced", default=False)


def check_rank(x: jax.typing.ArrayLike, name: str, ranks: int | Sequence[int]) -> None:
    """Raises ``ValueError`` unless ``x`` has one of the given ranks."""
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    ndim = np.ndim(x)
    if ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"`{name}` must have rank {want}, got shape {np.shape(x)}")


def check_min_rank(x: jax.typing.ArrayLike, name: str, rank: int) -> None:
    """Raises ``ValueError`` unless ``x`` has at least ``rank`` dimensions."""
    if np.ndim(x) < rank:
        raise ValueError(f"`{name}` must have rank >= {rank}, got shape {np.shape(x)}")


def check_same_shape(**arrays: jax.typing.ArrayLike | None) -> None:
    """Raises ``ValueError`` unless all given (non-None) arrays share one shape."""
    named = [(k, np.shape(v)) for k, v in arrays.items() if v is not None]
    if not named:
        return
    ref_name, ref = named[0]
    for k, s in named[1:]:
        if s != ref:
            raise ValueError(
                f"`{k}` has shape {s} but `{ref_name}` has shape {ref}; they must match"
            )


def check_shape(x: jax.typing.ArrayLike, name: str, shape: tuple[int, ...], what: str) -> None:
    """Raises ``ValueError`` unless ``np.shape(x) == shape``; ``what`` explains the expectation."""
    if np.shape(x) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {tuple(shape)} ({what}), got {np.shape(x)}")


def check_finite(x: jax.typing.ArrayLike, name: str) -> None:
    """Reports NaN/inf in ``x``.

    Concrete arrays are checked now (``ValueError`` naming the argument and the first bad
    index). Traced arrays are checked only inside :func:`checked`; under a plain ``jit`` this
    is a no-op so the estimators stay free of host callbacks on the hot path.
    """
    if isinstance(x, jax.core.Tracer):
        if _CHECK_TRACED.get():
            checkify.check(jnp.all(jnp.isfinite(x)), f"`{name}` contains NaN or inf")
        return
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.inexact):
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{name}` contains {int(bad.sum())} NaN/inf value(s); first at index {first}"
        )


def check_positive(x: jax.typing.ArrayLike, name: str) -> None:
    """Reports values of ``x`` that are not finite and > 0 (e.g. a temperature).

    Python numbers and concrete arrays are checked now (``ValueError`` naming the argument);
    traced values only inside :func:`checked` (a no-op under a plain ``jit``, like
    :func:`check_finite`).
    """
    if isinstance(x, jax.core.Tracer):
        if _CHECK_TRACED.get():
            checkify.check(jnp.all(jnp.isfinite(x) & (x > 0)), f"`{name}` must be > 0")
        return
    arr = np.asarray(x, np.float64)
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        raise ValueError(f"`{name}` must be > 0 (and finite), got {arr.tolist()}")


def checked(fn: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
    """Returns a jitted ``fn`` whose NaN/inf argument checks are live.

    Example:
      >>> import jax.numpy as jnp
      >>> from recrl import estimators as est
      >>> f = est.checked(est.reward_to_go)
      >>> f(jnp.array([1.0, jnp.nan]), jnp.ones(2))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ValueError: `rewards` contains NaN or inf ...

    Args:
      fn: any function that calls the recrl estimators.
      **jit_kwargs: forwarded to ``jax.jit`` (e.g. ``static_argnames``).

    Returns:
      A function with ``fn``'s signature that raises ``ValueError`` when a check fails.
    """

    def traced(*args: Any, **kwargs: Any) -> Any:
        token = _CHECK_TRACED.set(True)
        try:
            return fn(*args, **kwargs)
        finally:
            _CHECK_TRACED.reset(token)

    jitted = jax.jit(checkify.checkify(traced, errors=checkify.user_checks), **jit_kwargs)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        err, out = jitted(*args, **kwargs)
        msg = err.get()
        if msg is not None:
            raise ValueError(msg)
        return out

    return wrapper
