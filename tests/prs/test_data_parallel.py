"""ProRL's policy pretraining and evaluation data-parallel on the 4 fake CPU devices of
conftest.py: the same parameters / per-prompt results as one device.

The one-device reference is the plain path (``mesh=None``, host batches on the default
device); the mesh runs split every batch over 4 devices, padding batches that do not divide
with masked rows.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from recrl import parallel
from recrl.data.prorl import PathSamples
from recrl.prs import evaluate as ev
from recrl.prs.policy import PathPolicy, PolicyConfig
from recrl.prs.pretrain import PretrainConfig, demo_batch, pretrain, sequence_nll

N_ITEMS = 24
CFG = PolicyConfig(num_items=N_ITEMS, history=4, max_len=5, dim=16, n_heads=2, n_layers=1,
                   ffn_dim=32, dropout=0.1)


def _paths(n: int, seed: int) -> PathSamples:
    """``n`` random demonstrations: distinct items, the target never inside the path."""
    rng = np.random.default_rng(seed)
    items = np.stack([rng.permutation(N_ITEMS)[:CFG.history + CFG.max_len + 1]
                      for _ in range(n)])
    lengths = rng.integers(2, CFG.max_len + 1, n)
    path = items[:, CFG.history:CFG.history + CFG.max_len].copy()
    path[np.arange(CFG.max_len)[None] >= lengths[:, None]] = -1
    return PathSamples(history=items[:, :CFG.history], path=path, lengths=lengths,
                       target=items[:, -1], user=np.arange(n), start=np.zeros(n, int))


def _flat(policy):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
            jax.tree_util.tree_leaves_with_path(nnx.state(policy, nnx.Param))}


def _pretrain(n_train, batch_size, mesh):
    policy = PathPolicy(CFG, nnx.Rngs(0))
    cfg = PretrainConfig(epochs=2, batch_size=batch_size, lr=1e-2, seed=3)
    policy, history = pretrain(policy, _paths(n_train, 1), _paths(11, 2), cfg, mesh=mesh)
    # the policy comes back on one device, ready for the single-device stages
    assert all(len(x.sharding.device_set) == 1 for x in
               jax.tree.leaves(nnx.state(policy, nnx.Param)))
    return _flat(policy), history


@pytest.mark.parametrize("n_train,batch_size", [
    pytest.param(40, 8, marks=pytest.mark.slow), (10, 16)])
def test_pretraining_on_4_devices_equals_one_device(n_train, batch_size):
    """3 + 2 full batches of 8 (the remainder dropped, as on one device), and a 10-path
    set under a batch size of 16 (one 10-row batch, padded to 12 rows on the mesh); the
    11 validation paths are padded to 12 as well."""
    init = _flat(PathPolicy(CFG, nnx.Rngs(0)))
    want, hist_one = _pretrain(n_train, batch_size, None)
    mesh = parallel.data_mesh(4)
    got, hist_mesh = _pretrain(n_train, batch_size, mesh)
    moved = max(float(np.abs(want[k] - init[k]).max()) for k in init)
    assert moved > 1e-3, f"pretraining did not move the parameters ({moved})"
    for k in want:
        # AdamW divides by sqrt(v): the rounding of a near-zero gradient entry (summed in
        # another order) is amplified; 1e-4 is 1 % of one step of lr 1e-2
        np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=1e-4, err_msg=k)
    for a, b in zip(hist_one, hist_mesh, strict=True):
        np.testing.assert_allclose(b["train_nll"], a["train_nll"], rtol=1e-5)
        np.testing.assert_allclose(b["val_nll"], a["val_nll"], rtol=1e-5)


def test_masked_rows_count_for_nothing():
    """A weight-0 row (padding of a data-parallel batch) changes neither the NLL nor the
    token count; an unweighted batch is the plain mean."""
    policy = PathPolicy(CFG, nnx.Rngs(0))
    batch = demo_batch(_paths(6, 4), CFG.pad)
    graphdef, state = nnx.split(policy)
    nll_fn = jax.jit(lambda state, b: sequence_nll(nnx.merge(graphdef, state), b))
    nll, count = nll_fn(state, batch)
    junk = demo_batch(_paths(2, 5), CFG.pad)
    padded = {k: np.concatenate([batch[k], junk[k]]) for k in batch}
    padded["weight"] = np.r_[np.ones(6), np.zeros(2)].astype(np.float32)
    nll_p, count_p = nll_fn(state, padded)
    np.testing.assert_allclose(nll_p, nll, rtol=1e-6)
    assert float(count_p) == float(count) == float(np.sum(batch["lengths"] + 1))



def _sims():
    from recrl.prs import simulator

    return {"sasrec": simulator.build_simulator(simulator.SimConfig(
        kind="sasrec", num_items=N_ITEMS, dim=16, n_heads=1, n_layers=1, ffn_dim=16,
        max_len=12, dropout=0.0), seed=1)}


def test_evaluation_on_4_devices_equals_one_device():
    """6 prompts in a batch of up to 8 (padded to 8 on the mesh): greedy @1 and best-of-3
    sampled @K, per prompt."""
    policy = PathPolicy(CFG, nnx.Rngs(0))
    prompts = _paths(6, 6)
    genres = (np.random.default_rng(7).random((N_ITEMS, 64)) < 0.2).astype(np.float32)
    args = (policy, _sims(), prompts.history, prompts.target, genres)
    kw = dict(k=3, seed=4, batch_size=8, per_prompt=True)
    want_means, want = ev.evaluate_policy(*args, **kw)
    got_means, got = ev.evaluate_policy(*args, mesh=parallel.data_mesh(4), **kw)
    assert set(got) == set(want) and "sasrec/ioi@K" in want and "diversity@K" in want
    for name in want:
        assert got[name].shape == (6,), name
        if name.endswith(("length@1", "length@K", "has_target@1", "has_target@K")):
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:  # the same paths: the scores agree up to float rounding
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6,
                                       err_msg=name)
        assert got_means[name] == pytest.approx(want_means[name], rel=1e-5, abs=1e-6)
    # the sampled paths differ from the greedy ones: @K is not @1 in disguise
    assert not np.array_equal(want["sasrec/ioi@K"], want["sasrec/ioi@1"])


def test_heuristic_baselines_on_4_devices_equal_one_device():
    """IPG and greedy-sequential paths of 6 prompts (padded to 8 on the mesh) and their
    scores (``evaluate_paths``) under SASRec and GRU4Rec (a recurrent scan): the same paths
    and per-prompt metrics as one device."""
    from recrl.prs import simulator

    sims = {**_sims(), "gru4rec": simulator.build_simulator(simulator.SimConfig(
        kind="gru4rec", num_items=N_ITEMS, dim=8, max_len=12, dropout=0.0, gru_hidden=8),
        seed=2)}
    prompts = _paths(6, 8)
    h, t = prompts.history, prompts.target
    genres = (np.random.default_rng(9).random((N_ITEMS, 64)) < 0.2).astype(np.float32)
    mesh = parallel.data_mesh(4)
    for gen in (ev.ipg_paths, ev.greedy_sequential_paths):
        path, lengths = gen(sims["sasrec"], h, t, 3, top_k=6)
        got_path, got_len = gen(sims["sasrec"], h, t, 3, top_k=6, mesh=mesh)
        assert path.shape == (6, 3)
        np.testing.assert_array_equal(got_path, path)
        np.testing.assert_array_equal(got_len, lengths)
        # never the target, never an item already in the history or the path
        for row, hist, tgt in zip(path, h, t, strict=True):
            assert tgt not in row and len(set(row)) == 3 and not set(row) & set(hist)
        want = ev.evaluate_paths(sims, h, t, path, lengths, genres, N_ITEMS, per_prompt=True)
        got = ev.evaluate_paths(sims, h, t, path, lengths, genres, N_ITEMS, per_prompt=True,
                                mesh=mesh)
        assert set(got[1]) == set(want[1]) and {"sasrec/ioi@1", "gru4rec/ioi@1"} <= set(want[1])
        for name in want[1]:
            assert got[1][name].shape == (6,), name
            np.testing.assert_allclose(got[1][name], want[1][name], rtol=1e-5, atol=1e-6,
                                       err_msg=name)
            assert got[0][name] == pytest.approx(want[0][name], rel=1e-5, abs=1e-6)
    # greedy sequential's first item, by hand: of the simulator's top 6 unseen items after
    # the history, the one whose embedding is closest (dot product) to the target's
    sim = sims["sasrec"]
    logits = np.array(simulator.next_item_logits(sim, h, np.full(6, h.shape[1])))
    emb = np.asarray(sim.item_embeddings())
    for i in range(6):
        logits[i, list(h[i]) + [t[i]]] = -np.inf
        top = np.argsort(-logits[i], kind="stable")[:6]
        assert path[i, 0] == top[np.argmax(emb[top] @ emb[t[i]])]
