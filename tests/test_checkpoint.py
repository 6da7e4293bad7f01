"""recrl.checkpoint: save / restore / resume round trips and errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from recrl.checkpoint import Checkpointer


def _state(x):
    return {"params": {"w": jnp.full((3, 2), x), "b": jnp.arange(2.0) + x},
            "step": jnp.asarray(int(x), jnp.int32)}


def test_save_restore_latest_and_specific_step(tmp_path):
    with Checkpointer(tmp_path / "ckpt", max_to_keep=2) as ckpt:
        assert ckpt.latest_step() is None
        for step in (1, 2, 3):
            ckpt.save(step, _state(float(step)), meta={"epoch": step, "src": [0.5, 1.5]})
        assert ckpt.all_steps() == [2, 3]  # max_to_keep
        state, meta = ckpt.restore(like=_state(0.0))
        np.testing.assert_array_equal(state["params"]["w"], np.full((3, 2), 3.0))
        assert int(state["step"]) == 3 and meta == {"epoch": 3, "src": [0.5, 1.5]}
        state, meta = ckpt.restore(like=_state(0.0), step=2)
        np.testing.assert_array_equal(state["params"]["b"], [2.0, 3.0])
        assert meta["epoch"] == 2


def test_reopening_a_directory_resumes(tmp_path):
    Checkpointer(tmp_path / "c").save(7, _state(7.0), meta={"note": "x"})
    again = Checkpointer(tmp_path / "c")
    assert again.latest_step() == 7
    state, meta = again.restore(like=_state(0.0))
    assert int(state["step"]) == 7 and meta["note"] == "x"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    ckpt = Checkpointer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*empty"):
        ckpt.restore(like=_state(0.0))
    ckpt.save(1, _state(1.0))
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 5.*saved steps: \\[1\\]"):
        ckpt.restore(like=_state(0.0), step=5)
