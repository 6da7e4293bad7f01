"""MovieLens loaders: RecBole atomic files -> parquet cache -> HF ``datasets.Dataset``.

The fetched files (:mod:`recrl.data.fetch`) are tab-separated with a typed header
(``user_id:token item_id:token rating:float timestamp:float``) and may end lines in CRLF.
On first load they are parsed with :mod:`csv` (``QUOTE_NONE``: titles contain quotes),
validated row by row (ratings finite and within :data:`RATING_RANGE`, timestamps within
:data:`TIMESTAMP_RANGE`, UTF-8 text; a bad row is reported with file and line) and written
as parquet next to them (a temporary directory renamed into place under a file lock, so the
conversion is atomic and idempotent); later loads read the parquet. The cache is keyed on
the sources' sha256, so any edit of a source (even one that keeps its size) rebuilds it, and
so does an unreadable (truncated, corrupt) cache.

Ids are contiguous integers: users in order of first appearance in the ``.inter`` file,
items in ``.item`` file order restricted to items with at least one interaction. The raw
ids are kept in :attr:`MovieLens.user_ids` / :attr:`MovieLens.item_ids`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

try:
    import datasets
except ImportError as e:
    from recrl._extras import missing

    raise missing(__name__, "prorl", e) from e
import pyarrow as pa
import pyarrow.parquet as pq

from recrl.data import fetch

#: Datasets :func:`load_movielens` knows, with the prefix of their atomic files.
MOVIELENS = {"ml-1m": "ml-1m", "ml-100k": "ml-100k"}
#: Bump when the parquet layout changes: older caches are then rebuilt.
PARQUET_FORMAT = 2
#: Accepted ratings (MovieLens: 0.5 to 5 stars), inclusive.
RATING_RANGE = (0.0, 5.0)
#: Accepted timestamps in seconds (1970-01-01 to 2100-01-01), inclusive.
TIMESTAMP_RANGE = (0, 4_102_444_800)
#: Year stored for items whose release year is unknown.
UNKNOWN_YEAR = -1

_GENRE_COLUMNS = ("genre", "class")


class MalformedRowError(ValueError):
    """A row of an atomic file cannot be parsed; the message names the file and line."""

    def __init__(self, path: Path | str, line: int, why: str):
        self.path, self.line = Path(path), line
        super().__init__(f"{path}:{line}: {why}")


@dataclasses.dataclass(frozen=True)
class MovieLens:
    """One MovieLens-style dataset with contiguous integer ids.

    Attributes:
      name: dataset name (``"ml-1m"``, ``"ml-100k"``, ``"synthetic"``...).
      interactions: ``user`` (int32), ``item`` (int32), ``rating`` (float32),
        ``timestamp`` (int64, seconds), in source-file order.
      items: ``id`` (int32, equal to the row index), ``title`` (``"Title (Year)"``),
        ``year`` (int32, :data:`UNKNOWN_YEAR` if unknown), ``genres`` (list of str).
      user_ids: raw user id of each contiguous user id.
      item_ids: raw item id of each contiguous item id.
      genres: sorted genre vocabulary.
    """

    name: str
    interactions: datasets.Dataset
    items: datasets.Dataset
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    genres: tuple[str, ...]

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def column(self, name: str) -> np.ndarray:
        """An interactions column (``user``, ``item``, ``rating``, ``timestamp``) as numpy."""
        return arrow_column(self.interactions, name).to_numpy()

    def titles(self) -> np.ndarray:
        """``[num_items]`` object array of display titles, indexed by item id."""
        return np.asarray(arrow_column(self.items, "title").to_pylist(), dtype=object)

    def genre_masks(self, ignore: tuple[str, ...] = ()) -> np.ndarray:
        """Per-item genre bitmask: bit ``k`` set iff the item has genre ``genres[k]``.

        Args:
          ignore: genres left out of every mask (ProRL ignores ``"Drama"``).

        Returns:
          ``[num_items]`` uint64 array; ``masks[a] & masks[b] != 0`` iff items ``a`` and
          ``b`` share a genre outside ``ignore``.
        """
        if len(self.genres) > 64:
            raise ValueError(f"{len(self.genres)} genres do not fit a 64-bit mask")
        bit = {g: np.uint64(1) << np.uint64(k) for k, g in enumerate(self.genres)
               if g not in ignore}
        masks = np.zeros(self.num_items, np.uint64)
        for i, gs in enumerate(arrow_column(self.items, "genres").to_pylist()):
            for g in gs:
                masks[i] |= bit.get(g, np.uint64(0))
        return masks


def arrow_column(ds: datasets.Dataset, name: str) -> pa.ChunkedArray:
    """One column of a dataset as arrow, honouring ``select`` / ``shuffle`` (fast, no copy).

    ``ds.data`` ignores a dataset's indices mapping and ``np.asarray(ds[name])`` iterates
    rows in Python (minutes for ML-1M); this does neither.
    """
    return ds.with_format("arrow", columns=[name])[:].column(name)


def from_arrays(
    name: str,
    *,
    user: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    timestamp: np.ndarray,
    titles: list[str],
    years: np.ndarray,
    item_genres: list[list[str]],
    user_ids: list[str],
    item_ids: list[str],
) -> MovieLens:
    """Builds a :class:`MovieLens` from contiguous-id arrays (used by loaders and generators).

    Args:
      name: dataset name.
      user, item, rating, timestamp: ``[n]`` interaction columns (ids already contiguous).
      titles, years, item_genres: per-item display title, year and genre list.
      user_ids, item_ids: raw ids of the contiguous ids.

    Returns:
      The dataset bundle.
    """
    inter = pa.table({
        "user": pa.array(np.asarray(user, np.int32)),
        "item": pa.array(np.asarray(item, np.int32)),
        "rating": pa.array(np.asarray(rating, np.float32)),
        "timestamp": pa.array(np.asarray(timestamp, np.int64)),
    })
    items = pa.table({
        "id": pa.array(np.arange(len(titles), dtype=np.int32)),
        "title": pa.array(titles, pa.string()),
        "year": pa.array(np.asarray(years, np.int32)),
        "genres": pa.array(item_genres, pa.list_(pa.string())),
    })
    genres = tuple(sorted({g for gs in item_genres for g in gs}))
    return MovieLens(name, datasets.Dataset(inter), datasets.Dataset(items),
                     tuple(user_ids), tuple(item_ids), genres)


# ---------------------------------------------------------------------------------------
# Atomic-file parsing.


def _read_atomic(path: Path) -> tuple[list[str], list[str], list[list[str]], list[int]]:
    """Header field names and types (``token``, ``float``...), the rows, their line numbers.

    Checks every row's width; blank lines are skipped.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    _check_utf8(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if not header:
            raise MalformedRowError(path, 1, "empty file: expected a typed header")
        names = [h.split(":", 1)[0] for h in header]
        types = [h.split(":", 1)[1] if ":" in h else "token" for h in header]
        rows, lines = [], []
        for row in reader:
            if len(row) != len(names):
                if not row:  # a blank line
                    continue
                raise MalformedRowError(
                    path, reader.line_num,
                    f"expected {len(names)} tab-separated fields ({', '.join(names)}), "
                    f"got {len(row)}")
            rows.append(row)
            lines.append(reader.line_num)
    return names, types, rows, lines


