"""experiments.goracs_subset_stats: the post-hoc subset statistics, against hand values."""

import numpy as np

from experiments.goracs_subset_stats import stats_lines, target_stats


def test_target_stats_by_hand():
    pool = np.array([5, 5, 7, 2, 9])
    test = np.array([5, 5, 5, 7, 1])  # item 5 is a test target 3 times, 7 once, 2 and 9 never
    # subset {0, 1, 2}: targets 5, 5, 7 -> 2 distinct; frequencies 3, 3, 1 -> mean 7/3
    assert target_stats(pool, test, np.array([0, 1, 2])) == (2, 7 / 3)
    # subset {3, 4}: targets 2, 9 (9 beyond every test id) -> 2 distinct, frequency 0
    assert target_stats(pool, test, np.array([3, 4])) == (2, 0.0)


def test_stats_lines_table_and_correlations():
    pool = np.array([1, 1, 1, 2, 3, 4])
    test = np.array([1, 1, 2])
    sel = {"a": {"budget": 2, "indices": [0, 1]},   # 1 distinct, freq 2
           "b": {"budget": 2, "indices": [0, 3]},   # 2 distinct, freq 1.5
           "c": {"budget": 2, "indices": [4, 5]},   # 2 distinct, freq 0
           "d": {"budget": 2, "indices": [2, 4]},   # not fine-tuned: left out
           }
    recs = {"a": {"test_nll": 3.0, "HR@10": 0.3}, "b": {"test_nll": 2.0, "HR@10": 0.2},
            "c": {"test_nll": 1.0, "HR@10": 0.1}}
    lines = stats_lines(sel, recs, pool, test)
    assert "| a | 3.0000 | 0.3000 | 1 | 2.00 |" in lines
    assert "| c | 1.0000 | 0.1000 | 2 | 0.00 |" in lines
    assert not any(line.startswith("| d ") for line in lines)
    # frequency 2, 1.5, 0 rises with NLL 3, 2, 1 and HR 0.3, 0.2, 0.1 -> rho = +1
    summary = lines[-1]
    assert summary.startswith("n = 2, 3 subsets")
    assert "ρ(mean test frequency, test NLL) = +1.00" in summary
    assert "ρ(mean test frequency, HR@10) = +1.00" in summary
    # distinct 1, 2, 2 (ties: ranks 1, 2.5, 2.5) against NLL ranks 3, 2, 1 -> rho = -0.87
    assert "ρ(distinct targets, test NLL) = -0.87" in summary
