"""LM-recommender samples (GORACS, BIGRec / TALLRec style) from MovieLens sequences.

* Next-item samples (:func:`sliding_windows`): for every interaction ``t >= 1`` of every
  user's chronological sequence, the up-to-``H = 10`` items before it are the history and
  the item itself is the target.
* Chronological global split (:func:`chronological_split`): samples sorted by the target
  interaction's timestamp (ties: user row, then position); the last ``num_test`` are the
  test set, the ``num_val`` before them the validation set, the rest the training pool.
  A user may appear in several splits, but every validation / test target is later than
  (or as late as) every training target.
* Text (:func:`next_item_dataset`): ``"The user watched: A; B; C. Next:"`` with the target
  title as the answer; click prediction (:func:`click_dataset`, TALLRec-style) asks
  ``"... Will the user like X? Answer:"`` with ``"Yes"`` iff the rating is > 3.
* Per-user split (:func:`user_holdout_split`): every user's last window is held out, as
  validation for a seeded set of validation users and as test for all the others.
* Ranking (:func:`ranking_candidates`): 1 target + 99 sampled negatives the user never
  interacted with, or the full catalogue with the user's earlier items masked
  (:func:`seen_before_mask`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import string
from typing import NamedTuple

import numpy as np

try:
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
except ImportError as e:
    from recrl._extras import missing

    raise missing(__name__, "goracs", e) from e

from recrl.data.movielens import MovieLens
from recrl.data.sequences import Sequences, build_sequences, sample_unseen

#: Padding value of ``WindowSamples.history`` beyond ``history_len``.
PAD = -1
SPLITS = ("train", "val", "test")
NEXT_ITEM_TEMPLATE = "The user watched: {history}. Next:"
CLICK_TEMPLATE = "The user watched: {history}. Will the user like {item}? Answer:"


class WindowSamples(NamedTuple):
    """Next-item samples, fixed-shape arrays (a JAX pytree).

    Attributes:
      history: ``[N, S]`` int32 past items (S = max_history), oldest first, :data:`PAD`
        after ``history_len``.
      history_len: ``[N]`` int32 in ``[min_history, S]``.
      target: ``[N]`` int32 the next item.
      user: ``[N]`` int32 user rows of the :class:`~recrl.data.sequences.Sequences`.
      position: ``[N]`` int32 position of the target in the user's sequence.
      timestamp: ``[N]`` int64 the target interaction's timestamp.
      rating: ``[N]`` float32 the target interaction's rating.
    """

    history: np.ndarray
    history_len: np.ndarray
    target: np.ndarray
    user: np.ndarray
    position: np.ndarray
    timestamp: np.ndarray
    rating: np.ndarray


@dataclasses.dataclass(frozen=True)
class LMRecConfig:
    """Options of :func:`prepare_lmrec`.

    Attributes:
      max_history: history window ``H``.
      min_history: minimum history length of a sample.
      num_val, num_test: sizes of the chronological validation / test sets.
      min_user, min_item: optional k-core (0: none).
    """

    max_history: int = 10
    min_history: int = 1
    num_val: int = 5000
    num_test: int = 5000
    min_user: int = 0
    min_item: int = 0

    def __post_init__(self):
        if not 1 <= self.min_history <= self.max_history:
            raise ValueError(f"need 1 <= min_history <= max_history: {self}")
        if self.num_val < 0 or self.num_test < 0:
            raise ValueError(f"split sizes must be non-negative: {self}")


@dataclasses.dataclass(frozen=True)
class LMRecData:
    """Samples and what is needed to render them.

    Attributes:
      sequences: chronological sequences (compact ids).
      titles: ``[I]`` display titles of the compact items.
      splits: ``{"train", "val", "test"}`` -> :class:`WindowSamples`.
      config: the options used.
    """

    sequences: Sequences
    titles: np.ndarray
    splits: dict[str, WindowSamples]
    config: LMRecConfig


def sliding_windows(seqs: Sequences, *, max_history: int = 10,
                    min_history: int = 1) -> WindowSamples:
    """Every interaction with at least ``min_history`` predecessors, as a next-item sample.

    Args:
      seqs: chronological sequences.
      max_history: history window ``H`` (the most recent ``H`` items are kept).
      min_history: minimum number of past items.

    Returns:
      :class:`WindowSamples` in user-row, position order.
    """
    pos = seqs.position()
    j = np.flatnonzero(pos >= min_history)
    hlen = np.minimum(pos[j], max_history)
    k = np.arange(max_history)
    valid = k[None, :] < hlen[:, None]
    idx = np.where(valid, j[:, None] - hlen[:, None] + k, 0)
    return WindowSamples(
        history=np.where(valid, seqs.items[idx], PAD).astype(np.int32),
        history_len=hlen.astype(np.int32), target=seqs.items[j].astype(np.int32),
        user=seqs.row_of()[j], position=pos[j].astype(np.int32),
        timestamp=seqs.timestamps[j], rating=seqs.ratings[j],
    )


def take(samples: WindowSamples, index: np.ndarray) -> WindowSamples:
    """The samples at ``index`` (any numpy index)."""
    return WindowSamples(*(x[index] for x in samples))


def chronological_split(samples: WindowSamples, *, num_val: int = 5000,
                        num_test: int = 5000) -> dict[str, WindowSamples]:
    """Global split by the target's timestamp: train pool / last-but-test / last ``num_test``.

    Args:
      samples: all samples.
      num_val: validation size (the ``num_val`` samples right before the test set).
      num_test: test size (the latest samples).

    Returns:
      ``{"train", "val", "test"}`` -> :class:`WindowSamples`, each in time order.

    Raises:
      ValueError: fewer than ``num_val + num_test`` samples.
    """
    n = len(samples.target)
    if num_val + num_test > n:
        raise ValueError(f"{n} samples cannot hold {num_val} val + {num_test} test")
    order = np.lexsort((samples.position, samples.user, samples.timestamp))
    cut_val, cut_test = n - num_val - num_test, n - num_test
    return {"train": take(samples, order[:cut_val]),
            "val": take(samples, order[cut_val:cut_test]),
            "test": take(samples, order[cut_test:])}


def user_holdout_split(samples: WindowSamples, *, num_val_users: int,
                       seed: int = 0) -> dict[str, WindowSamples]:
    """Per-user leave-last-out split with disjoint validation and test users.

    Users are shuffled (``seed``); the first ``num_val_users`` are validation users, the
    rest test users. Each user's last window (largest ``position``) is held out: a
    validation user's goes to ``"val"``, a test user's to ``"test"`` (one window per user
    in each); every other window goes to ``"train"``. So no user is in both validation and
    test, and every held-out window is later in its user's sequence than the user's
    training windows.

    Args:
      samples: all samples (e.g. :func:`sliding_windows`).
      num_val_users: how many users hold out a validation window.
      seed: user shuffle seed.

    Returns:
      ``{"train", "val", "test"}`` -> :class:`WindowSamples`; held-out splits are ordered
      by user row, ``"train"`` keeps the input order.

    Raises:
      ValueError: ``num_val_users`` is negative or leaves no test user.
    """
    users = np.unique(samples.user)
    if not 0 <= num_val_users < users.shape[0]:
        raise ValueError(f"num_val_users={num_val_users} must be in [0, {users.shape[0]}) "
                         f"(the number of users with a sample)")
    order = np.lexsort((samples.position, samples.user))  # by user, then position
    u = samples.user[order]
    last = order[np.flatnonzero(np.r_[u[1:] != u[:-1], True])]  # one per user, by user
    val_users = np.random.default_rng(seed).permutation(users)[:num_val_users]
    is_val = np.isin(samples.user[last], val_users)
    held = np.zeros(len(samples.target), bool)
    held[last] = True
    return {"train": take(samples, np.flatnonzero(~held)),
            "val": take(samples, last[is_val]), "test": take(samples, last[~is_val])}


def prepare_lmrec(ml: MovieLens, config: LMRecConfig | None = None) -> LMRecData:
    """Sequences, sliding-window samples and the chronological split.

    Args:
      ml: the dataset.
      config: options (default :class:`LMRecConfig`).

    Returns:
      :class:`LMRecData`.
    """
    config = config or LMRecConfig()
    seqs = build_sequences(ml, min_user=config.min_user, min_item=config.min_item)
    samples = sliding_windows(seqs, max_history=config.max_history,
                              min_history=config.min_history)
    splits = chronological_split(samples, num_val=config.num_val, num_test=config.num_test)
    return LMRecData(seqs, ml.titles()[seqs.item_ids], splits, config)


def history_texts(samples: WindowSamples, titles: np.ndarray, sep: str = "; ") -> pa.Array:
    """Each sample's history titles joined by ``sep``, oldest first (arrow strings)."""
    valid = np.arange(samples.history.shape[1])[None, :] < samples.history_len[:, None]
    flat = pa.array(list(titles), pa.string()).take(pa.array(samples.history[valid]))
    offsets = np.concatenate([[0], np.cumsum(samples.history_len)]).astype(np.int32)
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), flat), sep)


