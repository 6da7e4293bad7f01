"""One JAX process of the resume test (``tests/multiprocess/test_resume.py``).

Usage: ``python -m tests.multiprocess.resume_worker OUT NUM_PROCESSES PROCESS_ID PORT DEVICES
STOP TAG``.

Joins ``jax.distributed`` like ``worker.py`` when ``NUM_PROCESSES > 1``, then runs the
launcher's ProRL stages on the tiny synthetic config in ``OUT``: the pretrained policy
(``pipeline.pretrained_policy``: data-parallel pretraining with per-epoch validation, or the
checkpoint already in ``OUT``) and a two-epoch RL run (``train_method``: RL steps, validation,
a checkpoint per epoch, test metrics), with an untrained SASRec as the reward model. With
``STOP`` > 0 the run stops (an exception, as a kill would) right after the checkpoint of epoch
``STOP``; a later call on the same ``OUT`` resumes from it, with any process and device count.

Writes ``OUT/<TAG>_p<PROCESS_ID>.npz`` (the pretrained parameters, the RL parameters and
state of the newest checkpoint, the epochs this call trained) and, when the run finished,
``OUT/<TAG>_test.json`` (its test metrics; process 0).
"""

from __future__ import annotations

import json
import sys

from tests.multiprocess import worker


class Stop(Exception):
    """Raised after the checkpoint of epoch ``STOP``."""


def config():
    from experiments.configs.prorl import get_config

    cfg = get_config("tiny")
    cfg.methods = ("prorl",)
    cfg.rl.update(epochs=2, steps_per_epoch=2, prompts=8, group_size=4, micro_batches=1,
                  grad_diag_batches=0)
    cfg.eval.update(k=2, max_prompts=10, val_prompts=8)
    return cfg


def run(out, mesh, stop: int) -> tuple[dict, list[int], dict | None]:
    """``(arrays, epochs trained, test metrics or None)``."""
    from experiments import prorl
    from recrl import parallel, rundir
    from recrl.checkpoint import Checkpointer
    from recrl.prs import pipeline, rl, simulator
    from recrl.prs import train as rl_train
    from tests.multiprocess.worker import _flat

    cfg = config()
    data = parallel.writer_first("data", lambda: prorl.load_data(cfg))
    sim = simulator.build_simulator(simulator.SimConfig(
        kind="sasrec", num_items=data.sequences.num_items, dim=16, n_heads=1, n_layers=1,
        ffn_dim=16, max_len=16, dropout=0.0))
    trained: list[int] = []
    train_epoch = rl_train._train_epoch

    def counted(run, loop, state, epoch):  # the epochs this process really trains
        trained.append(epoch + 1)
        return train_epoch(run, loop, state, epoch)

    def stopper(epoch: int) -> None:
        if epoch == stop:
            raise Stop

    rl_train._train_epoch = counted
    result = None
    with rundir.MetricsLog(out / "metrics.jsonl", enabled=parallel.is_writer()) as log:
        ctx = prorl.Context(cfg, out, data, prorl.genre_matrix(data.genre_masks),
                            {"sasrec": sim}, mesh, log)
        policy0 = pipeline.pretrained_policy(ctx)
        try:
            result = prorl.train_method(ctx, policy0, "prorl", 0, on_epoch_end=stopper)
        except Stop:
            pass
    like = parallel.to_host(rl.init_state(policy0, prorl.rl_config(cfg, "prorl", 2))[0])
    with Checkpointer(out / "rl" / "prorl_s0" / "ckpt") as ckpt:  # every process restores
        saved, meta = ckpt.restore(like={"rl": like, "best": like.params})
    from flax import nnx

    arrays = {**_flat("pretrained", nnx.state(policy0, nnx.Param)),
              **_flat("rl", saved["rl"].params), **_flat("best", saved["best"]),
              "epoch": meta["epoch"]}
    return arrays, trained, None if result is None else result["test"]


def main(argv: list[str]) -> None:
    out, nproc, pid, port, ndev, stop = argv[1], *map(int, argv[2:7])
    tag = argv[7]
    mesh = worker.start(nproc, pid, port, ndev)
    from pathlib import Path

    import numpy as np

    from recrl import parallel

    out = Path(out)
    arrays, trained, test = run(out, mesh, stop)
    np.savez(out / f"{tag}_p{pid}.npz", trained=np.asarray(trained, np.int32), **arrays)
    if test is not None and parallel.is_writer():
        (out / f"{tag}_test.json").write_text(json.dumps(test))
    parallel.barrier("done")


if __name__ == "__main__":
    main(sys.argv)