def _check_utf8(path: Path) -> None:
    """Raises :class:`MalformedRowError` at the first line that is not valid UTF-8."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise MalformedRowError(path, line, f"byte 0x{data[e.start]:02x} at column {col} is "
                                "not valid UTF-8 (the file must be UTF-8 encoded)") from None


def _check_range(values: np.ndarray, lines: list[int], path: Path, what: str,
                 lo: float, hi: float) -> None:
    """Raises :class:`MalformedRowError` at the first non-finite or out-of-range value."""
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= lo) & (values <= hi)))
    if len(bad):
        v = float(values[bad[0]])
        why = "is not finite" if not np.isfinite(v) else f"is outside [{lo:g}, {hi:g}]"
        raise MalformedRowError(path, lines[bad[0]], f"{what} {v!r} {why}")


def _col(names: list[str], path: Path, *wanted: str) -> int:
    for w in wanted:
        if w in names:
            return names.index(w)
    raise MalformedRowError(path, 1, f"header has no {' or '.join(wanted)} field: {names}")


def _numbers(rows: list[list[str]], lines: list[int], col: int, path: Path,
             what: str) -> np.ndarray:
    """A float column (vectorised); on a bad value, finds and names its line."""
    values = [r[col] for r in rows]
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        pass
    for v, line in zip(values, lines, strict=True):
        try:
            float(v)
        except ValueError:
            raise MalformedRowError(path, line, f"{what} {v!r} is not a number") from None
    raise AssertionError("unreachable")


def _parse_items(item_path: Path) -> tuple[dict[str, int], list[tuple]]:
    """``{prefix}.item``: raw id -> row index, and ``(raw id, title, year, genres)`` rows."""
    names, types, rows, lines = _read_atomic(item_path)
    c_id, c_title = _col(names, item_path, "item_id"), _col(names, item_path, "movie_title")
    c_year = _col(names, item_path, "release_year")
    c_genre = _col(names, item_path, *_GENRE_COLUMNS)
    strict_year = types[c_year] == "float"  # a float column must parse; a token may not
    raw_items: dict[str, int] = {}
    item_rows = []
    for row, line in zip(rows, lines, strict=True):
        if not row[c_id]:
            raise MalformedRowError(item_path, line, "empty item_id")
        if row[c_id] in raw_items:
            raise MalformedRowError(item_path, line, f"duplicate item_id {row[c_id]!r}")
        year = row[c_year].strip()
        try:
            year_int = int(float(year)) if year else UNKNOWN_YEAR
        except ValueError:
            if strict_year:
                raise MalformedRowError(item_path, line, f"release_year {year!r} is not a "
                                        "number") from None
            year_int = UNKNOWN_YEAR  # a token column ("unkonwn", "V" in ML-100K)
        raw_items[row[c_id]] = len(item_rows)
        item_rows.append((row[c_id], row[c_title], year_int, row[c_genre].split()))
    return raw_items, item_rows


def _parse_interactions(inter_path: Path, raw_items: dict[str, int], item_file: str
                        ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``{prefix}.inter``: raw user ids, item row indices, ratings and timestamps (checked)."""
    names, _, rows, lines = _read_atomic(inter_path)
    c_user, c_item = _col(names, inter_path, "user_id"), _col(names, inter_path, "item_id")
    c_rating, c_time = _col(names, inter_path, "rating"), _col(names, inter_path, "timestamp")
    users_raw = [r[c_user] for r in rows]
    file_item = np.asarray([raw_items.get(r[c_item], -1) for r in rows], np.int64)
    bad = np.flatnonzero((file_item < 0) | (np.asarray(users_raw, dtype=object) == ""))
    if len(bad):
        row, line = rows[bad[0]], lines[bad[0]]
        why = ("empty user_id" if not row[c_user]
               else f"item_id {row[c_item]!r} is not in {item_file}")
        raise MalformedRowError(inter_path, line, why)
    rating = _numbers(rows, lines, c_rating, inter_path, "rating")
    timestamp = _numbers(rows, lines, c_time, inter_path, "timestamp")
    _check_range(rating, lines, inter_path, "rating", *RATING_RANGE)
    _check_range(timestamp, lines, inter_path, "timestamp", *TIMESTAMP_RANGE)
    return users_raw, file_item, rating, timestamp


