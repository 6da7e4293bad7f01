"""The GORACS launcher end to end at the tiny (synthetic) size (slow: ~1 min of compiles)."""

import json

import pytest

from experiments import goracs
from experiments.configs.goracs import get_config


@pytest.mark.slow
def test_tiny_pipeline_writes_results_and_report(tmp_path):
    cfg = get_config("tiny")
    res = goracs.run(cfg, str(tmp_path))
    methods = {r["method"] for r in res["runs"]}
    assert methods == {"base", *cfg.methods}
    g = next(r for r in res["runs"] if r["method"] == "goracs")
    rnd = next(r for r in res["runs"] if r["method"] == "random")
    assert g["exact_poo"] < rnd["exact_poo"]  # the objective GORACS minimises
    assert all(b < a for a, b in zip(g["trace"], g["trace"][1:], strict=False))
    for r in res["runs"]:
        assert 0.0 <= r["NDCG@10"] <= r["HR@10"] <= 1.0
    assert json.loads((tmp_path / "results.json").read_text())["runs"]
    text = (tmp_path / "report.md").read_text()
    assert "| goracs | 8 |" in text and (tmp_path / "hr_vs_budget.png").exists()


def test_unknown_variant():
    with pytest.raises(ValueError, match="known"):
        get_config("nope")


@pytest.mark.slow
def test_tiny_click_task_uses_labels_and_reports_auc(tmp_path):
    cfg = get_config("tiny")
    cfg.task = "click"
    cfg.methods = ("goracs", "random")
    res = goracs.run(cfg, str(tmp_path))
    for r in res["runs"]:
        assert 0.0 <= r["AUC"] <= 1.0 or r["AUC"] != r["AUC"]  # NaN only with one class
        assert r["logloss"] > 0.0
    g = next(r for r in res["runs"] if r["method"] == "goracs")  # label-enhanced split
    n = g["budget"]
    assert g["selected_pos_rate"] * n == pytest.approx(round(n * g["val_pos_rate"]), abs=1e-9)
    text = (tmp_path / "report.md").read_text()
    assert "click" in text and "| AUC | logloss |" in text


def test_unknown_task_is_a_clear_error():
    cfg = get_config("tiny")
    cfg.task = "clik"
    with pytest.raises(ValueError, match="unknown task 'clik'"):
        goracs.load_data(cfg)
