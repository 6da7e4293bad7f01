"""The ProRL launcher end to end at the tiny (synthetic) size, with a killed-and-resumed run."""

import json
import shutil

import numpy as np
import pytest

from experiments import prorl
from experiments.configs.prorl import get_config, method
from recrl.prs import pipeline
from recrl.prs import train as rl_train


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prorl_full")
    cfg = get_config("tiny")
    cfg.methods = ("prorl",)
    cfg.baselines = ("pretrained", "mined", "ipg")
    return cfg, out, prorl.run(cfg, str(out))


def test_tiny_pipeline_writes_results_report_and_metrics(full_run):
    cfg, out, res = full_run
    assert [r["method"] for r in res["runs"]] == ["prorl"]
    test = res["runs"][0]["test"]
    for key in ("sasrec/ioi@1", "sasrec/ctr@1", "gru4rec/ior@1", "diversity@K",
                "unseen/sasrec/ioi@1"):
        assert np.isfinite(test[key]), key
    assert set(res["baselines"]) == {"pretrained", "mined", "ipg"}
    # no generated path that is scored contains its target (policy, @K samples, heuristic)
    for m in (test, *res["baselines"].values()):
        assert m["sasrec/has_target@1"] == 0.0
    assert test["sasrec/has_target@K"] == 0.0
    # user-clustered intervals for every system and for ProRL - baseline, on all users
    iv = res["intervals"]
    assert set(iv["systems"]) == {"prorl", "pretrained", "mined", "ipg"}
    ci = iv["systems"]["prorl"]["sasrec/ioi@1"]
    assert ci["lo"] <= ci["mean"] <= ci["hi"]
    assert set(iv["vs_prorl"]) == {"pretrained", "mined", "ipg"}
    users, per = pipeline.load_per_prompt(out / "rl" / "prorl_s0" / "test_prompts.npz")
    assert 0 < len(users) <= cfg.eval.max_prompts and ci["clusters"] == len(set(users.tolist()))
    np.testing.assert_allclose(per["sasrec/ioi@1"].mean(), test["sasrec/ioi@1"], rtol=1e-5)
    # diagnostics: blocks of updates and the gradient cosine / SNR at start and end
    run = res["runs"][0]
    assert set(run["grad_diag"]) == {"start", "end"}
    assert -1 <= run["grad_diag"]["end"]["cosine"] <= 1 and run["grad_diag"]["end"]["snr"] > 0
    blocks = run["history"][0]["blocks"]
    assert len(blocks["length"]) == 1 and "centred_pos1" in blocks
    report = (out / "report.md").read_text()
    assert "| **prorl** (1 seeds) |" in report and "| ipg |" in report
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == cfg.rl.epochs * cfg.rl.steps_per_epoch
    assert all(r["finite"] == 1.0 for r in rows)
    # SRC statistics were gathered in epoch 1 only and are part of the result
    assert len(res["runs"][0]["src_mean"]) == 3
    assert (out / "training.png").stat().st_size > 10_000


def test_killed_run_resumes_to_the_same_result(full_run, tmp_path, monkeypatch):
    """Killed after epoch 1 and resumed on a slowed-down machine (every RL step sleeps):
    budgets are in steps, so the result is the uninterrupted run's."""
    from tests.experiments.test_prorl_budget import slow_down

    cfg, out, res = full_run
    # reuse the trained simulators and pretrained policy; redo the RL run
    for name in ("sasrec", "gru4rec", "policy_pretrained"):
        shutil.copytree(out / name, tmp_path / name)
    shutil.copy(out / "baselines.json", tmp_path / "baselines.json")

    def kill(method, epoch):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        prorl.run(cfg, str(tmp_path), on_epoch_end=kill)
    assert not (tmp_path / "rl" / "prorl_s0" / "result.json").exists()
    slow_down(monkeypatch, 0.2, modules=(rl_train,))
    resumed = prorl.run(cfg, str(tmp_path))
    a, b = res["runs"][0], resumed["runs"][0]
    assert a["best_epoch"] == b["best_epoch"]
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert set(ra) == set(rb)
        for k in ra:
            x, y = (ra[k], rb[k]) if k != "blocks" else (list(ra[k].values()),
                                                          list(rb[k].values()))
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=k)
    for k in a["test"]:
        np.testing.assert_allclose(a["test"][k], b["test"][k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_unknown_method_and_variant_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown prorl config variant 'huge'"):
        get_config("huge")
    with pytest.raises(ValueError, match="unknown RL method 'ppo'"):
        method("ppo")


def test_report_only_rebuilds_the_report_from_finished_runs(full_run, tmp_path):
    cfg, out, res = full_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "report.md").unlink()
    (copy / "results.json").unlink()
    again = prorl.report_only(cfg, str(copy))
    assert again["runs"] == json.loads(json.dumps(res["runs"]))
    assert "| **prorl** (1 seeds) |" in (copy / "report.md").read_text()
    with pytest.raises(FileNotFoundError, match="baselines.json is missing"):
        prorl.report_only(cfg, str(tmp_path / "empty"))
