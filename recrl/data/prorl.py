r"""ProRL preprocessing: k-core, user splits and genre-coherent path mining.

Pipeline (:func:`prepare_prorl`): iterative k-core (users >= 20, items >= 40 interactions)
to a fixed point; chronological per-user sequences (:func:`recrl.data.sequences.build_sequences`,
ties keep file order); users split 8:1:1 by seed; path mining per split.

Path mining (:func:`mine_paths`), with the feasibility oracle

.. math:: F(a, b) = \mathbb 1[\mathrm{genres}(a) \cap \mathrm{genres}(b) \setminus
          \{\text{Drama}\} \neq \emptyset]:

after a user's first ``H = 10`` items the rest of the sequence is cut between consecutive
items ``a, b`` with ``F(a, b) = 0``. Every coherent run ``(i_1 .. i_k)`` with ``k >= 3`` is a
sample whose **target** is its last item ``i_k`` and whose **path** is the intermediates
``(i_1 .. i_{k-1})`` (2 to ``L_max = 10`` items), with ``history`` = the ``H`` items right
before the run. The target is never part of the path: the policy sees it in its prompt only,
is trained to emit the intermediates followed by EOS, and metrics score the intermediates
(as the reference's labels: "path length 2..10" counts intermediates only). Runs longer
than ``L_max + 1`` keep their first ``L_max + 1`` items (``long_runs="truncate"``, the
default: one sample per run, closest to the paper's counts, see ``docs/data.md``).
``long_runs="split"`` instead cuts them into consecutive chunks of ``L_max + 1`` items,
each chunk's history being the ``H`` items right before it, and drops a final chunk of
fewer than 3 items.

Run ``python -m experiments.prorl_data --dataset=ml-1m`` for the statistics table and timings.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import numpy as np

from recrl.data.movielens import MovieLens
from recrl.data.sequences import Sequences, build_sequences, sample_unseen, split_users

#: Padding value of ``PathSamples.path`` beyond each path's length.
PAD = -1
SPLITS = ("train", "val", "test")


class PathSamples(NamedTuple):
    """Mined demonstration paths, fixed-shape int32 arrays (a JAX pytree).

    Attributes:
      history: ``[N, H]`` the ``H`` items right before the path, oldest first.
      path: ``[N, L_max]`` the intermediates, padded with :data:`PAD` after ``lengths``.
      lengths: ``[N]`` path lengths (intermediates only), in ``[2, L_max]``.
      target: ``[N]`` the run's last item, right after the path in the user's sequence
        (never inside ``path``).
      user: ``[N]`` user rows of :attr:`ProRLData.sequences`.
      start: ``[N]`` position of ``path[n, 0]`` in the user's sequence (the cut point).
    """

    history: np.ndarray
    path: np.ndarray
    lengths: np.ndarray
    target: np.ndarray
    user: np.ndarray
    start: np.ndarray


class UnseenTargets(NamedTuple):
    """Evaluation prompts with a random target the user never interacted with.

    Attributes:
      history: ``[N, H]`` history at the cut point (as in the mined paths).
      target: ``[N]`` an item absent from the user's whole sequence.
      user: ``[N]`` user rows.
      start: ``[N]`` cut point (position right after the history).
    """

    history: np.ndarray
    target: np.ndarray
    user: np.ndarray
    start: np.ndarray


@dataclasses.dataclass(frozen=True)
class ProRLConfig:
    """Preprocessing options (defaults: the paper's ML-1M set-up).

    Attributes:
      min_user, min_item: k-core thresholds.
      fractions: train / val / test user fractions.
      seed: user-split seed.
      history: history length ``H``.
      max_len: maximum path length ``L_max`` (intermediates, the target excluded).
      ignore_genres: genres the mining oracle ignores (the coherence metric uses all
        genres: :attr:`ProRLData.all_genre_masks`).
      long_runs: ``"truncate"`` runs longer than ``max_len`` or ``"split"`` them into chunks.
    """

    min_user: int = 20
    min_item: int = 40
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    history: int = 10
    max_len: int = 10
    ignore_genres: tuple[str, ...] = ("Drama",)
    long_runs: Literal["split", "truncate"] = "truncate"

    def __post_init__(self):
        if self.history < 1 or self.max_len < 2:
            raise ValueError(f"need history >= 1 and max_len >= 2: {self}")
        if self.long_runs not in ("split", "truncate"):
            raise ValueError(f"long_runs must be 'split' or 'truncate', got {self.long_runs!r}")
        if len(self.fractions) != 3:
            raise ValueError(f"fractions must be (train, val, test): {self.fractions}")


@dataclasses.dataclass(frozen=True)
class ProRLData:
    """Everything the ProRL pipeline needs, in compact ids.

    Attributes:
      sequences: k-cored chronological sequences (row = user, compact item ids).
      genre_masks: ``[I]`` uint64 genre bitmasks with the ignored genres removed (the
        mining oracle's).
      titles: ``[I]`` display titles.
      splits: ``{"train", "val", "test"}`` -> sorted user rows.
      paths: the same keys -> :class:`PathSamples`.
      config: the options used.
    """

    sequences: Sequences
    genre_masks: np.ndarray
    titles: np.ndarray
    splits: dict[str, np.ndarray]
    paths: dict[str, PathSamples]
    config: ProRLConfig
    all_genre_masks: np.ndarray | None = None  # [I] every genre (the coherence metric's)


def mine_paths(
    seqs: Sequences,
    genre_masks: np.ndarray,
    users: np.ndarray | None = None,
    *,
    history: int = 10,
    max_len: int = 10,
    long_runs: Literal["split", "truncate"] = "truncate",
) -> PathSamples:
    """Mines genre-coherent paths from users' sequences (vectorised over all interactions).

    Consecutive items ``a, b`` are coherent iff ``genre_masks[a] & genre_masks[b] != 0``.
    See the module docstring for the cutting rule and the handling of long runs.

    Args:
      seqs: chronological sequences.
      genre_masks: ``[I]`` integer bitmasks (ignored genres already removed).
      users: user rows to mine (default: all), e.g. one split.
      history: history length ``H``; positions ``< H`` are never in a path.
      max_len: maximum path length ``L_max`` (intermediates; a run has up to ``L_max + 1``
        items with its target).
      long_runs: ``"truncate"`` or ``"split"`` runs longer than ``max_len + 1``.

    Returns:
      :class:`PathSamples`, ordered by user row then position.
    """
    if long_runs not in ("split", "truncate"):
        raise ValueError(f"long_runs must be 'split' or 'truncate', got {long_runs!r}")
    items = seqs.items
    pos, row = seqs.position(), seqs.row_of()
    elig, run_id, starts = _coherent_runs(seqs, genre_masks, users, history)
    start, length = _cut_runs(elig, run_id, starts, max_len + 1, long_runs)
    keep = length >= 3  # at least 2 intermediates before the target
    start, length = start[keep], length[keep] - 1  # length: intermediates only
    hist = items[start[:, None] + np.arange(-history, 0)]
    steps = np.arange(max_len)
    valid = steps[None, :] < length[:, None]
    idx = np.where(valid, start[:, None] + steps, 0)
    path = np.where(valid, items[idx], PAD)
    return PathSamples(
        history=hist.astype(np.int32), path=path.astype(np.int32),
        lengths=length.astype(np.int32), target=items[start + length].astype(np.int32),
        user=row[start].astype(np.int32), start=pos[start].astype(np.int32),
    )


def _coherent_runs(seqs: Sequences, genre_masks: np.ndarray, users: np.ndarray | None,
                   history: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal genre-coherent runs among the eligible interactions (position ``>= history``,
    of a chosen user): ``(eligible flat indices, run id of each, flat start of each run)``."""
    items, pos, row = seqs.items, seqs.position(), seqs.row_of()
    eligible = pos >= history
    if users is not None:
        chosen = np.zeros(seqs.num_users, bool)
        chosen[np.asarray(users)] = True
        eligible &= chosen[row]
    masks = np.asarray(genre_masks)[items]
    link = np.zeros(len(items), bool)  # link[j]: item j-1 -> j coherent, both in the region
    link[1:] = (np.bitwise_and(masks[1:], masks[:-1]) != 0) & (pos[1:] > history)
    link &= eligible
    elig = np.flatnonzero(eligible)
    run_start = ~link[elig]
    return elig, np.cumsum(run_start) - 1, elig[run_start]


def _cut_runs(elig: np.ndarray, run_id: np.ndarray, starts: np.ndarray, run_len: int,
              long_runs: str) -> tuple[np.ndarray, np.ndarray]:
    """``(flat start, item count)`` of each sample cut from the runs: runs longer than
    ``run_len`` items are split into consecutive pieces or truncated to their first
    ``run_len``."""
    if long_runs == "split":
        offset = elig - starts[run_id]  # position inside the run
        first = offset % run_len == 0
        sid = np.cumsum(first) - 1
        return elig[first], np.bincount(sid, minlength=int(first.sum()))
    return starts, np.minimum(np.bincount(run_id, minlength=len(starts)), run_len)


def prepare_prorl(ml: MovieLens, config: ProRLConfig | None = None) -> ProRLData:
    """k-core, chronological sequences, 8:1:1 user split and path mining.

    Args:
      ml: the dataset (:func:`~recrl.data.movielens.load_movielens` or synthetic).
      config: options (default :class:`ProRLConfig`).

    Returns:
      :class:`ProRLData`.
    """
    config = config or ProRLConfig()
    seqs = build_sequences(ml, min_user=config.min_user, min_item=config.min_item)
    masks = ml.genre_masks(ignore=config.ignore_genres)[seqs.item_ids]
    splits = dict(zip(SPLITS, split_users(seqs.num_users, config.fractions, seed=config.seed),
                      strict=True))
    paths = {k: mine_paths(seqs, masks, u, history=config.history, max_len=config.max_len,
                           long_runs=config.long_runs) for k, u in splits.items()}
    all_masks = ml.genre_masks(ignore=())[seqs.item_ids]
    return ProRLData(seqs, masks, ml.titles()[seqs.item_ids], splits, paths, config, all_masks)


def random_unseen_targets(data: ProRLData, split: str = "test", *, seed: int = 0
                          ) -> UnseenTargets:
    """The paper's stated protocol: each mined cut point of ``split`` gets a random target.

    For every mined path of the split (same user, history and cut point), the target is
    drawn uniformly from the items the user never interacted with (over the whole
    sequence, so it is neither in the history nor in the future).

    Args:
      data: the preprocessed data.
      split: ``"train"``, ``"val"`` or ``"test"``.
      seed: sampling seed.

    Returns:
      :class:`UnseenTargets` aligned with ``data.paths[split]``.
    """
    p = data.paths[split]
    target = sample_unseen(data.sequences, p.user, 1, seed=seed)[:, 0]
    return UnseenTargets(p.history, target, p.user, p.start)


def prorl_stats(data: ProRLData) -> dict:
    """Dataset and path statistics.

    Args:
      data: the preprocessed data.

    Returns:
      ``{"users", "items", "interactions", "splits": {name: {"users", "interactions",
      "paths", "mean_length", "length_hist": {length: count}}}}``.
    """
    seqs = data.sequences
    out = {"users": seqs.num_users, "items": seqs.num_items,
           "interactions": len(seqs.items), "splits": {}}
    for name, users in data.splits.items():
        p = data.paths[name]
        hist = np.bincount(p.lengths, minlength=data.config.max_len + 1)
        out["splits"][name] = {
            "users": len(users), "interactions": int(seqs.lengths[users].sum()),
            "paths": len(p.lengths),
            "mean_length": float(p.lengths.mean()) if len(p.lengths) else 0.0,
            "length_hist": {k: int(hist[k]) for k in range(2, len(hist))},
        }
    return out


def format_stats(stats: dict) -> str:
    """A plain-text table of :func:`prorl_stats`."""
    names = list(stats["splits"])
    lines = [f"users {stats['users']:,}  items {stats['items']:,}  "
             f"interactions {stats['interactions']:,}", "",
             f"{'':14s}" + "".join(f"{n:>10s}" for n in names)]
    for key in ("users", "interactions", "paths", "mean_length"):
        vals = [stats["splits"][n][key] for n in names]
        cells = "".join(f"{v:>10.2f}" if isinstance(v, float) else f"{v:>10,}" for v in vals)
        lines.append(f"{key:14s}" + cells)
    for k in stats["splits"][names[0]]["length_hist"]:
        lines.append(f"{'length ' + str(k):14s}"
                     + "".join(f"{stats['splits'][n]['length_hist'][k]:>10,}" for n in names))
    return "\n".join(lines)
