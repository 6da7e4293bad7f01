r"""Synthetic MovieLens-like data with genre-drifting user tastes (same schema as the loaders).

For tests and for anyone without the real data. Each user has a taste over genres whose
logits follow a Gaussian random walk along the user's sequence:

.. math:: z_{u,0} \sim \mathcal N(0, \sigma_0^2 I), \quad
          z_{u,t+1} = z_{u,t} + \delta\,\epsilon_t, \quad
          g_t \sim \mathrm{softmax}(z_{u,t}),

and the ``t``-th item is drawn by popularity among the user's unseen items of genre
``g_t`` (any unseen item if none is left). Consecutive items therefore tend to share a
genre, with cuts where the taste moves on: the structure ProRL's path mining looks for.
Ratings are higher for items of currently preferred genres; timestamps increase with some
ties (same second), as in MovieLens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recrl.data.movielens import UNKNOWN_YEAR, MovieLens, arrow_column, from_arrays

#: Genre names used by the generator (a subset of MovieLens genres, with "Drama").
SYNTHETIC_GENRES = ("Drama", "Comedy", "Action", "Thriller", "Romance", "Adventure",
                    "Sci-Fi", "Horror", "Crime", "Children's", "War", "Musical")


def synthetic_movielens(
    num_users: int = 100,
    num_items: int = 300,
    *,
    num_genres: int = 8,
    min_len: int = 25,
    max_len: int = 80,
    drift: float = 0.4,
    taste_scale: float = 2.0,
    drama_rate: float = 0.35,
    drama_only_rate: float = 0.1,
    tie_rate: float = 0.2,
    seed: int = 0,
    name: str = "synthetic",
) -> MovieLens:
    """Generates a MovieLens-schema dataset whose users' genre tastes drift.

    Args:
      num_users: users; each gets between ``min_len`` and ``max_len`` interactions.
      num_items: catalogue size (must exceed ``max_len``).
      num_genres: genres, taken from :data:`SYNTHETIC_GENRES` (``"Drama"`` first).
      min_len, max_len: sequence-length range (inclusive).
      drift: step size ``δ`` of the taste random walk.
      taste_scale: ``σ0``, spread of the initial taste logits (larger = more focused).
      drama_rate: probability that an item also gets "Drama" (MovieLens-like: Drama is
        on many films, which is why ProRL ignores it).
      drama_only_rate: probability that an item's only genre is "Drama".
      tie_rate: probability that an interaction has the previous one's timestamp.
      seed: random seed (the output is a deterministic function of all arguments).
      name: dataset name.

    Returns:
      A :class:`~recrl.data.movielens.MovieLens`; interactions are in a shuffled order
      (like a file that is not sorted by time). Items that nobody picked are dropped, so
      ``num_items`` of the result may be smaller than requested.
    """
    if not 2 <= num_genres <= len(SYNTHETIC_GENRES):
        raise ValueError(f"num_genres must be in [2, {len(SYNTHETIC_GENRES)}]")
    if not 1 <= min_len <= max_len < num_items:
        raise ValueError("need 1 <= min_len <= max_len < num_items")
    rng = np.random.default_rng(seed)
    popularity = 1.0 / (1.0 + rng.permutation(num_items)) ** 0.7
    has = _item_genres(rng, num_items, num_genres, drama_rate, drama_only_rate)
    lengths = rng.integers(min_len, max_len + 1, size=num_users)
    seq, rating, seen = _user_sequences(rng, has, popularity, lengths, max_len, taste_scale,
                                        drift)
    return _assemble(rng, name, SYNTHETIC_GENRES[:num_genres], has, seq, rating, seen,
                     lengths, tie_rate)


def _item_genres(rng: np.random.Generator, num_items: int, num_genres: int,
                 drama_rate: float, drama_only_rate: float) -> np.ndarray:
    """``[I, num_genres]`` bool: Drama alone (``drama_only_rate``), else 1-3 other genres
    plus Drama with probability ``drama_rate``."""
    has = np.zeros((num_items, num_genres), bool)
    for i in range(num_items):
        k = 1 + rng.binomial(2, 0.3)
        has[i, 1 + rng.choice(num_genres - 1, size=min(k, num_genres - 1), replace=False)] = True
    has[:, 0] |= rng.random(num_items) < drama_rate
    drama_only = rng.random(num_items) < drama_only_rate
    has[drama_only] = False
    has[drama_only, 0] = True
    return has


def _pick_items(rng: np.random.Generator, act: np.ndarray, g: np.ndarray,
                by_genre: list[np.ndarray], cum: list[np.ndarray], seen: np.ndarray
                ) -> np.ndarray:
    """One unseen item per active user ``act`` from its drawn genre ``g``."""
    pick = np.full(len(act), -1)
    for gg in range(len(by_genre)):
        rows = np.flatnonzero(g == gg)
        for _ in range(8):  # popularity-weighted draws within the genre, reject seen
            if len(rows) == 0 or len(by_genre[gg]) == 0:
                break
            r = rng.random(len(rows)) * cum[gg][-1]
            cand = by_genre[gg][np.minimum(np.searchsorted(cum[gg], r), len(cum[gg]) - 1)]
            ok = ~seen[act[rows], cand]
            pick[rows[ok]] = cand[ok]
            rows = rows[~ok]
    for k in np.flatnonzero(pick < 0):  # genre exhausted: any unseen item
        pick[k] = rng.choice(np.flatnonzero(~seen[act[k]]))
    return pick


def _user_sequences(rng: np.random.Generator, has: np.ndarray, popularity: np.ndarray,
                    lengths: np.ndarray, max_len: int, taste_scale: float, drift: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item ``[U, max_len]`` (-1 after the end) and rating sequences under drifting genre
    tastes, and the ``[U, I]`` seen matrix."""
    num_items, num_genres = has.shape
    num_users = len(lengths)
    by_genre = [np.flatnonzero(has[:, g]) for g in range(num_genres)]
    cum = [np.cumsum(popularity[ids]) for ids in by_genre]
    seen = np.zeros((num_users, num_items), bool)
    logits = taste_scale * rng.standard_normal((num_users, num_genres))
    seq = np.full((num_users, max_len), -1, np.int64)
    rating = np.zeros((num_users, max_len))
    users = np.arange(num_users)
    for t in range(max_len):
        act = users[lengths > t]
        p = np.exp(logits[act] - logits[act].max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (rng.random(len(act))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
        g = np.minimum(g, num_genres - 1)
        pick = _pick_items(rng, act, g, by_genre, cum, seen)
        seen[act, pick] = True
        seq[act, t] = pick
        liked = p[np.arange(len(act)), g] * num_genres  # > 1: a currently preferred genre
        rating[act, t] = np.clip(np.round(2.5 + liked + rng.normal(0, 1, len(act))), 1, 5)
        logits[act] += drift * rng.standard_normal((len(act), num_genres))
    return seq, rating, seen


def _assemble(rng: np.random.Generator, name: str, genres: tuple[str, ...], has: np.ndarray,
              seq: np.ndarray, rating: np.ndarray, seen: np.ndarray, lengths: np.ndarray,
              tie_rate: float) -> MovieLens:
    """Timestamps, a shuffled interaction order, loader-style user and item numbering."""
    num_users, max_len = seq.shape
    num_items = has.shape[0]
    users = np.arange(num_users)
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    user = np.broadcast_to(users[:, None], mask.shape)[mask]
    item, rating = seq[mask], rating[mask]
    step = np.where(rng.random(mask.shape) < tie_rate, 0, rng.integers(1, 86_400, mask.shape))
    start = 9 * 10**8 + rng.integers(0, 10**7, num_users)
    timestamp = (start[:, None] + np.cumsum(step, axis=1))[mask]
    order = rng.permutation(len(user))
    _, first = np.unique(user[order], return_index=True)
    first_seen = np.argsort(first)  # number users by first appearance, as the loader does
    relabel = np.empty(num_users, np.int64)
    relabel[first_seen] = np.arange(num_users)
    used = np.flatnonzero(seen.any(axis=0))
    remap = np.full(num_items, -1)
    remap[used] = np.arange(len(used))
    years = rng.integers(1930, 2001, num_items)[used]
    titles = [f"Synthetic Movie {i:04d} ({y})" for i, y in zip(used, years, strict=True)]
    return from_arrays(
        name, user=relabel[user[order]], item=remap[item[order]], rating=rating[order],
        timestamp=timestamp[order], titles=titles, years=years,
        item_genres=[[genres[g] for g in np.flatnonzero(has[i])] for i in used],
        user_ids=[f"syn_{u + 1}" for u in first_seen], item_ids=titles,
    )


def write_atomic_files(ml: MovieLens, directory: str | Path, prefix: str) -> Path:
    """Writes ``{prefix}.inter`` and ``{prefix}.item`` in the ML-1M RecBole layout.

    The inverse of :func:`~recrl.data.movielens.load_atomic` (item ids are the raw ids,
    titles are written without the year, CRLF line ends as in the fetched ML-1M).

    Args:
      ml: the dataset (raw item ids must be unique and free of tabs / newlines).
      directory: output folder (created if needed).
      prefix: file-name prefix.

    Returns:
      The directory.
    """
    def write(path: Path, header: list[str], rows) -> None:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write("\t".join(header) + "\r\n")
            for row in rows:
                fields = [str(x) for x in row]
                if any(c in x for x in fields for c in "\t\r\n"):
                    raise ValueError(f"field with a tab or newline cannot be written: {row}")
                f.write("\t".join(fields) + "\r\n")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    items = {k: arrow_column(ml.items, k).to_pylist() for k in ("title", "year", "genres")}
    write(directory / f"{prefix}.item",
          ["item_id:token", "movie_title:token", "release_year:float", "genre:token"],
          ([raw, title.removesuffix(f" ({year})"), year if year != UNKNOWN_YEAR else "",
            " ".join(gs)]
           for raw, title, year, gs in zip(ml.item_ids, items["title"], items["year"],
                                           items["genres"], strict=True)))
    inter = {k: ml.column(k).tolist() for k in ("user", "item", "rating", "timestamp")}
    write(directory / f"{prefix}.inter",
          ["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
          ([ml.user_ids[u], ml.item_ids[i], f"{r:g}", t]
           for u, i, r, t in zip(inter["user"], inter["item"], inter["rating"],
                                 inter["timestamp"], strict=True)))
    return directory