def _parse(directory: Path, prefix: str) -> dict:
    """Parses ``{prefix}.inter`` and ``{prefix}.item`` into contiguous-id columns."""
    item_path = directory / f"{prefix}.item"
    raw_items, item_rows = _parse_items(item_path)
    users_raw, file_item, rating, timestamp = _parse_interactions(
        directory / f"{prefix}.inter", raw_items, item_path.name)

    # Users by first appearance; items in .item order, only those with interactions.
    uniq, first, user = np.unique(np.asarray(users_raw, dtype=object), return_index=True,
                                  return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    used = np.flatnonzero(np.bincount(file_item, minlength=len(item_rows)))
    item_map = np.full(len(item_rows), -1, np.int64)
    item_map[used] = np.arange(len(used))
    kept = [item_rows[i] for i in used]
    return dict(
        user=rank[user], item=item_map[file_item], rating=rating,
        timestamp=np.round(timestamp).astype(np.int64),
        titles=[f"{t} ({y})" if y != UNKNOWN_YEAR else t for _, t, y, _ in kept],
        years=np.asarray([y for _, _, y, _ in kept], np.int32),
        item_genres=[g for *_, g in kept],
        user_ids=[str(u) for u in uniq[order]], item_ids=[r for r, *_ in kept],
    )


# ---------------------------------------------------------------------------------------
# Parquet cache.


def _sources(directory: Path, prefix: str) -> dict[str, str]:
    """sha256 of each source file (the cache key)."""
    return {n: fetch.sha256_of(directory / n) for n in (f"{prefix}.inter", f"{prefix}.item")}


def _write_parquet(ml: MovieLens, cache: Path, sources: dict[str, str]) -> None:
    """Writes the parquet cache into a temporary directory, then renames it into place."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        pq.write_table(ml.interactions.with_format("arrow")[:], tmp / "interactions.parquet")
        items = ml.items.with_format("arrow")[:].append_column(
            "raw_id", pa.array(ml.item_ids, pa.string()))
        pq.write_table(items, tmp / "items.parquet")
        pq.write_table(pa.table({"raw_id": pa.array(ml.user_ids, pa.string())}),
                       tmp / "users.parquet")
        meta = {"format": PARQUET_FORMAT, "name": ml.name, "sources": sources}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        with fetch.file_lock(cache):  # one writer at a time; readers see old or new
            if cache.exists():  # stale (older format, changed sources or corrupt)
                old = Path(tempfile.mkdtemp(prefix=f".{cache.name}.old.", dir=cache.parent))
                os.replace(cache, old / "cache")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_parquet(cache: Path, name: str, sources: dict[str, str]) -> MovieLens | None:
    """The cached dataset; None when absent or stale; a corrupt cache warns and is None."""
    try:
        meta = json.loads((cache / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != PARQUET_FORMAT or meta.get("sources") != sources:
        return None
    try:
        return _read_tables(cache, name)
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        warnings.warn(f"the parquet cache {cache} is unreadable ({type(e).__name__}: {e}); "
                      "rebuilding it from the source files", RuntimeWarning, stacklevel=3)
        return None


def _read_tables(cache: Path, name: str) -> MovieLens:
    items = pq.read_table(cache / "items.parquet")
    item_ids = tuple(items.column("raw_id").to_pylist())
    items = items.drop_columns(["raw_id"])
    user_ids = tuple(pq.read_table(cache / "users.parquet").column("raw_id").to_pylist())
    genres = tuple(sorted({g for gs in items.column("genres").to_pylist() for g in gs}))
    return MovieLens(name, datasets.Dataset(pq.read_table(cache / "interactions.parquet")),
                     datasets.Dataset(items), user_ids, item_ids, genres)


def load_atomic(directory: str | Path, prefix: str, *, name: str | None = None,
                cache: str | Path | None = None) -> MovieLens:
    """Loads ``{prefix}.inter`` / ``{prefix}.item`` from a directory, through a parquet cache.

    Args:
      directory: folder holding the RecBole atomic files.
      prefix: file-name prefix (``"ml-1m"``).
      name: dataset name recorded in the result (default ``prefix``).
      cache: parquet cache folder (default ``directory / f"{prefix}.parquet"``). It is
        (re)built when missing, of an older format, unreadable, or when a source's sha256
        changed.

    Returns:
      The :class:`MovieLens` bundle.

    Raises:
      MalformedRowError: a row cannot be parsed (the message names file and line).
      FileNotFoundError: an atomic file is missing.
    """
    directory = Path(directory)
    cache = Path(cache) if cache is not None else directory / f"{prefix}.parquet"
    for n in (f"{prefix}.inter", f"{prefix}.item"):
        if not (directory / n).exists():
            raise FileNotFoundError(f"{directory / n} does not exist")
    sources = _sources(directory, prefix)
    ml = _read_parquet(cache, name or prefix, sources)
    if ml is None:
        ml = from_arrays(name or prefix, **_parse(directory, prefix))
        _write_parquet(ml, cache, sources)
    return ml


def load_movielens(name: str, *, root: str | Path | None = None,
                   download: bool = False) -> MovieLens:
    """Loads a fetched MovieLens dataset (converted to parquet on first use).

    Args:
      name: ``"ml-1m"`` or ``"ml-100k"``.
      root: cache root (default :func:`recrl.data.fetch.cache_root`, ``$RECRL_DATA``).
      download: fetch the dataset when it is not cached (otherwise raise).

    Returns:
      The :class:`MovieLens` bundle.

    Raises:
      ValueError: unknown dataset name.
      FileNotFoundError: not fetched; the message holds the exact fetch command.
      recrl.data.fetch.FetchError: ``download=True`` and the fetch (or its hash check) failed.
      MalformedRowError: a row cannot be parsed.

    Example::

        ml = load_movielens("ml-1m")
        ml.interactions  # Dataset({features: ['user', 'item', 'rating', 'timestamp'], ...})
    """
    if name not in MOVIELENS:
        raise ValueError(f"unknown MovieLens dataset {name!r}; known: {', '.join(MOVIELENS)}")
    root = Path(root) if root is not None else None
    if download:
        fetch.fetch(name, root)
    return load_atomic(fetch.require(name, root), MOVIELENS[name], name=name)
