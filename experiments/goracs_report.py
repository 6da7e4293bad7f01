"""GORACS reports: ``report.md`` and plots of the default protocol (from ``results.json``)
and of the decisive protocol (from the per-run files under ``runs/``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recrl.coreset import evaluation
from recrl.coreset.pipeline import PRIMARY, TASK_METRICS, task_of


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def atomic_write(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file (never a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _fmt(vals: list[float]) -> str:
    return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if len(vals) > 1 else f"{vals[0]:.4f}"


def versus_random(runs: list[dict], key: str, num_test: int) -> list[str]:
    """Per budget: does GORACS beat random on ``key``, beyond test-set and seed noise?

    With per-prompt ranks (``HR@K`` keys) the comparison is paired: per test prompt the
    seed-mean hit of each method, the mean difference and its 95 % interval
    (``1.96 · std / √N``). Without them (older results, or other metrics) an unpaired
    interval: the seed-mean difference ± 1.96 · √(p₁(1−p₁) + p₂(1−p₂)) / √N (a conservative
    binomial bound for hit rates). "beats" / "worse" only when the interval excludes 0.
    """
    out = [f"GORACS vs random on {key} (mean over seeds; 95 % interval over the {num_test} "
           "test prompts):", ""]
    k = int(key.split("@")[1]) if key.startswith("HR@") else None
    for b in sorted({r["budget"] for r in runs if r["method"] == "goracs"}):
        g = [r for r in runs if r["method"] == "goracs" and r["budget"] == b]
        rnd = [r for r in runs if r["method"] == "random" and r["budget"] == b]
        if not rnd:
            continue
        mg, mr = np.mean([r[key] for r in g]), np.mean([r[key] for r in rnd])
        if k is not None and all("ranks" in r for r in g + rnd):
            hits = [np.mean([np.asarray(r["ranks"]) < k for r in rs], 0) for rs in (g, rnd)]
            diff = hits[0] - hits[1]
            d, half, how = diff.mean(), 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)), "paired"
        else:
            d = mg - mr
            half = 1.96 * np.sqrt(mg * (1 - mg) + mr * (1 - mr)) / np.sqrt(num_test)
            how = "unpaired"
        verdict = ("beats random" if d - half > 0 else "worse than random" if d + half < 0
                   else "no significant difference")
        out.append(f"- n = {b}: GORACS {mg:.4f} vs random {mr:.4f}: {d:+.4f} ± {half:.4f} "
                   f"({how}): **{verdict}**")
    return out


def _plot_trace(out: Path, runs: list[dict]) -> None:
    """``poo_trace.png``: GORACS's POO over the accepted swaps, one line per budget."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    drawn = set()
    for r in runs:  # GORACS is deterministic: one trace per budget
        if r.get("trace") and r["budget"] not in drawn:
            drawn.add(r["budget"])
            ax.plot(r["trace"], label=f"n={r['budget']}")
    ax.set_xlabel("accepted swap"), ax.set_ylabel("POO (Sinkhorn)"), ax.legend(fontsize=6)
    fig.tight_layout(), fig.savefig(out / "poo_trace.png", dpi=100), plt.close(fig)


