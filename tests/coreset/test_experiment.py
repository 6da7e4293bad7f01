"""The GORACS launcher end to end at the tiny (synthetic) size (slow: ~1 min of compiles)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import goracs, goracs_report
from experiments.configs.goracs import get_config
from recrl.coreset import pipeline


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
        assert 0.0 <= r["full/NDCG@10"] <= r["full/HR@10"] <= 1.0  # 3 full-catalogue rows
    assert sorted({r["budget"] for r in res["runs"] if r["method"] == "random"}) == [8, 10]
    assert json.loads((tmp_path / "results.json").read_text())["runs"]
    text = (tmp_path / "report.md").read_text()
    assert "| goracs | 8 (20 %) |" in text and "| goracs | 10 (25 %) |" in text
    assert "GORACS vs random on HR@10" in text and (tmp_path / "hr_vs_budget.png").exists()


def test_budgets_and_model_kind_checks():
    cfg = get_config("tiny")
    assert pipeline.budgets_of(cfg, 40) == [8, 10]
    cfg.budgets, cfg.budget_fractions = (64,), (0.5, 2.0)
    assert pipeline.budgets_of(cfg, 40) == [20, 40]  # clipped to the pool
    cfg.budgets, cfg.budget_fractions = (), ()
    with pytest.raises(ValueError, match="no budgets"):
        pipeline.budgets_of(cfg, 40)
    cfg.model.kind = "gpt"
    with pytest.raises(ValueError, match="unknown model kind 'gpt'"):
        pipeline.build_model(cfg)


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
        pipeline.load_data(cfg)


def test_pretrained_base_is_cached_and_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("RECRL_DATA", str(tmp_path))
    cfg = get_config("tiny")
    cfg.pretrain.update(cache=True, steps=2)
    titles = np.array(["Heat (1995)", "Up (2009)", "Alien (1979)"])
    first, encode = pipeline.build_model(cfg)
    losses = pipeline.pretrain_on_titles(cfg, first, encode, titles, cache_key="k")
    assert len(list((tmp_path / "goracs_base").iterdir())) == 1
    again, _ = pipeline.build_model(cfg)  # same seed-0 init: restoring must change it back
    assert pipeline.pretrain_on_titles(cfg, again, encode, titles, cache_key="k") == losses
    for a, b in zip(jax.tree.leaves(nnx.state(first)), jax.tree.leaves(nnx.state(again)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other, _ = pipeline.build_model(cfg)  # another key trains (and caches) anew
    pipeline.pretrain_on_titles(cfg, other, encode, titles, cache_key="other")
    assert len(list((tmp_path / "goracs_base").iterdir())) == 2


def test_versus_random_paired_and_unpaired_verdicts():
    # 100 prompts; GORACS hits the first 60, random the first 40 (same prompts otherwise)
    def run(method, hits, seed=0):
        ranks = [0] * hits + [50] * (100 - hits)
        return {"method": method, "budget": 8, "seed": seed, "HR@10": hits / 100,
                "ranks": ranks}

    lines = goracs_report.versus_random([run("goracs", 60), run("random", 40)], "HR@10", 100)
    # paired differences: 20 ones, 80 zeros -> mean 0.2, sd 0.402, half-width 0.0788
    assert "+0.2000 ± 0.0788 (paired): **beats random**" in lines[-1]
    lines = goracs_report.versus_random([run("goracs", 40), run("random", 41)], "HR@10", 100)
    assert "no significant difference" in lines[-1]
    unpaired = [{k: v for k, v in r.items() if k != "ranks"}
                for r in (run("goracs", 30), run("random", 60))]
    lines = goracs_report.versus_random(unpaired, "HR@10", 100)
    # 1.96 * sqrt(.3 * .7 + .6 * .4) / 10 = 0.1315
    assert "-0.3000 ± 0.1315 (unpaired): **worse than random**" in lines[-1]


@pytest.mark.slow
def test_decisive_protocol_end_to_end_and_resumable(tmp_path, monkeypatch):
    monkeypatch.setenv("RECRL_DATA", str(tmp_path / "data"))
    cfg = get_config("decisive_tiny")
    out = tmp_path / "run"
    goracs.run_decisive(cfg, str(out))
    sels = json.loads((out / "selections.json").read_text())
    want = {f"{m}_n6" for m in cfg.methods if m != "random"} | {"random_n6_s0",
                                                                 "random_n6_s1"}
    assert set(sels) == want
    assert sels["goracs_n6"]["exact_poo"] <= sels["greedy_n6"]["exact_poo"] + 1e-9
    users = np.load(out / "test_users.npy")
    assert len(users) == len(set(users.tolist())) == 30  # one window per test user
    for name in (*want, "base", "full"):
        rec = json.loads((out / "runs" / f"{name}.json").read_text())
        per = np.load(out / "runs" / f"{name}.npz")
        assert per["nll"].shape == per["ranks"].shape == (30,)
        assert rec["test_nll"] == pytest.approx(float(per["nll"].mean()), rel=1e-6)
        assert rec["HR@10"] == pytest.approx(float(np.mean(per["ranks"] < 10)))
        assert rec["steps_run"] <= cfg.finetune.max_steps
    text = (out / "report.md").read_text()
    assert "Spearman(exact POO, test NLL)" in text and "percentile" in text
    assert "paired, user-level" in text
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    (out / "runs" / "random_n6_s1.json").unlink()  # a lost run is redone, nothing else
    goracs.run_decisive(cfg, str(out))
    again = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    changed = {k for k in again if again[k] != stamp.get(k)}
    assert changed == {"random_n6_s1.json", "random_n6_s1.npz"}


def test_click_task_uses_the_papers_lambda():
    cfg = get_config("ml1m_cpu")
    assert pipeline.lam_of(cfg) == 0.1
    cfg.task = "click"
    assert pipeline.lam_of(cfg) == 0.5
    cfg.select.lam = 0.2
    assert pipeline.lam_of(cfg) == 0.2


def _fake_runs(out, cfg, nll_of_poo, users, seed=0):
    """Per-run files as run_decisive writes them, with test NLL = nll_of_poo(exact POO)."""
    rng = np.random.default_rng(seed)
    (out / "runs").mkdir(parents=True)
    np.save(out / "test_users.npy", users)
    names = [("goracs", None), ("greedy", None), *(("random", s) for s in range(6)),
             ("kcenter", None)]
    for i, (m, s) in enumerate(names):
        name = f"{m}_n100" + (f"_s{s}" if s is not None else "")
        poo = 0.1 + 0.01 * i
        nll = nll_of_poo(poo) + 0.01 * rng.normal(size=users.shape)
        ranks = rng.integers(0, 100, users.shape)
        np.savez(out / "runs" / f"{name}.npz", nll=nll, ranks=ranks)
        rec = {"name": name, "method": m, "budget": 100, "exact_poo": poo, "best_step": 25,
               "test_nll": float(nll.mean()), "NDCG@10": 0.0,
               "HR@10": float(np.mean(ranks < 10))}
        (out / "runs" / f"{name}.json").write_text(json.dumps(rec))


def test_decisive_report_applies_the_decision_rules(tmp_path):
    cfg = get_config("decisive_tiny")
    cfg.budgets, cfg.report.bootstrap = (100,), 500
    users = np.repeat(np.arange(200), 2)
    _fake_runs(tmp_path / "a", cfg, lambda p: 3.0 + 10 * p, users)  # NLL rises with POO
    text = goracs_report.decisive_report(tmp_path / "a", cfg)
    assert "ρ = +1.000" in text and "**POO predicts test NLL**" in text
    assert "percentile 0 %" in text  # GORACS (lowest POO) beats every random subset
    assert "test NLL: GORACS − random mean" in text and "**GORACS better**" in text
    root = Path(__file__).resolve().parents[2]  # the checkout under test, not an install
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.goracs",
         "--config=experiments/configs/goracs.py:decisive_tiny", "--config.budgets=(100,)",
         "--config.report.bootstrap=500", "--report_only", f"--out_dir={tmp_path / 'a'}"],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "**POO predicts test NLL**" in proc.stdout
    rng = np.random.default_rng(7)
    noise = {round(0.1 + 0.01 * i, 6): v for i, v in enumerate(rng.permutation(9))}
    _fake_runs(tmp_path / "b", cfg, lambda p: 3.0 + 0.001 * noise[round(p, 6)], users)
    text = goracs_report.decisive_report(tmp_path / "b", cfg)
    assert "**POO does not predict test NLL at n = 100**" in text
