"""One JAX process of the multi-process test of GORACS ``protocol=decisive``
(``tests/multiprocess/test_decisive.py``).

Usage: ``python -m tests.multiprocess.decisive_worker OUT NUM_PROCESSES PROCESS_ID PORT
DEVICES [resume]``. Starts like ``tests/multiprocess/worker.py`` (``DEVICES`` fake CPU devices,
``jax.distributed`` on ``127.0.0.1:PORT`` when ``NUM_PROCESSES > 1``), then runs the
launcher's ``run_decisive`` on a small decisive config (two methods) in ``OUT/decisive`` on
the global mesh, and once more after process 0 has removed one finished run (the rerun must
redo that run only, every process taking the same decision); with ``resume``, only that
rerun, in a copy of another layout's finished run. A Python audit hook records
every file this process creates, writes, renames or removes under ``OUT/decisive``, except
inside the fine-tunes' Orbax checkpoint folders (``*.ckpt``, which every process writes as
Orbax requires); each process saves its record to ``OUT/decisive_writes_p<PROCESS_ID>.json``.
Then (not with ``resume``) :func:`checkpointed_fine_tunes`: an early-stopped fine-tune
continued from its checkpoint on the mesh.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REDO = "random_n6_s0"  # the run process 0 removes before the rerun
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_CHANGES = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree")


def decisive_config():
    """``decisive_tiny`` with two methods, one random subset and one EL2N / GraNd model:
    every stage of the protocol, with the fewest runs (base, full, goracs, random)."""
    from experiments.configs.goracs import get_config

    cfg = get_config("decisive_tiny")
    cfg.methods = ("goracs", "random")
    cfg.random_subsets = 1
    cfg.el2n.update(runs=1, steps=2)
    cfg.grand.inits = 1
    return cfg


def _record_writes(root: Path, sink: list) -> None:
    """Adds an audit hook that appends ``"<event> <path>"`` to the list ``sink[0]`` (None:
    nothing recorded) for each file change under ``root`` outside ``*.ckpt`` folders."""
    root_s = str(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            paths = [path] if writing else []
        elif event in _CHANGES:
            paths = list(args[:2]) if event == "os.rename" else [args[0]]
        else:
            return
        for p in paths:
            if isinstance(p, bytes):
                p = os.fsdecode(p)
            if isinstance(p, (str, os.PathLike)):
                p = os.fspath(p)
                if sink[0] is not None and p.startswith(root_s) and ".ckpt" not in p:
                    sink[0].append(f"{event} {p}")

    sys.addaudithook(hook)


def decisive_runs(out: Path, resume: bool = False) -> None:
    """The decisive run, its rerun after process 0 removed run ``REDO``, and the record of
    this process's writes (``first`` run, ``second`` run). With ``resume`` only the rerun
    (in a copy of another layout's ``OUT/decisive`` from which the test removed ``REDO``)."""
    import jax

    from experiments import goracs
    from recrl import parallel

    run_dir = out / "decisive"
    log: dict[str, list[str]] = {"first": [], "second": []}
    sink = [log["first"]]
    _record_writes(run_dir, sink)
    cfg = decisive_config()
    if not resume:
        goracs.run_decisive(cfg, str(run_dir))
        parallel.barrier("decisive:first run")
        sink[0] = None  # the test's own change below is not recorded
        if parallel.is_writer():
            (run_dir / "runs" / f"{REDO}.json").unlink()
        parallel.barrier("decisive:one run removed")
    sink[0] = log["second"]
    goracs.run_decisive(cfg, str(run_dir))
    sink[0] = None
    (out / f"decisive_writes_p{jax.process_index()}.json").write_text(json.dumps(log))


def checkpointed_fine_tunes(out: Path) -> None:
    """Early-stopped fine-tunes of a tiny LoRA model on the mesh (the decisive protocol's):
    4 steps with a checkpoint, continued from it to 6 (``resumed``), against 6 steps
    without one (``uninterrupted``); and one whose first evaluation is no better than step
    0 (``diverged``, lr 5), so that it saves the untouched adapters. Saves the results and
    adapters to ``OUT/fine_tunes_p<PROCESS_ID>.json``."""
    import jax
    import numpy as np
    from flax import nnx

    from recrl import models, parallel
    from recrl.coreset import lmrec
    from tests.test_parallel_decisive import _rows, _tiny_lora_model

    mesh = parallel.data_mesh()
    train, val = _rows(12, 1), _rows(6, 2)
    kw = dict(eval_every=2, patience=2, batch_size=4, seed=3, eval_batch_size=4, mesh=mesh)
    got = {}
    for name, steps, lr, ckpt in (("stopped", 4, 5e-2, "ckpt"), ("resumed", 6, 5e-2, "ckpt"),
                                  ("uninterrupted", 6, 5e-2, None),
                                  ("diverged", 6, 5.0, "ckpt_diverged")):
        model = _tiny_lora_model()
        info = lmrec.finetune_early_stopping(
            model, train, val, max_steps=steps, lr=lr,
            checkpoint_dir=None if ckpt is None else out / ckpt, **kw)
        adapters = jax.tree.leaves(parallel.to_host(nnx.state(model, models.LoRAParam)))
        got[name] = {**info, "adapters": [np.asarray(a).tolist() for a in adapters]}
    (out / f"fine_tunes_p{jax.process_index()}.json").write_text(json.dumps(got))


def main(argv: list[str]) -> None:
    from tests.multiprocess.worker import start

    out, nproc, pid, port, ndev = argv[1], *map(int, argv[2:6])
    start(nproc, pid, port, ndev)
    decisive_runs(Path(out), resume=argv[6:] == ["resume"])
    if argv[6:] != ["resume"]:
        checkpointed_fine_tunes(Path(out))
    from recrl import parallel

    parallel.barrier("done")


if __name__ == "__main__":
    main(sys.argv)