def _plot_budget(out: Path, runs: list[dict], key: str) -> None:
    """``hr_vs_budget.png``: the primary metric against the budget, per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.3))
    for method in sorted({r["method"] for r in runs} - {"base", "full"}):
        bs = sorted({r["budget"] for r in runs if r["method"] == method})
        vals = [[r[key] for r in runs if r["method"] == method and r["budget"] == b]
                for b in bs]
        ax.errorbar(bs, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals],
                    fmt="o-", capsize=2, lw=2.5 if method == "goracs" else 1, label=method)
    for method, style in (("base", "--"), ("full", ":")):
        ref = [r[key] for r in runs if r["method"] == method]
        if ref:
            ax.axhline(np.mean(ref), color="k", ls=style, lw=1,
                       label="no fine-tuning" if method == "base" else "full data")
    ax.set_xscale("log"), ax.set_xlabel("budget"), ax.set_ylabel(key), ax.legend(fontsize=6)
    fig.tight_layout(), fig.savefig(out / "hr_vs_budget.png", dpi=100), plt.close(fig)


def _table(runs: list[dict], metrics: tuple[str, ...], pool: int) -> list[str]:
    """One row per (budget, method): mean ± std over seeds of each metric and POO."""
    lines = ["| method | budget (% of pool) | seeds | " + " | ".join(metrics)
             + " | POO (Sinkhorn) | exact POO | select s |",
             "|" + "---|" * (len(metrics) + 6)]
    for budget, method in sorted({(r["budget"], r["method"]) for r in runs}):
        rs = [r for r in runs if r["method"] == method and r["budget"] == budget]
        row = [method, f"{budget} ({100 * budget / pool:.3g} %)", str(len(rs))]
        row += [_fmt([r[k] for r in rs]) for k in metrics]
        for k in ("poo", "exact_poo", "select_seconds"):
            row.append(_fmt([r[k] for r in rs]) if k in rs[0] else "–")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_report(out: Path, results: dict) -> str:
    """``report.md`` (mean ± std over seeds) plus ``poo_trace.png`` and ``hr_vs_budget.png``."""
    runs, cfg = results["runs"], results["config"]
    task = task_of(cfg)
    metrics, key = TASK_METRICS[task], PRIMARY[task]
    metrics = (*metrics, *(k for k in ("full/HR@10", "full/NDCG@10") if k in runs[0]))
    what = ("click task (AUC / log-loss of log p(Yes) − log p(No))" if task == "click" else
            f"candidates per test sample: {1 + cfg['data']['num_negatives']}"
            + (f"; full/ = the whole catalogue, first {cfg['eval']['full_catalogue']} test "
               "samples, the user's earlier items excluded" if "full/HR@10" in runs[0]
               else ""))
    lines = [f"# GORACS report ({cfg['variant']}, {task})", "",
             f"Samples: {results['sizes']}; {what}; model {cfg['model']['kind']}; feature pass "
             f"{results['feature_seconds']:.1f} s; one evaluation "
             f"{results.get('eval_seconds', float('nan')):.1f} s. Mean ± std over seeds.", "",
             *_table(runs, metrics, results["sizes"]["train"]),
             "", *versus_random(runs, key, results["sizes"]["test"]), "",
             "![POO over refinement](poo_trace.png)", "",
             f"![{key} vs budget](hr_vs_budget.png)", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    _plot_trace(out, runs)
    _plot_budget(out, runs, key)
    return text


# --- decisive protocol ----------------------------------------------------------------

def _plot_nll_vs_poo(out: Path, recs: dict, cfg) -> None:
    """``nll_vs_poo.png``: mean test NLL against exact POO, one panel per budget."""
    plt = _pyplot()
    budgets = list(cfg.budgets)
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.5 * len(budgets), 3.4),
                             squeeze=False)
    for ax, n in zip(axes[0], budgets, strict=True):
        rs = [r for r in recs.values() if r.get("budget") == n]
        for r in rs:
            rnd = r["method"] == "random"
            ax.scatter(r["exact_poo"], r["test_nll"], s=12 if rnd else 30,
                       c="0.6" if rnd else "C3" if r["method"] == "goracs" else "C0")
            if not rnd:
                ax.annotate(r["method"], (r["exact_poo"], r["test_nll"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
        ax.set_title(f"n = {n} (grey: random subsets)", fontsize=8)
        ax.set_xlabel("exact POO"), ax.set_ylabel("test NLL")
    fig.tight_layout(), fig.savefig(out / "nll_vs_poo.png", dpi=100), plt.close(fig)


def _decisive_rows(names, recs, per, users, boot) -> list[str]:
    """The table of one budget's subsets, sorted by exact POO."""
    lines = ["| subset | exact POO | test NLL [95 % CI] | HR@10 [95 % CI] | NDCG@10 | "
             "best step |", "|---|---|---|---|---|---|"]
    for k in sorted(names, key=lambda k: recs[k]["exact_poo"]):
        r, p = recs[k], per[k]
        a = evaluation.user_interval(p["nll"], users, **boot)
        h = evaluation.user_interval((p["ranks"] < 10).astype(float), users, **boot)
        lines.append(f"| {k} | {r['exact_poo']:.5f} | {a.mean:.4f} [{a.lo:.4f}, "
                     f"{a.hi:.4f}] | {h.mean:.4f} [{h.lo:.4f}, {h.hi:.4f}] | "
                     f"{r['NDCG@10']:.4f} | {r['best_step']} |")
    return lines


