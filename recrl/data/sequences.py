"""Chronological per-user sequences, iterative k-core, user splits and unseen-item sampling.

Shared by the ProRL (:mod:`recrl.data.prorl`) and LM-recommender
(:mod:`recrl.data.lmrec`) preprocessing. Sequences are stored in CSR form (``offsets`` into
flat ``items`` / ``timestamps`` / ``ratings``) with compact ids: row ``u`` is user ``u``,
items are ``0..num_items-1``; ``user_ids`` / ``item_ids`` map back to the
:class:`~recrl.data.movielens.MovieLens` ids.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recrl.data.movielens import MovieLens


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Per-user chronological interaction sequences (CSR).

    Attributes:
      offsets: ``[U + 1]`` int64; user ``u``'s interactions are ``offsets[u]:offsets[u+1]``.
      items: ``[nnz]`` int32 compact item ids, oldest first.
      timestamps: ``[nnz]`` int64.
      ratings: ``[nnz]`` float32.
      user_ids: ``[U]`` int32 MovieLens user id of each row.
      item_ids: ``[I]`` int32 MovieLens item id of each compact item.
    """

    offsets: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def lengths(self) -> np.ndarray:
        """``[U]`` sequence lengths."""
        return np.diff(self.offsets)

    def row_of(self) -> np.ndarray:
        """``[nnz]`` the user (row) of each flat interaction."""
        return np.repeat(np.arange(self.num_users, dtype=np.int32), self.lengths)

    def position(self) -> np.ndarray:
        """``[nnz]`` the position of each flat interaction inside its user's sequence."""
        return np.arange(len(self.items)) - np.repeat(self.offsets[:-1], self.lengths)

    def sequence(self, u: int) -> np.ndarray:
        """User ``u``'s item sequence."""
        return self.items[self.offsets[u]:self.offsets[u + 1]]


def kcore_mask(users: np.ndarray, items: np.ndarray, *, min_user: int,
               min_item: int) -> np.ndarray:
    r"""Iterative k-core of a user-item interaction list, to a fixed point.

    Repeatedly drops interactions of users with fewer than ``min_user`` and items with
    fewer than ``min_item`` interactions until none is dropped. The result is the largest
    sub-multiset in which every remaining user has :math:`\ge` ``min_user`` and every item
    :math:`\ge` ``min_item`` interactions (unique, so the order of removals is irrelevant).

    Args:
      users: ``[n]`` non-negative int user ids.
      items: ``[n]`` non-negative int item ids.
      min_user: minimum interactions per kept user.
      min_item: minimum interactions per kept item.

    Returns:
      ``[n]`` bool mask of kept interactions.
    """
    users, items = np.asarray(users), np.asarray(items)
    keep = np.ones(len(users), bool)
    n_users = int(users.max(initial=-1)) + 1
    n_items = int(items.max(initial=-1)) + 1
    while True:
        uc = np.bincount(users[keep], minlength=n_users)
        ic = np.bincount(items[keep], minlength=n_items)
        new = keep & (uc[users] >= min_user) & (ic[items] >= min_item)
        if new.sum() == keep.sum():
            return keep
        keep = new


def build_sequences(ml: MovieLens, *, min_user: int = 0, min_item: int = 0) -> Sequences:
    """k-core (optional) and chronological per-user sequences with compact ids.

    Each user's interactions are sorted by timestamp; ties keep their order in the source
    file (a stable sort), so the result is deterministic. Users and items that survive the
    k-core get compact ids in increasing MovieLens-id order.

    Args:
      ml: the dataset.
      min_user: k-core threshold for users (0 or 1: no filtering).
      min_item: k-core threshold for items.

    Returns:
      The :class:`Sequences`.
    """
    users, items = ml.column("user"), ml.column("item")
    ts, ratings = ml.column("timestamp"), ml.column("rating")
    keep = kcore_mask(users, items, min_user=min_user, min_item=min_item)
    users, items, ts, ratings = users[keep], items[keep], ts[keep], ratings[keep]
    user_ids = np.unique(users).astype(np.int32)
    item_ids = np.unique(items).astype(np.int32)
    u = np.searchsorted(user_ids, users)
    order = np.lexsort((ts, u))  # lexsort is stable: ties keep file order
    offsets = np.zeros(len(user_ids) + 1, np.int64)
    np.cumsum(np.bincount(u, minlength=len(user_ids)), out=offsets[1:])
    return Sequences(
        offsets=offsets,
        items=np.searchsorted(item_ids, items[order]).astype(np.int32),
        timestamps=ts[order].astype(np.int64),
        ratings=ratings[order].astype(np.float32),
        user_ids=user_ids, item_ids=item_ids,
    )


