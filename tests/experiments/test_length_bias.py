"""The length-shortcut experiment at a tiny size: the qualitative claim of Theorem 1."""

import json

import numpy as np
import pytest

from experiments import length_bias as lb
from recrl.prs import rl


def test_runs_are_methods_table_entries():
    """length_bias and the ProRL pipeline share one methods table: a name means one thing."""
    from experiments.configs.prorl import METHODS

    runs = lb.resolve_runs(["prorl", "prorl_no_src", "rtg", "reinforce_no_src",
                            "grpo_seq_sum_no_src"])
    assert runs["prorl"] == METHODS["prorl"] == rl.Method("psae", src=True)
    assert runs["prorl_no_src"] == rl.Method("psae", src=False)
    assert runs["rtg"] == rl.Method("rtg", src=True)
    assert runs["reinforce_no_src"] == rl.Method("reinforce", src=False)
    assert runs["grpo_seq_sum_no_src"] == rl.Method("grpo", src=False, aggregation="seq_sum")
    with pytest.raises(ValueError, match="run 'a2c': a method with a critic"):
        lb.resolve_runs(["a2c"])
    with pytest.raises(ValueError, match="unknown RL method 'rtg\\+src'; known: prorl"):
        lb.resolve_runs(["rtg+src"])


def test_uncentred_reinforce_grows_length_and_prorl_settles():
    res = lb.run_all(["reinforce_no_src", "prorl"], steps=120, src_steps=10, prompts=16,
                     group_size=8, max_len=6, num_items=8, decay=0.7, noise=0.2, lr=0.05,
                     init_stop=0.3, seeds=2, seed=0)
    final = {k: v["metrics"]["length"][:, -10:].mean() for k, v in res["runs"].items()}
    start = res["runs"]["prorl"]["metrics"]["length"][:, 0].mean()
    assert final["reinforce_no_src"] > 5.5  # near the maximum of 6
    assert final["prorl"] < start < final["reinforce_no_src"]
    assert 1 <= res["centred_optimum"] < 6
    table = lb.summarise(res, 6)
    assert "| prorl |" in table and "| reinforce_no_src |" in table


def test_write_outputs(tmp_path):
    lb.write_outputs(str(tmp_path), ["rtg", "prorl"], steps=5, src_steps=2, prompts=4,
                     group_size=4, max_len=4, num_items=5, decay=0.7, noise=0.2, lr=0.05,
                     init_stop=0.3, seeds=1, seed=0)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and {r["run"] for r in rows} == {"rtg", "prorl"}
    assert all(np.isfinite(r["length"]) for r in rows)
    assert (tmp_path / "length_bias.png").stat().st_size > 10_000
    assert "| rtg |" in (tmp_path / "summary.md").read_text()
