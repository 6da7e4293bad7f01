"""Checkpoints behind one small interface (Orbax ``CheckpointManager``).

A checkpoint holds a pytree of arrays (``state``) and a JSON-able dict (``meta``: step,
config, frozen reward statistics, ...). Saves are atomic (Orbax writes to a temporary
directory and renames), so a run killed mid-save keeps its previous checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Orbax logs every save phase at INFO; keep launcher logs readable."""
    level = logging.get_verbosity()
    logging.set_verbosity(min(level, logging.WARNING))  # absl: larger = more verbose
    try:
        yield
    finally:
        logging.set_verbosity(level)


class Checkpointer:
    """Save / restore / resume for one run directory.

    Example:
      >>> ckpt = Checkpointer("/tmp/run/ckpt", max_to_keep=2)  # doctest: +SKIP
      >>> ckpt.save(100, state, meta={"epoch": 3})  # doctest: +SKIP
      >>> state, meta = ckpt.restore(like=state)  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 3):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        with _quiet():
            self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        with _quiet():
            return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None:
        """Saves ``state`` (pytree of arrays) and ``meta`` (JSON) at ``step``; waits for it."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta or {}))
        )
        with _quiet():
            self._manager.save(step, args=args, force=True)
            self._manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores ``(state, meta)`` at ``step`` (default: latest) into the structure of ``like``.

        Raises:
          FileNotFoundError: there is no checkpoint (at that step) in the directory.
        """
        steps = self.all_steps()
        if step is None:
            step = steps[-1] if steps else None
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"no checkpoint{'' if step is None else f' at step {step}'} in {self.directory}"
                f" (saved steps: {steps or 'none'})"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        with _quiet():
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        return out["state"], dict(out["meta"] or {})

    def close(self) -> None:
        """Flushes pending writes and releases the manager."""
        with _quiet():
            self._manager.wait_until_finished()
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
