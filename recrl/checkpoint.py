"""Checkpoints behind one small interface (Orbax ``CheckpointManager``).

A checkpoint holds a pytree of arrays (``state``) and a JSON-able dict (``meta``: step,
config, frozen reward statistics, ...). Saves are atomic (Orbax writes to a temporary
directory and renames; it writes in a background thread, async checkpointing, and ``save``
waits for it), so a run killed mid-save keeps its previous checkpoint; the unfinished
temporary folder such a kill leaves is reported (``RuntimeWarning``) when the directory is
opened again and removed by the next save (not by opening: a reader must not remove the
folder of a save in progress). Saving a step that already exists
replaces it (idempotent re-save). Restoring the latest step falls back, with a warning, to
the newest checkpoint that can be read (a truncated ``_METADATA`` or a missing ``state``
folder in the newest one); see ``docs/reliability.md``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
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


class CheckpointError(RuntimeError):
    """No readable checkpoint: the message names the directory and why each step failed."""


# Orbax writes step N into "N.orbax-checkpoint-tmp" and renames it to "N" once complete
_UNFINISHED = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


def unfinished_saves(directory: str | os.PathLike) -> list[str]:
    """Names of the temporary folders of saves that never completed (a kill mid-save)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if _UNFINISHED.match(n))


class Checkpointer:
    """Save / restore / resume for one run directory.

    Example:
      >>> ckpt = Checkpointer("/tmp/run/ckpt", max_to_keep=2)  # doctest: +SKIP
      >>> ckpt.save(100, state, meta={"epoch": 3})  # doctest: +SKIP
      >>> state, meta = ckpt.restore(like=state)  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 3):
        self.directory = os.path.abspath(os.fspath(directory))
        self.restored_step: int | None = None
        self._unfinished = unfinished_saves(self.directory)
        if self._unfinished and jax.process_index() == 0:
            steps = ", ".join(_UNFINISHED.match(n).group(1) for n in self._unfinished)
            warnings.warn(f"{self.directory}: the save of step {steps} did not finish (the "
                          "run was stopped while saving, or another process is saving it now; "
                          f"{', '.join(self._unfinished)}); "
                          "it is ignored (the newest complete checkpoint is used) and "
                          "removed by the next save", RuntimeWarning, stacklevel=2)
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
        """Saves ``state`` (pytree of arrays) and ``meta`` (JSON) at ``step``; waits for it.

        A step that already exists is replaced (a re-save after a crash between the save and
        whatever followed it must not fail). The first save removes the temporary folders of
        saves that never finished (found when the directory was opened).
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta or {}))
        )
        if self._unfinished and jax.process_index() == 0:
            # the process that saves owns the directory: a reader opening it must not
            # remove the temporary folder of a save in progress elsewhere
            for name in self._unfinished:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        self._unfinished = []
        with _quiet():
            if step in self._manager.all_steps():
                self._manager.delete(step)
            self._manager.save(step, args=args, force=True)
            self._manager.wait_until_finished()

    def _restore_step(self, like: Any, step: int) -> tuple[Any, dict[str, Any]]:
        path = os.path.join(self.directory, str(step))
        for part in ("state", "meta"):
            if not os.path.isdir(os.path.join(path, part)):
                raise CheckpointError(f"checkpoint {path} has no {part!r} folder (incomplete "
                                      "or damaged)")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        with _quiet():
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        return out["state"], dict(out["meta"] or {})

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores ``(state, meta)`` at ``step`` into the structure of ``like``.

        With ``step=None`` the newest checkpoint that can be read is restored: an unreadable
        newer one (truncated metadata, missing folder) is skipped with a ``RuntimeWarning``.
        The step restored is kept in ``restored_step``.

        Raises:
          FileNotFoundError: there is no checkpoint (at that step) in the directory.
          CheckpointError: no checkpoint (or not the requested one) can be read; the message
            names each step tried and why it failed.
        """
        steps = self.all_steps()
        if step is not None and step not in steps:
            raise FileNotFoundError(f"no checkpoint at step {step} in {self.directory}"
                                    f" (saved steps: {steps or 'none'})")
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory} (saved steps: none)")
        failures = []
        for s in [step] if step is not None else steps[::-1]:
            try:
                out = self._restore_step(like, s)
            except Exception as e:
                failures.append(f"step {s}: {type(e).__name__}: {e}")
                if step is None:
                    warnings.warn(f"checkpoint {self.directory}/{s} cannot be read "
                                  f"({type(e).__name__}: {e}); trying an older one",
                                  RuntimeWarning, stacklevel=2)
                continue
            self.restored_step = s
            return out
        raise CheckpointError(f"no readable checkpoint in {self.directory}:\n  "
                              + "\n  ".join(failures))

    def close(self) -> None:
        """Flushes pending writes and releases the manager."""
        with _quiet():
            self._manager.wait_until_finished()
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