def render(template: str, **fields: pa.Array) -> pa.Array:
    """Fills a ``str.format``-style template column-wise (vectorised in arrow).

    Args:
      template: text with ``{name}`` fields (no format specs).
      **fields: one arrow string array per field, all of the same length.

    Returns:
      The rendered strings.
    """
    pieces = []
    for literal, name, spec, conv in string.Formatter().parse(template):
        if literal:
            pieces.append(literal)
        if name is not None:
            if spec or conv:
                raise ValueError(f"format specs are not supported: {template!r}")
            pieces.append(fields[name])
    return pc.binary_join_element_wise(*pieces, "")


def _dataset(cols: dict[str, pa.Array], *keys) -> datasets.Dataset:
    """An in-memory dataset with a cheap fingerprint (``datasets`` would pickle every row)."""
    h = hashlib.sha256()
    for k in keys:
        h.update(k.tobytes() if isinstance(k, np.ndarray) else repr(k).encode())
    return datasets.Dataset(pa.table(cols), fingerprint=h.hexdigest()[:16])


def _id_columns(s: WindowSamples) -> dict[str, pa.Array]:
    h = s.history
    return {
        "history": pa.FixedSizeListArray.from_arrays(pa.array(h.reshape(-1)), h.shape[1]),
        "history_len": pa.array(s.history_len), "target": pa.array(s.target),
        "user": pa.array(s.user), "timestamp": pa.array(s.timestamp),
    }


