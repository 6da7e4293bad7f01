"""What the subsets of a finished ``decisive_cpu`` run contain (a post-hoc reading, not one
of the protocol's decision rules): per subset the number of distinct target titles and the
mean test-split frequency of its targets, and per budget the Spearman ρ of these with the
subsets' test NLL and HR@10. Writes ``subset_stats.md`` next to ``report.md``.

    python -m experiments.goracs_subset_stats \
        --config=experiments/configs/goracs.py:decisive_cpu --out_dir=runs/goracs_decisive_cpu
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags

from experiments.configs import validate as config_check
from recrl.coreset import evaluation

FLAGS = flags.FLAGS


def target_stats(pool_targets: np.ndarray, test_targets: np.ndarray,
                 indices: np.ndarray) -> tuple[int, float]:
    """``(distinct, test_freq)`` of the subset ``indices`` of the pool: how many distinct
    target items it holds, and how often its targets are, on average, a test target."""
    targets = np.asarray(pool_targets)[np.asarray(indices)]
    freq = np.bincount(np.asarray(test_targets), minlength=int(targets.max()) + 1)
    return int(np.unique(targets).size), float(freq[targets].mean())


def stats_lines(selections: dict, recs: dict, pool_targets: np.ndarray,
                test_targets: np.ndarray) -> list[str]:
    """The markdown table and, per budget, ρ of each statistic with test NLL and HR@10."""
    rows = {k: (s["budget"], *target_stats(pool_targets, test_targets, s["indices"]))
            for k, s in selections.items() if k in recs}
    lines = ["| subset | test NLL | HR@10 | distinct targets | mean test frequency |",
             "|---|---|---|---|---|"]
    for k, (_, distinct, freq) in sorted(rows.items(), key=lambda kv: (kv[1][0], kv[0])):
        lines.append(f"| {k} | {recs[k]['test_nll']:.4f} | {recs[k]['HR@10']:.4f} | "
                     f"{distinct} | {freq:.2f} |")
    for n in sorted({b for b, *_ in rows.values()}):
        names = [k for k, r in rows.items() if r[0] == n]
        if len(names) < 3:
            continue
        nll = np.array([recs[k]["test_nll"] for k in names])
        hit = np.array([recs[k]["HR@10"] for k in names])
        parts = []
        for col, label in ((1, "distinct targets"), (2, "mean test frequency")):
            x = np.array([rows[k][col] for k in names], np.float64)
            for y, ylabel in ((nll, "test NLL"), (hit, "HR@10")):
                rho, _ = evaluation.spearman(x, y, permutations=1)
                parts.append(f"ρ({label}, {ylabel}) = {rho:+.2f}")
        lines += ["", f"n = {n}, {len(names)} subsets: " + "; ".join(parts) + "."]
    return lines


def main(argv: list[str]) -> None:
    del argv
    from recrl.coreset import pipeline

    cfg, out = FLAGS.config, Path(FLAGS.out_dir)
    sel_path = out / "selections.json"
    if not sel_path.exists():
        raise FileNotFoundError(f"no {sel_path}: run the decisive protocol first")
    selections = json.loads(sel_path.read_text())
    recs = {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}
    data, _, _ = pipeline.load_decisive_data(cfg)
    lines = ["# What the decisive subsets contain (post hoc)", "",
             *stats_lines(selections, recs, data.splits["train"].target,
                          data.splits["test"].target)]
    text = "\n".join(lines) + "\n"
    (out / "subset_stats.md").write_text(text)
    print(text)


if __name__ == "__main__":
    config_check.define_config("config", "goracs.py:decisive_cpu",
                               "GORACS decisive config of the finished run.")
    flags.DEFINE_string("out_dir", "runs/goracs_decisive_cpu", "The finished run.")
    app.run(main)
