"""GORACS ``protocol=decisive`` on the 4 fake CPU devices of conftest.py vs one device.

The default suite checks the mesh paths the protocol adds (EL2N scores, per-window NLL,
the early-stopped fine-tune with its checkpoint) against the single-device code; the slow
test runs the launcher's ``run_decisive`` on ``decisive_tiny`` with a 4-device and a
1-device mesh. The real multi-process run is ``tests/multiprocess/test_decisive.py``.
"""

import json

import jax
import numpy as np
import pytest

from recrl import parallel

N_DEV = 4


def _tiny_lora_model():
    from flax import nnx

    from recrl import models

    model = models.create_model(models.tiny_config(
        vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=32,
        max_seq_len=32), seed=0)
    models.add_lora(model, rank=2, alpha=4, targets=("q_proj", "v_proj"), rngs=nnx.Rngs(1))
    return model


def _rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 64, (n, 12)).astype(np.int32)
    mask = np.ones_like(tokens, bool)
    mask[1, 10:] = False
    loss_mask = np.zeros_like(mask)
    loss_mask[:, 8:] = mask[:, 8:]
    return tokens, mask, loss_mask


def test_el2n_and_answer_nll_on_the_mesh_equal_one_device():
    """10 rows in batches of 8 (the second padded on the mesh)."""
    from recrl.coreset import lmrec

    model, data = _tiny_lora_model(), _rows(10, 0)
    mesh = parallel.data_mesh(N_DEV)
    for name, fn in (("el2n", lambda m: lmrec.el2n_scores(model, *data, batch_size=8,
                                                          mesh=m)),
                     ("nll", lambda m: lmrec.mean_answer_nll(model, *data, batch_size=8,
                                                             mesh=m))):
        want, got = fn(None), fn(mesh)
        assert want.shape == (10,) and np.all(want > 1e-2), name
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)


def test_early_stopping_fine_tune_on_the_mesh_equals_one_device(tmp_path):
    """The same validation curve, stopping point and best adapters; on the mesh with a
    checkpoint, and again from that checkpoint (a rerun after a stop at the end)."""
    from flax import nnx

    from recrl import models
    from recrl.coreset import lmrec

    train, val = _rows(12, 1), _rows(6, 2)
    kw = dict(max_steps=6, eval_every=2, patience=2, batch_size=4, lr=5e-2, seed=3,
              eval_batch_size=4)
    runs = {}
    for name, mesh, ckpt in (("one device", None, None),
                             ("mesh", parallel.data_mesh(N_DEV), tmp_path / "ckpt"),
                             ("mesh, resumed", parallel.data_mesh(N_DEV), tmp_path / "ckpt")):
        model = _tiny_lora_model()
        info = lmrec.finetune_early_stopping(model, train, val, checkpoint_dir=ckpt,
                                             mesh=mesh, **kw)
        runs[name] = info, parallel.to_host(nnx.state(model, models.LoRAParam))
    want, params = runs["one device"]
    assert want["best_step"] > 0 and len(want["val_curve"]) >= 3  # it trained and improved
    for name in ("mesh", "mesh, resumed"):
        info, got = runs[name]
        assert (info["best_step"], info["steps_run"]) == (want["best_step"],
                                                          want["steps_run"]), name
        np.testing.assert_allclose(info["val_curve"], want["val_curve"], rtol=1e-5)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)


def test_decisive_refuses_a_fine_tune_batch_that_does_not_split(tmp_path):
    from experiments import goracs
    from experiments.configs.goracs import get_config

    cfg = get_config("decisive_tiny")
    cfg.finetune.batch_size = 6
    with pytest.raises(ValueError, match="finetune.batch_size .* not a multiple of the 4"):
        goracs.run_decisive(cfg, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_decisive_stages_are_kept_across_process_counts(tmp_path):
    """The cached-stage guard of ``run_decisive``: other distributed settings (a rerun on
    another process or device count) keep the finished stages; another model does not."""
    from experiments import goracs
    from experiments.configs import validate as config_check
    from experiments.configs.goracs import get_config
    from recrl import rundir

    cfg = get_config("decisive_tiny")
    out = tmp_path / "out"
    # a run directory whose record still counts the distributed settings (as before they
    # were declared free)
    rundir.guard_stages(out, cfg, config_check.GORACS_DECISIVE_STAGES,
                        [k for k in config_check.GORACS_DECISIVE_FREE
                         if k not in config_check.DISTRIBUTED_FREE])
    assert "num_processes" in (out / rundir.FINGERPRINTS).read_text()
    (out / "features.npz").write_bytes(b"finished stage")
    goracs._decisive_prepare(cfg, str(out))
    cfg.update(distributed=True, coordinator_address="10.0.0.1:1234", num_processes=2,
               process_id=1, num_devices=8)
    goracs._decisive_prepare(cfg, str(out))
    assert (out / "features.npz").read_bytes() == b"finished stage"
    cfg.model.dim = 48
    with pytest.raises(rundir.StageMismatchError, match="model.dim"):
        goracs._decisive_prepare(cfg, str(out))


@pytest.mark.slow
def test_decisive_run_on_4_devices_equals_1_device(tmp_path, monkeypatch):
    """``decisive_tiny`` end to end (10 subsets of 9 methods, plus base and full: 12 runs)
    with a 4-device and a 1-device mesh: the same features (within float rounding), the
    same subsets (D2-Pruning excepted, see below), and for every run on the same subset the
    same best step, per-window test NLL (rtol 1e-5) and ranks."""
    from experiments import goracs
    from experiments.configs.goracs import get_config

    monkeypatch.setenv("RECRL_DATA", str(tmp_path / "data"))
    got = {}
    for n in (1, N_DEV):
        cfg = get_config("decisive_tiny")
        cfg.num_devices = n
        goracs.run_decisive(cfg, str(tmp_path / str(n)))
        run = tmp_path / str(n)
        got[n] = (json.loads((run / "selections.json").read_text()),
                  dict(np.load(run / "features.npz")),
                  {p.stem: (json.loads(p.read_text()), dict(np.load(p.with_suffix(".npz"))))
                   for p in (run / "runs").glob("*.json")})
    (sels1, feats1, runs1), (sels4, feats4, runs4) = got[1], got[N_DEV]
    assert len(runs1) == 12 and runs1.keys() == runs4.keys() and sels1.keys() == sels4.keys()
    for k in feats1:
        np.testing.assert_allclose(feats4[k], feats1[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # D2-Pruning's kNN graph on the embeddings can change with their float rounding (it
    # does here: 2 of its 6 indices); every other selector must pick the same subset
    same = {k for k in sels1 if sels4[k]["indices"] == sels1[k]["indices"]}
    assert set(sels1) - same <= {"d2pruning_n6"}
    assert abs(runs1["full"][0]["test_nll"] - runs1["base"][0]["test_nll"]) > 1e-3
    for name in same | {"base", "full"}:
        (rec, per), (rec4, per4) = runs1[name], runs4[name]
        assert rec4["best_step"] == rec["best_step"], name
        np.testing.assert_allclose(per4["nll"], per["nll"], rtol=1e-5, err_msg=name)
        np.testing.assert_array_equal(per4["ranks"], per["ranks"])