def next_item_dataset(data: LMRecData, split: str, *,
                      template: str = NEXT_ITEM_TEMPLATE) -> datasets.Dataset:
    """Text next-item samples of one split.

    Args:
      data: the prepared data.
      split: ``"train"``, ``"val"`` or ``"test"``.
      template: prompt with a ``{history}`` field.

    Returns:
      A dataset with ``prompt``, ``answer`` (target title), ``history`` (``[H]`` ids,
      :data:`PAD`-padded), ``history_len``, ``target``, ``user``, ``timestamp``.
    """
    s = data.splits[split]
    cols = {"prompt": render(template, history=history_texts(s, data.titles)),
            "answer": pa.array(list(data.titles[s.target]), pa.string()), **_id_columns(s)}
    return _dataset(cols, "next", template, split, data.titles.tolist(), *s)


def click_dataset(data: LMRecData, split: str, *, threshold: float = 3.0,
                  template: str = CLICK_TEMPLATE) -> datasets.Dataset:
    """Binary click-prediction samples: will the user like the next item (rating > 3)?

    The candidate is the sample's target item; the label is ``rating > threshold``.

    Args:
      data: the prepared data.
      split: ``"train"``, ``"val"`` or ``"test"``.
      threshold: ratings above it are positives.
      template: prompt with ``{history}`` and ``{item}`` fields.

    Returns:
      A dataset with ``prompt``, ``answer`` (``"Yes"`` / ``"No"``), ``label`` (int8 1 / 0),
      ``item`` (candidate id), ``rating`` and the id columns of :func:`next_item_dataset`.
    """
    s = data.splits[split]
    label = (s.rating > threshold).astype(np.int8)
    item = pa.array(list(data.titles[s.target]), pa.string())
    cols = {"prompt": render(template, history=history_texts(s, data.titles), item=item),
            "answer": pa.array(np.where(label == 1, "Yes", "No").tolist(), pa.string()),
            "label": pa.array(label), "item": pa.array(s.target),
            "rating": pa.array(s.rating), **_id_columns(s)}
    return _dataset(cols, "click", template, threshold, split, data.titles.tolist(), *s)


def ranking_candidates(data: LMRecData, split: str = "test", *, num_negatives: int = 99,
                       seed: int = 0) -> np.ndarray:
    """Target plus sampled negatives for HR@K / NDCG@K over ``1 + num_negatives`` items.

    Negatives are distinct items the user never interacted with (anywhere in the sequence),
    uniform, seeded.

    Args:
      data: the prepared data.
      split: which samples.
      num_negatives: negatives per sample.
      seed: sampling seed.

    Returns:
      ``[N, 1 + num_negatives]`` int32 item ids; column 0 is the target.
    """
    s = data.splits[split]
    neg = sample_unseen(data.sequences, s.user, num_negatives, seed=seed)
    return np.concatenate([s.target[:, None], neg], axis=1).astype(np.int32)


def seen_before_mask(data: LMRecData, split: str = "test") -> np.ndarray:
    """Full-catalogue ranking: the items to exclude for each sample.

    Args:
      data: the prepared data.
      split: which samples.

    Returns:
      ``[N, num_items]`` bool, True for items the user interacted with before the target
      (the whole past, not only the window); the target itself is never masked.
    """
    s, seqs = data.splits[split], data.sequences
    n = len(s.target)
    lens = s.position.astype(np.int64)
    rows = np.repeat(np.arange(n), lens)
    within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    flat = np.repeat(seqs.offsets[s.user], lens) + within
    mask = np.zeros((n, seqs.num_items), bool)
    mask[rows, seqs.items[flat]] = True
    mask[np.arange(n), s.target] = False
    return mask