def split_users(num_users: int, fractions: tuple[float, ...] = (0.8, 0.1, 0.1), *,
                seed: int = 0) -> list[np.ndarray]:
    """Random disjoint user splits (e.g. train / val / test = 8:1:1).

    Split ``k`` gets ``round(cumsum(fractions)[k] * num_users) - round(cumsum[k-1] * ...)``
    users of a seeded permutation; the last split takes the remainder.

    Args:
      num_users: number of users (rows).
      fractions: split fractions (normalised to sum to 1).
      seed: permutation seed.

    Returns:
      One sorted int32 array of user rows per split.
    """
    frac = np.asarray(fractions, np.float64)
    if (frac < 0).any() or frac.sum() <= 0:
        raise ValueError(f"fractions must be non-negative with a positive sum: {fractions}")
    bounds = np.round(np.cumsum(frac / frac.sum()) * num_users).astype(int)
    bounds[-1] = num_users
    perm = np.random.default_rng(seed).permutation(num_users).astype(np.int32)
    return [np.sort(p) for p in np.split(perm, bounds[:-1])]


def interaction_keys(seqs: Sequences) -> np.ndarray:
    """Sorted ``user * num_items + item`` keys of every interaction (for membership tests)."""
    return np.sort(seqs.row_of().astype(np.int64) * seqs.num_items + seqs.items)


def has_interacted(keys: np.ndarray, num_items: int, users: np.ndarray,
                   items: np.ndarray) -> np.ndarray:
    """Whether each ``(users[k], items[k])`` pair (broadcast) is an interaction."""
    q = np.asarray(users, np.int64) * num_items + np.asarray(items, np.int64)
    pos = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
    return keys[pos] == q if len(keys) else np.zeros(q.shape, bool)


def sample_unseen(seqs: Sequences, users: np.ndarray, num: int, *, seed: int) -> np.ndarray:
    """For each user, ``num`` distinct items the user never interacted with.

    Each row is a uniform sample without replacement from the user's unseen items: the
    first ``num`` distinct unseen values of an i.i.d. uniform stream over all items
    (vectorised: a block of draws per row; rows short of ``num`` draw a larger block).

    Args:
      seqs: the sequences ("interacted" = anywhere in the user's whole sequence).
      users: ``[N]`` user rows.
      num: items per row.
      seed: sampling seed.

    Returns:
      ``[N, num]`` int32 item ids, in draw order.

    Raises:
      ValueError: a user has fewer than ``num`` unseen items.
    """
    users = np.asarray(users, np.int64)
    out = np.zeros((len(users), num), np.int32)
    if len(users) == 0 or num == 0:
        return out
    unseen = seqs.num_items - seqs.lengths[users]
    if unseen.min() < num:
        raise ValueError(f"a user has only {int(unseen.min())} unseen items, {num} requested")
    keys = interaction_keys(seqs)
    rng = np.random.default_rng(seed)
    todo = np.arange(len(users))
    block = int(1.5 * num * seqs.num_items / np.median(unseen)) + 16
    while len(todo):
        draw = rng.integers(0, seqs.num_items, size=(len(todo), block))
        ok = ~has_interacted(keys, seqs.num_items, users[todo, None], draw)
        order = np.argsort(draw, axis=1, kind="stable")  # equal values: earliest first
        srt = np.take_along_axis(draw, order, axis=1)
        repeat = np.zeros_like(ok)
        np.put_along_axis(repeat, order[:, 1:], srt[:, 1:] == srt[:, :-1], axis=1)
        ok &= ~repeat
        done = ok.sum(axis=1) >= num
        take = ok[done] & (np.cumsum(ok[done], axis=1) <= num)
        out[todo[done]] = draw[done][take].reshape(-1, num)
        todo, block = todo[~done], 2 * block
    return out