def _decisive_vs_random(n, names, recs, per, users, boot) -> list[str]:
    """Decision rules 2 and 3: GORACS's percentile among the random subsets and its paired,
    user-level difference from their mean (test NLL and HR@10)."""
    rnd = [k for k in names if recs[k]["method"] == "random"]
    g = f"goracs_n{n}"
    if g not in recs or not rnd:
        return []
    pct = evaluation.percentile(recs[g]["test_nll"],
                                np.array([recs[k]["test_nll"] for k in rnd]))
    lines = [f"2. GORACS's test NLL is lower than that of {100 - pct:.0f} % of "
             f"the {len(rnd)} random subsets (percentile {pct:.0f} %)."]
    for key, better_low, label in (("nll", True, "test NLL"), ("hit", False, "HR@10")):
        def vals(k, key=key):
            return per[k]["nll"] if key == "nll" else (per[k]["ranks"] < 10).astype(float)
        diff = vals(g) - np.mean([vals(k) for k in rnd], 0)
        iv = evaluation.user_interval(diff, users, **boot)
        good = iv.hi < 0 if better_low else iv.lo > 0
        bad = iv.lo > 0 if better_low else iv.hi < 0
        verdict = ("GORACS better" if good else "GORACS worse" if bad
                   else "no difference detected")
        lines.append(f"3. {label}: GORACS − random mean = {iv.mean:+.4f} "
                     f"[{iv.lo:+.4f}, {iv.hi:+.4f}] (paired, user-level): **{verdict}**.")
    return lines


def _decisive_budget(n, recs, per, users, boot) -> list[str]:
    """The section of budget ``n``: table, Spearman rule, comparison with random."""
    names = [k for k, r in recs.items() if r.get("budget") == n]
    if not names:
        return []
    lines = ["", f"## n = {n}", "", *_decisive_rows(names, recs, per, users, boot), ""]
    if len(names) >= 3:
        poo = np.array([recs[k]["exact_poo"] for k in names])
        nll = np.array([recs[k]["test_nll"] for k in names])
        rho, pval = evaluation.spearman(poo, nll)
        yes = rho > 0 and pval < 0.05
        lines.append(f"1. Spearman(exact POO, test NLL) over {len(names)} subsets: "
                     f"ρ = {rho:+.3f}, one-sided permutation p = {pval:.4f}: **"
                     + ("POO predicts test NLL" if yes else
                        f"POO does not predict test NLL at n = {n}") + "**.")
    return lines + _decisive_vs_random(n, names, recs, per, users, boot)


def decisive_report(out: Path, cfg) -> str:
    """``report.md`` of the decisive protocol from the per-run files (decision rules as in
    docs/goracs.md)."""
    users = np.load(out / "test_users.npy")
    recs = {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}
    per = {k: dict(np.load(out / "runs" / f"{k}.npz")) for k in recs}
    boot = dict(num=cfg.report.bootstrap, seed=0)
    ft_cfg = cfg.finetune
    lines = [f"# GORACS decisive report ({cfg.variant})", "",
             f"Test windows: {len(users)} (one per test user); primary metric: test NLL of "
             "the target title (mean answer-token NLL; lower is better); 95 % user-level "
             f"bootstrap intervals ({cfg.report.bootstrap} resamples). Fine-tuning: at most "
             f"{ft_cfg.max_steps} steps of batch {ft_cfg.batch_size}, validation loss "
             f"every {ft_cfg.eval_every} steps, patience {ft_cfg.patience}, the "
             "best validation point tested.", ""]
    for ref in ("base", "full"):
        if ref in recs:
            iv = evaluation.user_interval(per[ref]["nll"], users, **boot)
            lines.append(f"- {ref}: NLL {iv.mean:.4f} [{iv.lo:.4f}, {iv.hi:.4f}], "
                         f"HR@10 {recs[ref]['HR@10']:.4f}")
    for n in cfg.budgets:
        lines += _decisive_budget(n, recs, per, users, boot)
    lines += ["", "![test NLL vs exact POO](nll_vs_poo.png)"]
    text = "\n".join(lines) + "\n"
    atomic_write(out / "report.md", text)
    _plot_nll_vs_poo(out, recs, cfg)
    return text
