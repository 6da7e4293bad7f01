"""Argument checks shared by the estimators.

Shape, rank and dtype checks are chex assertions: they run once at trace time (also under
``jit``) and raise ``ValueError`` (chex's ``exception_type``) with chex's message and one
naming the argument. Value checks cannot run at trace time: finiteness checks run eagerly
when an argument is a concrete array (a plain call outside ``jit``) and, inside a traced
function, only under :func:`checked`, which functionalises them with
``jax.experimental.checkify`` so that a NaN reward is reported instead of propagated.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

_CHECK_TRACED = contextvars.ContextVar("recrl_check_traced", default=False)


def _array(x: Any) -> Any:
    """``x`` itself when it has a shape and dtype (array, tracer), else ``np.asarray(x)``."""
    return x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)


def assert_shape(x: jax.typing.ArrayLike, name: str, expected: Sequence[Any], spec: str) -> None:
    """``chex.assert_shape`` naming the argument: ``ValueError`` unless ``x`` has shape
    ``expected`` (chex's spec: ``...`` any leading axes, ``None`` any size); ``spec`` is the
    expected shape in the glossary's letters, e.g. ``"[..., G, T]"``."""
    chex.assert_shape(_array(x), tuple(expected),
                      custom_message=f"`{name}` must have shape {spec}",
                      exception_type=ValueError)


def assert_equal_shape(**arrays: jax.typing.ArrayLike | None) -> None:
    """``chex.assert_equal_shape`` over the given (non-None) arguments, naming them."""
    named = {k: _array(v) for k, v in arrays.items() if v is not None}
    if len(named) > 1:
        names = ", ".join(f"`{k}`" for k in named)
        chex.assert_equal_shape(list(named.values()),
                                custom_message=f"{names} must have one shape",
                                exception_type=ValueError)


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
