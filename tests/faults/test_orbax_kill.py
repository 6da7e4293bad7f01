"""SIGKILL inside Orbax's own save (subprocess): while its background thread writes the
pytree metadata, at its finalize, at the rename that commits the step, and while it removes
the oldest step (``max_to_keep``). The process reopening the directory through
``recrl.checkpoint`` gets the last complete step intact, is told about the unfinished save,
and can save the interrupted step again; no temporary folder is left behind."""

import json
import os
import signal
import threading

import jax.numpy as jnp
import numpy as np
import pytest

from recrl.checkpoint import Checkpointer, unfinished_saves
from tests.faults.conftest import run_python

# Saves step 1, then step 2 with a hook that SIGKILLs the process at one point inside Orbax
# (argv: directory, point). Each hook records the thread it ran on first.
_KILLED_SAVE = """
import json, os, shutil, signal, sys, threading
import jax.numpy as jnp
from recrl.checkpoint import Checkpointer
from orbax.checkpoint._src.handlers import base_pytree_checkpoint_handler as pytree_handler
from orbax.checkpoint._src.path import atomicity, deleter
directory, point = sys.argv[1], sys.argv[2]

def die(where):
    with open(os.path.join(os.path.dirname(directory), "killed.json"), "w") as f:
        json.dump({"point": where, "thread": threading.current_thread().name}, f)
    os.kill(os.getpid(), signal.SIGKILL)

def state(x):
    return {"w": jnp.full((3, 2), x), "step": jnp.asarray(int(x), jnp.int32)}

ckpt = Checkpointer(directory, max_to_keep=1)
ckpt.save(1, state(1.0), meta={"epoch": 1})
if point == "write":  # arrays written, the pytree's _METADATA not yet
    async def write_metadata(self, *a, **k):
        die("write")
    pytree_handler.BasePyTreeCheckpointHandler._write_metadata_file = write_metadata
elif point == "finalize":  # every item written, nothing committed
    async def finalize(self):
        die("finalize")
    atomicity.AtomicRenameTemporaryPath.finalize = finalize
elif point == "commit":  # items committed, the step folder not yet renamed
    rename = atomicity.async_path.rename
    async def killing_rename(src, dst, *a, **k):
        if os.path.basename(str(dst)) == "2":
            die("commit")
        return await rename(src, dst, *a, **k)
    atomicity.async_path.rename = killing_rename
elif point == "delete":  # step 2 committed, step 1 half removed
    def delete(self, path, **k):
        shutil.rmtree(os.path.join(str(path), "state"))
        die("delete")
    deleter.PathDeleter.delete = delete
ckpt.save(2, state(2.0), meta={"epoch": 2})
raise SystemExit("not killed")
"""


def _state(x):
    return {"w": jnp.full((3, 2), x), "step": jnp.asarray(int(x), jnp.int32)}


def _same(state, x):
    np.testing.assert_array_equal(state["w"], np.full((3, 2), x, np.float32))
    assert int(state["step"]) == int(x)


@pytest.mark.parametrize("point", [
    "commit",
    "write",
    "finalize",
    "delete",
])
def test_sigkill_inside_orbax_save_keeps_the_last_complete_step(tmp_path, point):
    directory = tmp_path / "ckpt"
    r = run_python(_KILLED_SAVE, str(directory), point, timeout=240)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    killed = json.loads((tmp_path / "killed.json").read_text())
    assert killed["point"] == point
    # Orbax runs these parts on its background (async) thread, not the caller's
    assert killed["thread"] != threading.main_thread().name
    completed = 2 if point == "delete" else 1
    if point == "delete":
        assert unfinished_saves(directory) == []
        ckpt = Checkpointer(directory, max_to_keep=1)
    else:
        assert unfinished_saves(directory) == ["2.orbax-checkpoint-tmp"]
        with pytest.warns(RuntimeWarning, match="save of step 2 did not finish"):
            ckpt = Checkpointer(directory, max_to_keep=1)
    assert ckpt.latest_step() == completed
    state, meta = ckpt.restore(like=_state(0.0))
    assert ckpt.restored_step == completed and meta == {"epoch": completed}
    _same(state, float(completed))
    # the interrupted step saves again (no StepAlreadyExistsError), then the next one
    ckpt.save(2, _state(2.5), meta={"epoch": 2})
    ckpt.save(3, _state(3.0), meta={"epoch": 3})
    ckpt.close()
    assert sorted(os.listdir(directory)) == ["3"]  # max_to_keep=1, no temporary folder
    again = Checkpointer(directory, max_to_keep=1)
    state, meta = again.restore(like=_state(0.0))
    assert meta == {"epoch": 3}
    _same(state, 3.0)
