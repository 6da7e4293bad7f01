"""The shared supervised fine-tuning loop against a hand-written AdamW loop."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recrl.models.finetune import draw_rows, sft_loop


def _loss(params, frozen, x, y):
    return jnp.mean((x @ params["w"] + frozen["b"] - y) ** 2)


def _data(rows=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    return x, (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3).astype(np.float32)


@pytest.mark.parametrize("batch_size", [2, 8])  # 8 > 5 rows: drawn with replacement
def test_sft_loop_matches_a_hand_written_loop(batch_size):
    x, y = _data()
    params, frozen = {"w": jnp.zeros(3)}, {"b": jnp.float32(0.3)}
    got, losses = sft_loop(_loss, params, frozen, (x, y), steps=6, batch_size=batch_size,
                           lr=0.1, seed=4)
    tx = optax.adamw(0.1, weight_decay=0.0)
    p, state, rng, want = {"w": jnp.zeros(3)}, None, np.random.default_rng(4), []
    state = tx.init(p)
    for _ in range(6):
        idx = rng.choice(5, batch_size, replace=batch_size > 5)
        w = p["w"]
        resid = x[idx] @ np.asarray(w) + 0.3 - y[idx]
        want.append(float(np.mean(resid ** 2)))
        grad = {"w": jnp.asarray(2 * x[idx].T @ resid / batch_size)}
        upd, state = tx.update(grad, state, p)
        p = optax.apply_updates(p, upd)
    np.testing.assert_allclose(losses, want, rtol=1e-5)
    np.testing.assert_allclose(got["w"], p["w"], rtol=1e-5, atol=1e-6)
    assert losses[-1] < losses[0]


def test_on_step_stops_the_loop_and_sees_every_step():
    x, y = _data()
    seen = []
    _, losses = sft_loop(_loss, {"w": jnp.zeros(3)}, {"b": jnp.float32(0.0)}, (x, y),
                         steps=10, batch_size=2, lr=0.1,
                         on_step=lambda t, p, o: seen.append(t) or t == 4)
    assert seen == [1, 2, 3, 4] and len(losses) == 4


def test_draw_rows_replaces_only_when_short():
    rows = draw_rows(np.random.default_rng(0), 10, 10)
    assert sorted(rows.tolist()) == list(range(10))
    assert len(draw_rows(np.random.default_rng(0), 3, 7)) == 7


def test_data_parallel_loop_matches_one_device_and_names_a_bad_batch():
    from recrl import parallel

    mesh = parallel.data_mesh(4)  # the 4 fake CPU devices of tests/conftest.py
    x, y = _data(rows=12)
    kw = dict(steps=5, batch_size=8, lr=0.1, seed=2)
    one, l1 = sft_loop(_loss, {"w": jnp.zeros(3)}, {"b": jnp.float32(0.3)}, (x, y), **kw)
    many, l4 = sft_loop(_loss, {"w": jnp.zeros(3)}, {"b": jnp.float32(0.3)}, (x, y),
                        mesh=mesh, donate_params=True, **kw)
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(many["w"]), np.asarray(one["w"]), rtol=1e-5)
    with pytest.raises(ValueError, match="sft.batch_size=6 is not a multiple of the 4"):
        sft_loop(_loss, {"w": jnp.zeros(3)}, {"b": jnp.float32(0.3)}, (x, y), steps=1,
                 batch_size=6, lr=0.1, mesh=mesh, batch_name="sft.batch_size")
