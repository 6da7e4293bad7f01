r"""ProRL preprocessing statistics: k-core, user split and mined paths per split, timed.

Launch::

    python -m experiments.prorl_data --dataset=ml-1m

Prints the statistics table of :func:`recrl.data.prorl.prorl_stats` and the timings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from absl import app, flags

from recrl.data import ProRLConfig, load_movielens, prepare_prorl
from recrl.data.prorl import format_stats, prorl_stats

FLAGS = flags.FLAGS


def stats(dataset: str, *, seed: int = 0, min_user: int = 20, min_item: int = 40,
          long_runs: str = "truncate") -> int:
    """Prints the statistics of ``dataset`` (ml-1m, ml-100k or synthetic); returns 0, or 1
    with the error on stderr when the dataset cannot be loaded."""
    t0 = time.perf_counter()
    if dataset == "synthetic":
        from recrl.data.synthetic import synthetic_movielens
        ml = synthetic_movielens(1000, 2000, min_len=20, max_len=300, seed=seed)
    else:
        try:
            ml = load_movielens(dataset)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    t1 = time.perf_counter()
    config = ProRLConfig(min_user=min_user, min_item=min_item, seed=seed, long_runs=long_runs)
    data = prepare_prorl(ml, config)
    t2 = time.perf_counter()
    print(f"{dataset}: {config}")
    print(format_stats(prorl_stats(data)))
    print(f"\ntime: load {t1 - t0:.2f} s, k-core + split + mining {t2 - t1:.2f} s, "
          f"total {t2 - t0:.2f} s")
    return 0


def main(argv: Sequence[str]) -> None:
    del argv
    sys.exit(stats(FLAGS.dataset, seed=FLAGS.seed, min_user=FLAGS.min_user,
                   min_item=FLAGS.min_item, long_runs=FLAGS.long_runs))


if __name__ == "__main__":
    flags.DEFINE_string("dataset", "ml-1m", "ml-1m, ml-100k or synthetic.")
    flags.DEFINE_integer("seed", 0, "User-split seed.")
    flags.DEFINE_integer("min_user", 20, "k-core: interactions per user.")
    flags.DEFINE_integer("min_item", 40, "k-core: interactions per item.")
    flags.DEFINE_enum("long_runs", "truncate", ["truncate", "split"],
                      "Coherent runs longer than max_len + 1: keep the first, or split.")
    app.run(main)
