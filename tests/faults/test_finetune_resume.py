"""GORACS's default-protocol fine-tune (``lmrec.finetune`` with ``checkpoint_dir``) resumes
mid-run: interrupted after a save, a rerun continues from it and ends identical to an
uninterrupted run (parameters and per-step losses), training only the remaining steps."""

import json
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from recrl import checkpoint, models, parallel
from recrl.coreset import lmrec
from recrl.models import finetune
from recrl.models.tokenizers_small import ByteTokenizer
from tests.faults.conftest import run_python


class _Killed(Exception):
    pass


def _model():
    model = models.create_model(models.tiny_config(), seed=0)
    models.add_lora(model, rank=2, alpha=4, targets=("q_proj", "v_proj"), rngs=nnx.Rngs(0))
    return model


def _data():
    return lmrec.encode_pairs(ByteTokenizer().encode, ["a: ", "b: ", "c: "] * 3,
                              ["Yes", "No", "Hm"] * 3, max_prompt=4, max_answer=3)


def _count_steps(monkeypatch) -> list:
    """Counts the optimiser steps the fine-tune loop runs."""
    calls, make = [], finetune.make_step

    def counting(*a, **k):
        step = make(*a, **k)
        return lambda *args: (calls.append(1), step(*args))[1]

    monkeypatch.setattr(finetune, "make_step", counting)
    return calls


@pytest.mark.parametrize("data_parallel", [False, True])
def test_finetune_interrupted_after_a_save_resumes_to_the_same_result(
        tmp_path, monkeypatch, data_parallel):
    mesh = parallel.data_mesh() if data_parallel else None
    kw = dict(steps=12, batch_size=4, lr=3e-2, seed=1, progress=False, mesh=mesh)
    ref_model = _model()
    ref = lmrec.finetune(ref_model, *_data(), **kw)
    assert len(ref) == 12
    save, saves = checkpoint.Checkpointer.save, []

    def dies_before_the_third_save(self, step, state, meta=None):
        saves.append(step)
        if len(saves) == 3:  # step 9: steps 3 and 6 are saved
            raise _Killed
        return save(self, step, state, meta)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", dies_before_the_third_save)
    with pytest.raises(_Killed):
        lmrec.finetune(_model(), *_data(), checkpoint_dir=tmp_path, checkpoint_every=3, **kw)
    monkeypatch.undo()
    assert saves == [3, 6, 9]
    steps = _count_steps(monkeypatch)
    resumed_model = _model()
    got = lmrec.finetune(resumed_model, *_data(), checkpoint_dir=tmp_path, checkpoint_every=3,
                         **kw)
    assert len(steps) == 12 - 6  # steps 1-6 restored, not trained again
    assert got == ref  # per-step losses, the restored ones included
    for a, b in zip(jax.tree.leaves(nnx.state(ref_model)),
                    jax.tree.leaves(nnx.state(resumed_model)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# SIGKILLs a tiny GORACS default-protocol run right after the first fine-tune checkpoint of
# its third coreset run (argv: out_dir).
_KILLED_GORACS = """
import os, signal, sys
from recrl import checkpoint
save, runs = checkpoint.Checkpointer.save, set()
def killing_save(self, step, state, meta=None):
    save(self, step, state, meta)
    if self.directory.endswith(".ckpt"):
        runs.add(self.directory)
        if len(runs) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
checkpoint.Checkpointer.save = killing_save
from experiments import goracs
from experiments.configs.goracs import get_config
goracs.run(get_config("tiny"), sys.argv[1])
raise SystemExit("not killed")
"""


@pytest.mark.slow  # two tiny GORACS pipelines (~2-3 min of compiles on 2 cores)
def test_goracs_sigkill_mid_finetune_resumes_that_finetune(tmp_path, monkeypatch):
    from experiments import goracs
    from experiments.configs.goracs import get_config

    cfg = get_config("tiny")
    r = run_python(_KILLED_GORACS, str(tmp_path / "run"), timeout=900)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    runs = tmp_path / "run" / "runs"
    assert len(list(runs.glob("*.json"))) == 2 and len(list(runs.glob("*.ckpt"))) == 1
    steps = _count_steps(monkeypatch)
    res = goracs.run(cfg, str(tmp_path / "run"))
    assert not list(runs.glob("*.ckpt"))  # removed once each run is recorded
    monkeypatch.undo()
    ref = goracs.run(cfg, str(tmp_path / "ref"))
    coreset_runs = [r for r in ref["runs"] if r["method"] != "base"]
    # the rerun pretrains again (tiny: no pretraining cache); the killed run restores its
    # first saved step instead of training it again; the two finished runs are reused
    assert len(steps) == cfg.pretrain.steps + sum(r["steps"] for r in coreset_runs[2:]) - 1
    strip = lambda runs: [{k: v for k, v in r.items() if not k.endswith("seconds")}
                          for r in runs]
    assert strip(res["runs"]) == strip(json.loads(json.dumps(ref["runs"], default=float)))
