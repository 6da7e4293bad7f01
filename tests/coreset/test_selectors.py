"""The selector registry and the GORACS methods table."""

import numpy as np
import pytest

from experiments.configs.goracs import DECISIVE_METHODS, METHOD_TABLE, METHODS, get_config
from recrl import coreset
from recrl.coreset import pipeline, selectors


def _features(num=30, nv=12, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    grad = rng.uniform(0.5, 2.0, num).astype(np.float32)
    return {"pool_emb": rng.normal(size=(num, dim)).astype(np.float32),
            "val_emb": rng.normal(size=(nv, dim)).astype(np.float32),
            "grad": grad, "grand": rng.uniform(0.1, 1.0, num), "el2n": rng.uniform(0, 1, num),
            "influence": rng.normal(size=num)}


def test_every_table_entry_names_a_registered_selector():
    assert set(METHODS) <= set(METHOD_TABLE) and set(DECISIVE_METHODS) <= set(METHOD_TABLE)
    for name, entry in METHOD_TABLE.items():
        assert entry.selector in selectors.SELECTORS, name
    with pytest.raises(ValueError, match="unknown selector 'nope'; known: .*goracs"):
        selectors.get_selector("nope")
    with pytest.raises(ValueError, match="'random' is already registered"):
        selectors.register("random")(lambda *a: None)


def test_selectors_call_the_methods_they_name():
    feats, n, seed = _features(), 7, 3
    opts = {"gamma": 0.5}
    want = {
        "random": coreset.random_subset(30, n, seed),
        "el2n": coreset.el2n(feats["el2n"], n, seed),
        "grand": coreset.grand(feats["grand"], n, seed),
        "ccs": coreset.ccs(feats["el2n"], n, seed=seed),
        "kcenter": coreset.kcenter_greedy(feats["pool_emb"], n, seed),
        "dealrec": coreset.dealrec(feats["grand"], n, influence=feats["influence"], gamma=0.5,
                                   seed=seed),
        "full": np.arange(30),
    }
    for name, idx in want.items():
        got = selectors.run_method(selectors.Method(name), feats, n, seed, opts)
        np.testing.assert_array_equal(got["indices"], idx, err_msg=name)
        assert got["trace"] == [] and got["seconds"] >= 0.0


def test_goracs_and_greedy_selectors_use_the_select_options():
    feats = _features()
    opts = dict(lam=0.3, max_iters=3, cut=4, max_checks=5, epsilon=0.05, threshold=1e-3)
    got = selectors.run_method(selectors.Method("goracs", "select"), feats, 6, 0, opts)
    want = coreset.select(feats["pool_emb"], feats["val_emb"], feats["grad"], 6, **opts)
    np.testing.assert_array_equal(got["indices"], want.indices)
    assert got["trace"] == want.trace.tolist()
    greedy = selectors.run_method(selectors.Method("greedy", "select"), feats, 6, 0, opts)
    start = coreset.select(feats["pool_emb"], feats["val_emb"], feats["grad"], 6,
                           **{**opts, "max_iters": 0})
    np.testing.assert_array_equal(greedy["indices"], start.indices)
    assert len(greedy["trace"]) == 1  # the greedy start's value only
    assert selectors.get_selector("goracs").deterministic
    assert not selectors.get_selector("random").deterministic


def test_method_options_resolve_the_papers_lambda_per_task():
    cfg = get_config("tiny")
    assert pipeline.method_options(cfg, METHOD_TABLE["random"]) == {}
    assert pipeline.method_options(cfg, METHOD_TABLE["goracs"])["lam"] == 0.1
    cfg.task = "click"
    opts = pipeline.method_options(cfg, METHOD_TABLE["goracs"])
    assert opts["lam"] == 0.5 and opts["max_iters"] == cfg.select.max_iters
    assert pipeline.method_options(cfg, METHOD_TABLE["dealrec"])["gamma"] == cfg.dealrec.gamma
