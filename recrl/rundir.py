"""Run-directory bookkeeping: config fingerprints of cached stages, per-step logs.

Launchers cache their stages in ``--out_dir`` (trained simulators, a pretrained policy,
RL runs, ...) and reuse them on a rerun. :func:`guard_stages` makes that reuse safe: it
records which config values each stage was produced with (``fingerprints.json``) and, on a
rerun whose config changed a value a cached stage depends on, stops with a message naming
the stage and the changed keys (or, with ``retrain=True``, deletes that stage so it is
produced again). Old results are never relabelled with a new config.

:class:`MetricsLog` writes ``metrics.jsonl`` one flushed line per step and can drop the
lines of steps that a resumed run is about to replay; :func:`summary_writer` opens a
TensorBoard writer that hides the events of replayed steps (``purge_step``). Flush each
step with ``writer.flush()``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

FINGERPRINTS = "fingerprints.json"


class StageMismatchError(RuntimeError):
    """A cached stage was produced with a different config."""


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def _to_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def stage_config(cfg: Any, deps: Iterable[str]) -> dict[str, Any]:
    """The flattened config values (``{"rl.lr": 3e-4, ...}``) under the keys or dotted
    prefixes ``deps`` of ``cfg`` (a ``ConfigDict`` or dict)."""
    flat = json.loads(json.dumps(_flatten(_to_dict(cfg)), default=str))
    deps = tuple(deps)

    def wanted(key: str) -> bool:
        return any(key == d or key.startswith(d + ".") for d in deps)

    return {k: v for k, v in sorted(flat.items()) if wanted(k)}


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    missing = "(unset)"
    return [f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}" for k in keys
            if old.get(k, missing) != new.get(k, missing)]


def _exists(out: Path, pattern: str) -> list[Path]:
    return [Path(p) for p in glob.glob(str(out / pattern))]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def guard_stages(out: str | os.PathLike, cfg: Any, stages: Mapping[str, Iterable[str]],
                 free: Iterable[str], *, retrain: bool = False) -> dict[str, list[str]]:
    """Checks the cached stages in ``out`` against ``cfg``; records the new fingerprints.

    Args:
      out: the run directory.
      cfg: the config about to run.
      stages: ``{path or glob relative to out: top-level config keys it depends on}``.
      free: config keys no stage depends on (labels, seeds, device counts...). A top-level
        key in neither ``free`` nor any stage's keys counts as a dependency of every stage
        (a key added later is assumed to matter until declared otherwise).
      retrain: delete the stages whose config changed instead of stopping.

    Returns:
      ``{stage: changes}`` for the stages deleted (with ``retrain``).

    Raises:
      StageMismatchError: a cached stage was produced with other values of keys it depends
        on; the message names the stage, each changed key (old -> new) and the two ways on.
    """
    out = Path(out)
    free = set(free)
    known = free | {d.split(".")[0] for deps in stages.values() for d in deps}
    extra = [k for k in _to_dict(cfg) if k not in known]
    new = {s: stage_config(cfg, [*deps, *extra]) for s, deps in stages.items()}
    path = out / FINGERPRINTS
    record: dict[str, Any] = {}
    if path.exists():
        try:
            record = json.loads(path.read_text())
        except ValueError:
            warnings.warn(f"{path} is unreadable; rebuilding it from config.json",
                          RuntimeWarning, stacklevel=2)
    legacy = None
    if (out / "config.json").exists():
        try:
            legacy = json.loads((out / "config.json").read_text())
        except ValueError:
            legacy = None
    changed: dict[str, list[str]] = {}
    for stage, deps in stages.items():
        if not _exists(out, stage):
            continue
        if stage in record:
            old = record[stage]
        elif legacy is not None:  # a run directory from before fingerprints
            old = stage_config(legacy, [*deps, *extra])
        else:
            warnings.warn(f"{out / stage} has no recorded config; assuming it matches",
                          RuntimeWarning, stacklevel=2)
            continue
        # keys declared free since the record was written no longer count
        old = {k: v for k, v in old.items() if k.split(".")[0] not in free}
        diff = _diff(old, new[stage])
        if diff:
            changed[stage] = diff
    if changed and not retrain:
        lines = [f"  {s}: " + "; ".join(d) for s, d in changed.items()]
        raise StageMismatchError(
            f"{out} holds stages produced with another config:\n" + "\n".join(lines)
            + "\nUse a new --out_dir, revert these values, or pass "
            "--config.retrain_changed=True to delete and retrain the changed stages.")
    for stage in changed:
        for p in _exists(out, stage):
            _remove(p)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return changed


class MetricsLog:
    """``metrics.jsonl``: one JSON line per record, flushed to the OS on every write.

    Example::

        with MetricsLog(out / "metrics.jsonl") as log:
            log.drop(lambda r: r["run"] == run and r["epoch"] > restored_epoch)
            log.write({"run": run, "epoch": 1, "step": 0, "loss": 0.3})
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        """``enabled=False`` (processes other than the writer): every call is a no-op."""
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            self._f = open(os.devnull, "a", encoding="utf-8")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: Mapping[str, Any] | str) -> None:
        """Appends one record (a dict, or an already-encoded JSON line) and flushes."""
        line = record if isinstance(record, str) else json.dumps(dict(record))
        self._f.write(line.rstrip("\n") + "\n")
        self._f.flush()

    def drop(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        """Removes the records for which ``predicate`` is true (and a torn last line left by a
        kill mid-write); the file is replaced atomically. Returns how many lines went."""
        if not self.enabled:
            return 0
        self._f.close()
        kept, dropped = [], 0
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    dropped += 1
                    continue
                if predicate(rec):
                    dropped += 1
                else:
                    kept.append(line)
        if dropped:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        self._f = open(self.path, "a", encoding="utf-8")
        return dropped

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summary_writer(logdir: str | os.PathLike, purge_step: int | None = None) -> Any:
    """A tensorboardX ``SummaryWriter``; ``purge_step`` hides earlier events at steps >=
    ``purge_step`` (those a resumed run replays). Call ``flush()`` after each step."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(logdir), purge_step=purge_step, flush_secs=10)
