r"""Trains one ProRL user simulator (SASRec or GRU4Rec) and prints its ranking metrics.

Launch::

    python -m experiments.train_simulator --dataset=ml-1m --kind=sasrec --epochs=20 --out=DIR

Protocol (:mod:`recrl.prs.train_simulator`): leave-one-out (last item) on held-out users,
full ranking over every item; early stopping on validation NDCG@10. ``--out`` saves the
simulator for :func:`recrl.prs.train_simulator.load_simulator`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags, logging

from recrl.data import ProRLConfig, load_movielens, prepare_prorl, synthetic_movielens
from recrl.prs.simulator import SimConfig
from recrl.prs.train_simulator import format_metrics, save_simulator, train_simulator

FLAGS = flags.FLAGS


def define_flags() -> None:
    """This launcher's flags (defined only when run as a program)."""
    flags.DEFINE_string("dataset", "ml-1m", "ml-1m, ml-100k or synthetic.")
    flags.DEFINE_enum("kind", "sasrec", ["sasrec", "gru4rec"], "Simulator architecture.")
    flags.DEFINE_integer("epochs", 20, "Training epochs.")
    flags.DEFINE_integer("batch_size", 128, "Training windows per step.")
    flags.DEFINE_integer("patience", 3, "Early stopping: epochs without a better val NDCG.")
    flags.DEFINE_integer("seed", 0, "Seed.")
    flags.DEFINE_integer("max_len", 50, "Input window length.")
    flags.DEFINE_integer("log_every", 50, "Log the loss every this many steps.")
    flags.DEFINE_string("out", None, "Checkpoint directory.")


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.dataset == "synthetic":
        ml = synthetic_movielens(1000, 2000, min_len=20, max_len=300, seed=FLAGS.seed)
    else:
        try:
            ml = load_movielens(FLAGS.dataset)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    data = prepare_prorl(ml, ProRLConfig())
    cfg = SimConfig(FLAGS.kind, num_items=data.sequences.num_items, max_len=FLAGS.max_len)
    model, metrics = train_simulator(
        data, cfg, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        patience=FLAGS.patience, log_every=FLAGS.log_every)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
    if FLAGS.out:
        save_simulator(FLAGS.out, model, cfg, metrics=metrics)
    print(f"{FLAGS.dataset} {cfg}")
    print("protocol: leave-one-out (last item) on held-out users, full ranking over "
          f"{cfg.num_items} items, max_len {cfg.max_len}")
    print(format_metrics(metrics))
    if FLAGS.out:
        print(f"saved to {Path(FLAGS.out).resolve()}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
