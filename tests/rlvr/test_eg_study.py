"""The Evidence Gain study at a tiny size: pipeline, resumption, analysis, label agreement."""

import csv
import json

import numpy as np

from experiments import eg_study
from experiments.configs.icrlvr import get_config
from recrl.rlvr import tasks


class FakeSampler:
    """Reference solutions, every third with a wrong middle step (answer still right), every
    fourth with a wrong answer; counts the rows it was asked for."""

    def __init__(self):
        self.rows = 0

    def __call__(self, problems, key):
        out = []
        for p in problems:
            self.rows += 1
            steps = list(p.steps)
            if self.rows % 3 == 0:
                a, op, b, c = steps[0]
                steps[0] = (a, op, b, c + 1)
            ans = p.answer + (1 if self.rows % 4 == 0 else 0)
            text = tasks.format_steps(steps, ans)
            out.append((text, len(text), -0.1 * (self.rows % 5)))
        return out


def test_tiny_study_runs_resumes_and_reports(tmp_path):
    cfg = get_config("eg_study_tiny")
    s1 = FakeSampler()
    res = eg_study.run(cfg, str(tmp_path), sampler=s1)
    assert res["pilot"]["rows"][0]["accuracy"] == 0.75  # 1 in 4 answers wrong
    assert res["n_correct"] >= cfg.study.target_correct
    traces = [json.loads(x) for x in (tmp_path / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == res["n_traces"] and s1.rows == 4 + res["n_traces"]  # pilot + study
    eg = [json.loads(x) for x in (tmp_path / "eg.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in eg) == [t["id"] for t in traces if t["reward"] > 0]
    for r in eg:
        assert r["log_weight"] >= r["eg"] - 1e-4  # Jensen
    a = res["analysis"]
    assert a["n"] == res["n_correct"] and 0 < a["flawed"] < a["n"]
    sc = np.array([t["sc"] for t in traces if t["reward"] > 0])
    mlp = np.array([t["mean_logprob"] for t in traces if t["reward"] > 0])
    assert a["rho"]["mean_logprob"] == eg_study.spearman(mlp, sc)
    assert set(a["diff"]) == {"eg-mean_logprob", "log_weight-mean_logprob", "eg-length",
                              "log_weight-eg"}
    assert "ρ(eg) − ρ(mean_logprob)" in (tmp_path / "report.md").read_text()
    # the decision rule, recomputed from the intervals, for EG and for exact log w
    for k in ("eg", "log_weight"):
        lo, lo_d = a["rho_ci95"][k][0], a["diff"][f"{k}-mean_logprob"]["ci95"][0]
        assert a["decision"][f"{k}_tracks_quality"] == (lo > 0)
        assert a["decision"][f"{k}_beats_mean_logprob"] == (lo > 0 and lo_d > 0)
    assert "rests on the parser unchecked" in (tmp_path / "report.md").read_text()

    # resume with a larger target: only new chunks are sampled, old lines kept as they were
    cfg.study.target_correct = 100
    s2 = FakeSampler()
    res2 = eg_study.run(cfg, str(tmp_path), sampler=s2)
    assert s2.rows == cfg.study.max_questions * cfg.study.samples - len(traces)  # no pilot
    assert [json.loads(x) for x in (tmp_path / "traces.jsonl").read_text().splitlines()
            ][:len(traces)] == traces
    assert res2["n_traces"] == cfg.study.max_questions * cfg.study.samples

    # hand labels: copy the export, label every trace as the parser did except one
    rows = list(csv.DictReader(open(tmp_path / "label_sample.csv")))
    assert rows and all(r["hand_sc"] == "" for r in rows)
    for i, r in enumerate(rows):
        r["hand_sc"] = "0.5" if i == 0 and float(r["parser_sc"]) == 1.0 else r["parser_sc"]
    with open(tmp_path / "hand_labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res3 = eg_study.run(cfg, str(tmp_path), sampler=FakeSampler())
    h = res3["hand_agreement"]
    changed = float(rows[0]["hand_sc"]) != float(rows[0]["parser_sc"])
    assert h["n"] == len(rows) and h["exact"] == 1.0 - changed / len(rows)
