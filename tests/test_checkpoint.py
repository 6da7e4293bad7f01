"""recrl.checkpoint: save / restore / resume round trips and errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from recrl.checkpoint import Checkpointer, CheckpointError


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


def test_resaving_an_existing_step_replaces_it(tmp_path):
    with Checkpointer(tmp_path / "c", max_to_keep=2) as ckpt:
        ckpt.save(4, _state(1.0), meta={"v": 1})
        ckpt.save(4, _state(2.0), meta={"v": 2})  # Orbax alone raises StepAlreadyExistsError
        assert ckpt.all_steps() == [4]
        state, meta = ckpt.restore(like=_state(0.0))
        assert meta == {"v": 2} and float(state["params"]["b"][0]) == 2.0


@pytest.mark.parametrize("damage", ["truncate_metadata", "remove_state"])
def test_damaged_latest_falls_back_to_the_previous_step(tmp_path, damage):
    import shutil

    with Checkpointer(tmp_path / "c", max_to_keep=2) as ckpt:
        ckpt.save(3, _state(3.0), meta={"epoch": 3})
        ckpt.save(4, _state(4.0), meta={"epoch": 4})
    step4 = tmp_path / "c" / "4" / "state"
    if damage == "truncate_metadata":
        text = (step4 / "_METADATA").read_bytes()
        (step4 / "_METADATA").write_bytes(text[: len(text) // 2])
    else:
        shutil.rmtree(step4)
    ckpt = Checkpointer(tmp_path / "c", max_to_keep=2)
    with pytest.warns(RuntimeWarning, match="4 cannot be read"):
        state, meta = ckpt.restore(like=_state(0.0))
    assert meta == {"epoch": 3} and ckpt.restored_step == 3
    np.testing.assert_array_equal(state["params"]["w"], np.full((3, 2), 3.0))
    with pytest.raises(CheckpointError, match="step 4"):  # an explicit step does not fall back
        ckpt.restore(like=_state(0.0), step=4)
    # saving over the damaged step works and is then preferred
    ckpt.save(4, _state(5.0), meta={"epoch": 4})
    assert ckpt.restore(like=_state(0.0))[1] == {"epoch": 4}


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    import shutil

    Checkpointer(tmp_path / "c").save(1, _state(1.0))
    shutil.rmtree(tmp_path / "c" / "1" / "state")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="no 'state' folder"):
        Checkpointer(tmp_path / "c").restore(like=_state(0.0))


def test_an_unfinished_save_is_reported_and_removed_by_the_next_save(tmp_path):
    import shutil

    from recrl.checkpoint import unfinished_saves

    Checkpointer(tmp_path / "c").save(4, _state(4.0), meta={"epoch": 4})
    # what a kill inside Orbax's save of step 5 leaves: its temporary folder, not renamed
    shutil.copytree(tmp_path / "c" / "4", tmp_path / "c" / "5.orbax-checkpoint-tmp")
    with pytest.warns(RuntimeWarning, match="save of step 5 did not finish"):
        ckpt = Checkpointer(tmp_path / "c")
    assert ckpt.all_steps() == [4]
    assert ckpt.restore(like=_state(0.0))[1] == {"epoch": 4}
    # opening (to read) leaves it alone: it could be a save in progress in another process
    assert unfinished_saves(tmp_path / "c") == ["5.orbax-checkpoint-tmp"]
    ckpt.save(6, _state(6.0), meta={"epoch": 6})  # a later step, not the unfinished one
    assert unfinished_saves(tmp_path / "c") == [] and ckpt.all_steps() == [4, 6]
