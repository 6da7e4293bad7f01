"""experiments/icrlvr at the tiny size, and its Spearman helper."""

import json

import numpy as np
import pytest

from experiments import icrlvr
from experiments.configs.icrlvr import get_config
from recrl.rlvr import quality
from recrl.rlvr.config import PRESETS, Method, method_config


def test_spearman_by_hand():
    # ranks x = (1, 2, 3, 4), y = (1, 3, 2, 4): d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8
    rho = quality.spearman(np.array([1, 2, 3, 4]), np.array([10, 30, 20, 40]))
    assert rho == pytest.approx(0.8)
    # ties get average ranks: x ranks (1.5, 1.5, 3), y (1, 2, 3) -> Pearson of ranks
    r = np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1]
    assert quality.spearman(np.array([5, 5, 7]), np.array([1, 2, 3])) == pytest.approx(r)
    assert np.isnan(quality.spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))


def test_methods_table_names_what_runs():
    from experiments.configs.icrlvr import METHODS, plain_method

    assert METHODS["ic_dapo"] == Method("dapo", in_context=True, eg_reweight=False)
    assert METHODS["eg_drgrpo"] == Method("drgrpo", in_context=False, eg_reweight=True)
    assert METHODS["grpo"] == Method("grpo")
    assert {m.preset for m in METHODS.values()} == set(PRESETS)
    assert plain_method("ic_drgrpo") == "drgrpo" and plain_method("dapo") == "dapo"
    assert get_config("tiny_cpu").methods == ("dapo", "ic_dapo", "eg_dapo")
    # the resolved entry decides the learner's settings, not a name
    cfg = method_config(METHODS["ic_grpo"], num_demo=3, group_size=4)
    assert (cfg.num_demo, cfg.eg_reweight, cfg.eps_high, cfg.aggregation) == (
        3, False, 0.2, "seq_mean_token_mean")
    cfg = method_config(METHODS["eg_dapo"], num_demo=3, group_size=4)
    assert (cfg.num_demo, cfg.eg_reweight, cfg.eps_high, cfg.dynamic_sampling) == (
        0, True, 0.28, True)
    with pytest.raises(ValueError, match="unknown preset 'ppo'"):
        Method("ppo")
    with pytest.raises(ValueError, match="unknown method 'ic_ppo'"):
        icrlvr.train_method("ic_ppo", 0, None, None, None, None, None, None)


def _check(res, out, methods):
    assert [r["method"] for r in res["runs"]] == list(methods)
    for r in res["runs"]:
        assert [c["step"] for c in r["curve"]] == [0, 2]
        assert all(np.isfinite(h["loss"]) for h in r["history"])
    assert res["quality"]["n_traces"] == 8
    text = (out / "report.md").read_text()
    assert "## (a) EG as a quality signal" in text and "| ic_dapo | 1 |" in text
    assert json.loads((out / "results.json").read_text())["variant"] == "tiny"
    assert (out / "curves.png").stat().st_size > 0


@pytest.mark.slow  # ~40 s of XLA compiles on 2 idle cores (2 min under load)
def test_tiny_run_in_context(tmp_path):
    cfg = get_config("tiny")
    cfg.methods = ("ic_dapo",)
    res = icrlvr.run(cfg, str(tmp_path))
    _check(res, tmp_path, cfg.methods)
    assert all(np.isfinite(h["reward_demo"]) and np.isfinite(h["reward_bare"])
               for h in res["runs"][0]["history"])


@pytest.mark.slow
def test_tiny_run_all_methods(tmp_path):
    cfg = get_config("tiny")
    res = icrlvr.run(cfg, str(tmp_path))
    _check(res, tmp_path, cfg.methods)
