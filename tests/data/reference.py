"""Slow pure-Python references for the data pipeline (dicts, sets and loops; no numpy).

Each works on raw interaction tuples and genre-name sets, independently of the CSR /
bitmask machinery under test.
"""

from __future__ import annotations

from collections import Counter, defaultdict


def interactions(ml) -> list[tuple[int, int, float, int]]:
    """``(user, item, rating, timestamp)`` tuples in file order."""
    cols = [ml.column(c).tolist() for c in ("user", "item", "rating", "timestamp")]
    return list(zip(*cols, strict=True))


def kcore_ref(pairs: list[tuple[int, int]], min_user: int, min_item: int) -> set[int]:
    """Indices of kept interactions: remove one offending user or item at a time."""
    alive = set(range(len(pairs)))
    while True:
        uc = Counter(pairs[k][0] for k in alive)
        ic = Counter(pairs[k][1] for k in alive)
        bad_u = next((u for u, c in uc.items() if c < min_user), None)
        bad_i = next((i for i, c in ic.items() if c < min_item), None)
        if bad_u is None and bad_i is None:
            return alive
        if bad_u is not None:
            alive = {k for k in alive if pairs[k][0] != bad_u}
        else:
            alive = {k for k in alive if pairs[k][1] != bad_i}


def sequences_ref(rows: list[tuple[int, int, float, int]], keep: set[int] | None = None
                  ) -> dict[int, list[int]]:
    """user -> items sorted by (timestamp, file index), users in increasing order."""
    per_user = defaultdict(list)
    for k, (u, i, _, t) in enumerate(rows):
        if keep is None or k in keep:
            per_user[u].append((t, k, i))
    return {u: [i for _, _, i in sorted(v)] for u, v in sorted(per_user.items())}


def coherent(a: set[str], b: set[str], ignore: set[str]) -> bool:
    return bool((a - ignore) & (b - ignore))


def mine_ref(seqs: dict[int, list[int]], genres: dict[int, set[str]], *, history: int,
             max_len: int, long_runs: str, ignore: set[str]) -> list[tuple]:
    """``(user, start, history, path)`` for every mined sample (raw ids)."""
    out = []
    for u, seq in seqs.items():
        runs, cur = [], []
        for j in range(history, len(seq)):
            if cur and coherent(genres[seq[j - 1]], genres[seq[j]], ignore):
                cur.append(j)
            else:
                if cur:
                    runs.append(cur)
                cur = [j]
        if cur:
            runs.append(cur)
        for run in runs:
            if long_runs == "truncate":
                chunks = [run[:max_len]]
            else:
                chunks = [run[s:s + max_len] for s in range(0, len(run), max_len)]
            for c in chunks:
                if len(c) >= 2:
                    out.append((u, c[0], tuple(seq[c[0] - history:c[0]]),
                                tuple(seq[k] for k in c)))
    return out


def windows_ref(seqs: dict[int, list[int]], max_history: int, min_history: int) -> list[tuple]:
    """``(user, position, history, target)`` for every sliding-window sample."""
    out = []
    for u, seq in seqs.items():
        for t in range(min_history, len(seq)):
            out.append((u, t, tuple(seq[max(0, t - max_history):t]), seq[t]))
    return out
