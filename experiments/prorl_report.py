"""Report of a ProRL run: results table beside the paper's numbers, and training plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# ML-1M, SASRec evaluator, @1 (ProRL paper, main table and estimator ablation)
PAPER = {
    "pretrained": {"ctr": 0.867, "coherence": None, "ioi": 0.860, "ior": 254.4},
    "ipg": {"ctr": 0.446, "coherence": 0.373, "ioi": 2.254, "ior": 169.3},
    "prorl": {"ctr": 0.854, "coherence": 0.842, "ioi": 2.850, "ior": 728.2},
    "prorl_no_src": {"ctr": 0.973, "coherence": None, "ioi": 1.237, "ior": 650.0},
    "prorl_no_psae": {"ctr": 0.746, "coherence": None, "ioi": 2.556, "ior": 695.9},
    "reinforce": {"ctr": 0.581, "coherence": None, "ioi": 1.626, "ior": 329.8},
    "grpo": {"ctr": 0.633, "coherence": None, "ioi": 1.483, "ior": 284.9},
    "rtg": {"ctr": 0.694, "coherence": None, "ioi": 2.383, "ior": 675.7},
    "a2c": {"ctr": 0.857, "coherence": None, "ioi": 1.695, "ior": 527.5},
}
# The paper's epoch-1 predictions (estimator ablation, ML-1M): sampled path length and the
# advantage variance normalised by REINFORCE's first epoch. Decision rules: docs/prorl.md,
# "The epoch-1 predictions and how they are decided" (stated before any run).
EPOCH1_LENGTH = {"prorl": 1.6, "reinforce": 5.2, "grpo": 10.0}
EPOCH1_VARIANCE = {"prorl": 0.06, "reinforce": 1.0, "grpo": 0.22}
LENGTH_BAND = 1.5  # a length prediction x holds within [x / 1.5, min(1.5 x, L_max)]
VARIANCE_BAND = 2.0  # a variance prediction v holds within [v / 2, 2 v]

COLS = [("sasrec/ctr@1", "CTR"), ("sasrec/coherence@1", "Coh"), ("sasrec/ioi@1", "IoI"),
        ("sasrec/ior@1", "IoR"), ("sasrec/length@1", "len"), ("gru4rec/ioi@1", "IoI (GRU)"),
        ("gru4rec/ior@1", "IoR (GRU)"), ("sasrec/ioi@K", "IoI@K"), ("diversity@K", "div@K"),
        ("unseen/sasrec/ioi@1", "IoI unseen")]


def _fmt(vals: list[float]) -> str:
    if not vals:
        return "–"
    a = np.asarray(vals, float)
    big = np.abs(a).mean() >= 10
    if len(a) == 1:
        return f"{a[0]:.1f}" if big else f"{a[0]:.3f}"
    return f"{a.mean():.1f} ± {a.std():.1f}" if big else f"{a.mean():.3f} ± {a.std():.3f}"


def _paper(name: str) -> str:
    p = PAPER.get(name)
    if not p:
        return "–"
    cell = lambda v, d: "–" if v is None else f"{v:.{d}f}"
    return (f"{cell(p['ctr'], 3)} / {cell(p['coherence'], 3)} / {cell(p['ioi'], 3)} / "
            f"{cell(p['ior'], 1)}")


def results_table(results: dict) -> str:
    """Markdown table: every method (mean ± std over seeds) and baseline, with the paper."""
    by_method: dict[str, list[dict]] = {}
    for r in results["runs"]:
        by_method.setdefault(r["method"], []).append(r["test"])
    head = "| system | " + " | ".join(c for _, c in COLS) + " | paper CTR / Coh / IoI / IoR |"
    lines = [head, "|" + "---|" * (len(COLS) + 2)]
    for name, m in results.get("baselines", {}).items():
        lines.append(f"| {name} | " + " | ".join(_fmt([m[k]] if k in m else [])
                                                  for k, _ in COLS) + f" | {_paper(name)} |")
    for name, tests in by_method.items():
        cells = [_fmt([t[k] for t in tests if k in t]) for k, _ in COLS]
        lines.append(f"| **{name}** ({len(tests)} seeds) | " + " | ".join(cells)
                     + f" | {_paper(name)} |")
    return "\n".join(lines)


def training_curves(results: dict) -> dict[str, dict[str, np.ndarray]]:
    """Per method: epoch-level curves ``[seeds, epochs]`` of length, adv. variance, val IoI."""
    curves: dict[str, dict[str, list]] = {}
    keys = {"length": "train_length", "adv_var": "train_adv_var", "val_ioi": "val_ioi@1"}
    for r in results["runs"]:
        c = curves.setdefault(r["method"], {k: [] for k in keys})
        for k, src in keys.items():
            c[k].append([row[src] for row in r["history"]])
    return {m: {k: np.asarray(v) for k, v in c.items()} for m, c in curves.items()}


def epoch_table(results: dict) -> str:
    """Per method and epoch: sampled path length and the advantage variance normalised by
    REINFORCE's first epoch (as in the paper's ablation)."""
    curves = training_curves(results)
    ref = curves.get("reinforce", {}).get("adv_var")
    norm = float(ref[:, 0].mean()) if ref is not None and ref.size else None
    n_ep = max((c["length"].shape[1] for c in curves.values()), default=0)
    head = ("| method | sampled length, epoch 1..E | adv. variance"
            + (" / REINFORCE ep. 1" if norm else "") + ", epoch 1..E |")
    lines = [head, "|---|---|---|"]
    for m, c in curves.items():
        ln = " / ".join(f"{v:.2f}" for v in c["length"].mean(0))
        av = c["adv_var"].mean(0) / (norm or 1.0)
        lines.append(f"| {m} | {ln} | " + " / ".join(f"{v:.3g}" for v in av) + " |")
    return "\n".join(lines) if n_ep else ""


def _ci(d: dict, big: bool = False) -> str:
    f = (lambda v: f"{v:.1f}") if big else (lambda v: f"{v:.3f}")
    return f"{f(d['mean'])} [{f(d['lo'])}, {f(d['hi'])}]"


INTERVAL_COLS = [("sasrec/ctr@1", "CTR"), ("sasrec/coherence@1", "Coh"),
                 ("sasrec/ioi@1", "IoI"), ("sasrec/ior@1", "IoR"), ("sasrec/length@1", "len"),
                 ("sasrec/length@K", "sampled len"), ("sasrec/has_target@1", "target in path"),
                 ("gru4rec/ioi@1", "IoI (GRU)")]


def interval_table(results: dict) -> str:
    """Markdown: each system's test means with 95 % intervals from a bootstrap over users
    (a method's per-prompt values averaged over its seeds first), then ProRL − each system
    on the same prompts (paired, clustered by user)."""
    iv = results.get("intervals") or {}
    systems = iv.get("systems") or {}
    if not systems:
        return ""
    cols = [(k, c) for k, c in INTERVAL_COLS if any(k in v for v in systems.values())]
    lines = ["| system | " + " | ".join(c for _, c in cols) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for name, m in systems.items():
        lines.append(f"| {name} | " + " | ".join(
            _ci(m[k], "ior" in k) if k in m else "–" for k, _ in cols) + " |")
    diffs = iv.get("vs_prorl") or {}
    if diffs:
        lines += ["", "| ProRL − system (paired) | " + " | ".join(c for _, c in cols) + " |",
                  "|" + "---|" * (len(cols) + 1)]
        for name, m in diffs.items():
            lines.append(f"| {name} | " + " | ".join(
                _ci(m[k], "ior" in k) if k in m else "–" for k, _ in cols) + " |")
    return "\n".join(lines)


def _verdict(lo: float, hi: float, band: tuple[float, float]) -> str:
    """'holds' if [lo, hi] lies inside ``band``, 'does not hold' if it misses it entirely,
    'undecided' otherwise."""
    if band[0] <= lo and hi <= band[1]:
        return "holds"
    if hi < band[0] or lo > band[1]:
        return "does not hold"
    return "undecided"


def _sign_verdict(d: dict) -> str:
    """A predicted positive difference: its interval above 0 holds, below 0 does not."""
    return "holds" if d["lo"] > 0 else "does not hold" if d["hi"] < 0 else "undecided"


def epoch1_predictions(results: dict) -> list[str]:
    """The paper's epoch-1 predictions checked with the rules of docs/prorl.md.

    Length: the test split's mean sampled path length (``sasrec/length@K``, K paths per
    prompt at temperature 1, the policy after epoch 1) with its user-clustered 95 %
    interval must lie within [x / 1.5, min(1.5 x, L_max)] of the paper's x; the order
    ProRL < REINFORCE < GRPO needs both paired differences' intervals on the predicted side
    of 0. Variance: each 10-update block mean of the advantage variance of epoch 1, divided
    by REINFORCE's first-update variance (same seed), must lie within [v / 2, 2 v] of the
    paper's v. 'does not hold' when the whole interval (or every block) misses the band,
    'undecided' when it straddles an edge. Only for one-epoch runs at ``L_max = 10`` (e.g.
    ``paper_epoch1``); empty otherwise.
    """
    cfg = results.get("config", {})
    lmax = cfg.get("data", {}).get("max_len", 10)
    if lmax != 10 or cfg.get("rl", {}).get("epochs", 1) != 1:
        return []  # the predictions are about one epoch at the paper's L_max = 10
    iv = (results.get("intervals") or {}).get("systems") or {}
    diffs = (results.get("intervals") or {}).get("vs_prorl") or {}
    out = []
    for m, x in EPOCH1_LENGTH.items():
        d = iv.get(m, {}).get("sasrec/length@K")
        if d is None:
            continue
        band = (x / LENGTH_BAND, min(x * LENGTH_BAND, lmax))
        out.append(f"{m} sampled length ≈ {x:g} after epoch 1: "
                   f"{_verdict(d['lo'], d['hi'], band)} (test {_ci(d)}; band "
                   f"[{band[0]:.2f}, {band[1]:.2f}])")
    if all(m in iv for m in EPOCH1_LENGTH) and "reinforce" in diffs and "grpo" in diffs:
        a = diffs["reinforce"]["sasrec/length@K"]  # prorl − reinforce, predicted < 0
        b_lo = iv["grpo"]["sasrec/length@K"]["lo"] - iv["reinforce"]["sasrec/length@K"]["hi"]
        flip = lambda d: {"lo": -d["hi"], "hi": -d["lo"]}
        v1 = _sign_verdict(flip(a))
        v2 = "holds" if b_lo > 0 else (
            "does not hold" if iv["grpo"]["sasrec/length@K"]["hi"]
            < iv["reinforce"]["sasrec/length@K"]["lo"] else "undecided")
        both = ("holds" if v1 == v2 == "holds" else
                "does not hold" if "does not hold" in (v1, v2) else "undecided")
        out.append(f"sampled length ProRL < REINFORCE < GRPO: {both} (ProRL − REINFORCE "
                   f"{_ci(a)}: {v1}; GRPO vs REINFORCE intervals: {v2})")
    first: dict[int, float] = {}
    for r in results["runs"]:
        if r["method"] == "reinforce" and r["history"] and "blocks" in r["history"][0]:
            first[r["seed"]] = r["history"][0]["blocks"]["first_adv_var"][0]
    for m, v in EPOCH1_VARIANCE.items():
        ratios = [np.asarray(r["history"][0]["blocks"]["adv_var"]) / first[r["seed"]]
                  for r in results["runs"] if r["method"] == m and r["seed"] in first
                  and r["history"] and "blocks" in r["history"][0]]
        if not ratios:
            continue
        allb = np.concatenate(ratios)
        mean = float(np.mean([x.mean() for x in ratios]))
        band = (v / VARIANCE_BAND, v * VARIANCE_BAND)
        out.append(f"{m} advantage variance ≈ {v:g} × REINFORCE's first update in epoch 1: "
                   f"{_verdict(float(allb.min()), float(allb.max()), band)} (epoch mean "
                   f"{mean:.3g}, 10-update blocks {allb.min():.3g}–{allb.max():.3g}; band "
                   f"[{band[0]:.3g}, {band[1]:.3g}])")
    return out


def diagnostics_table(results: dict) -> str:
    """Markdown: per method (first seed), the epoch-1 diagnostics over blocks of updates
    (sampled length, advantage variance / REINFORCE's first update, share of paths with
    the target), the mean centred step reward per position over epoch 1, and the gradient
    cosine / SNR against the reference gradient at the start and end of the run."""
    first = {r["seed"]: r["history"][0]["blocks"]["first_adv_var"][0] for r in results["runs"]
             if r["method"] == "reinforce" and r["history"] and "blocks" in r["history"][0]}
    lines = ["| method | sampled length by block | adv. var. / REINFORCE first | target share |"
             " centred reward by position | grad. cos / SNR start → end |",
             "|---|---|---|---|---|---|"]
    seen = set()
    for r in results["runs"]:
        if r["method"] in seen or not r["history"] or "blocks" not in r["history"][0]:
            continue
        seen.add(r["method"])
        b = r["history"][0]["blocks"]
        norm = first.get(r["seed"])
        var = (" / ".join(f"{v / norm:.3g}" for v in b["adv_var"]) if norm else "–")
        pos = sorted((k for k in b if k.startswith("centred_pos")), key=lambda k: int(k[11:]))
        cent = " / ".join(f"{np.mean(b[k]):+.2f}" for k in pos)
        g = r.get("grad_diag") or {}
        grad = " → ".join(f"{g[w]['cosine']:.2f} / {g[w]['snr']:.3g}" for w in ("start", "end")
                          if w in g) or "–"
        lines.append(f"| {r['method']} | " + " / ".join(f"{v:.2f}" for v in b["length"])
                     + f" | {var} | " + " / ".join(f"{v:.2f}" for v in b["target_share"])
                     + f" | {cent} | {grad} |")
    return "\n".join(lines) if seen else ""


def claims(results: dict) -> list[str]:
    """The paper's claims checked on this run. With user-clustered intervals (the launcher's
    ``results["intervals"]``) a comparison holds when the paired interval of ProRL − rival
    lies above 0, does not hold when below, and is undecided otherwise; without them the
    seed means decide ('holds' needs every comparison to go the paper's way)."""
    tests: dict[str, list[dict]] = {}
    for r in results["runs"]:
        tests.setdefault(r["method"], []).append(r["test"])
    mean = lambda m, k: float(np.mean([t[k] for t in tests[m]]))
    out = _rival_claims(results, tests, mean)
    base = results.get("baselines", {}).get("pretrained")
    if "prorl" in tests and base:
        d = mean("prorl", "sasrec/ctr@1") - base["sasrec/ctr@1"]
        out.append(f"ProRL's CTR@1 within 0.05 of the pretrained policy's: "
                   f"{'holds' if abs(d) <= 0.05 else 'does not hold'} ({d:+.3f})")
    return out + _curve_claims(results)


def _rival_claims(results: dict, tests: dict[str, list[dict]], mean: Any) -> list[str]:
    """ProRL against REINFORCE / GRPO / RTG on IoI@1 and IoR@1 (paired intervals when
    every comparison has one, else the seed means)."""
    rivals = [m for m in ("reinforce", "grpo", "rtg") if m in tests]
    if "prorl" not in tests or not rivals:
        return []
    paired = (results.get("intervals") or {}).get("vs_prorl") or {}
    out = []
    if all(key in paired.get(m, {}) for m in rivals for key in ("sasrec/ioi@1", "sasrec/ior@1")):
        for key, name in (("sasrec/ioi@1", "IoI@1"), ("sasrec/ior@1", "IoR@1")):
            vs = {m: _sign_verdict(paired[m][key]) for m in rivals}
            both = ("holds" if all(v == "holds" for v in vs.values()) else
                    "does not hold" if "does not hold" in vs.values() else "undecided")
            out.append(f"ProRL beats {', '.join(rivals)} on {name}: {both} (ProRL − rival, "
                       "95 % interval over users: "
                       + ", ".join(f"{m} {_ci(paired[m][key], 'ior' in key)}" for m in rivals)
                       + ")")
        return out
    for key, name in (("sasrec/ioi@1", "IoI@1"), ("sasrec/ior@1", "IoR@1")):
        diffs = {m: mean("prorl", key) - mean(m, key) for m in rivals}
        ok = all(d > 0 for d in diffs.values())
        out.append(f"ProRL beats {', '.join(rivals)} on {name}: "
                   f"{'holds' if ok else 'does not hold'} (ProRL − rival: "
                   + ", ".join(f"{m} {d:+.3g}" for m, d in diffs.items()) + ")")
    return out


def _curve_claims(results: dict) -> list[str]:
    """Claims on the training curves: path lengths and the advantage-variance order."""
    out = []
    curves = training_curves(results)
    lmax = results.get("config", {}).get("data", {}).get("max_len", 10)
    for m in ("grpo", "prorl_no_src"):
        if m in curves:
            last = float(curves[m]["length"].mean(0)[-1])
            out.append(f"{m} drives the sampled path length to the maximum ({lmax}): "
                       f"{'holds' if last >= 0.9 * lmax else 'does not hold'} "
                       f"(last epoch {last:.2f})")
    if "prorl" in curves:
        last = float(curves["prorl"]["length"].mean(0)[-1])
        out.append(f"ProRL settles at a moderate length (between 2 and {lmax - 2}): "
                   f"{'holds' if 2 <= last <= lmax - 2 else 'does not hold'} "
                   f"(last epoch {last:.2f})")
    order = [m for m in ("prorl", "rtg", "grpo", "reinforce") if m in curves]
    if len(order) == 4:
        var = np.stack([curves[m]["adv_var"].mean(0) for m in order])  # [4, epochs]
        held = [e + 1 for e in range(var.shape[1]) if np.all(np.diff(var[:, e]) > 0)]
        verdict = ("holds" if len(held) == var.shape[1] else
                   "does not hold" if not held else "partly holds")
        out.append(
            "advantage variance ProRL < RTG < GRPO < REINFORCE in every epoch: "
            f"{verdict} (in epochs {held or 'none'} of {var.shape[1]}; last epoch "
            + ", ".join(f"{m} {v:.3g}" for m, v in zip(order, var[:, -1], strict=True))
            + ")"
        )
    return out


def _one_epoch_blocks(results: dict) -> dict[str, dict] | None:
    """Per method, the first seed's epoch-1 diagnostic blocks when every run is one epoch
    long (e.g. ``paper_epoch1``), where epoch-level curves would be single points."""
    runs = results["runs"]
    if not runs or any(len(r["history"]) != 1 or "blocks" not in r["history"][0]
                       for r in runs):
        return None
    out: dict[str, dict] = {}
    for r in runs:
        out.setdefault(r["method"], r["history"][0]["blocks"])
    return out


def plot_blocks(blocks: dict[str, dict], path: Path, every: int) -> None:
    """One-epoch runs: sampled length and advantage variance / REINFORCE's first update
    over blocks of ``every`` updates, and the mean centred step reward per position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = blocks.get("reinforce", {}).get("first_adv_var", [None])[0]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for method, b in blocks.items():
        x = every * (np.arange(len(b["length"])) + 0.5)
        axes[0].plot(x, b["length"], marker="o", label=method)
        if first:
            axes[1].plot(x, np.asarray(b["adv_var"]) / first, marker="o", label=method)
        pos = sorted((k for k in b if k.startswith("centred_pos")), key=lambda k: int(k[11:]))
        axes[2].plot(np.arange(1, len(pos) + 1), [np.mean(b[k]) for k in pos], marker="o",
                     label=method)
    axes[0].set(xlabel="update", title="sampled path length (train, blocks)")
    axes[1].set(xlabel="update", title="advantage variance / REINFORCE's first update",
                yscale="log")
    axes[2].axhline(0.0, color="grey", lw=0.8)
    axes[2].set(xlabel="position in path", title="mean centred step reward (epoch 1)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(results: dict, path: Path) -> None:
    """Epoch-level training curves; one-epoch runs get :func:`plot_blocks` instead."""
    blocks = _one_epoch_blocks(results)
    if blocks is not None:
        every = int(results.get("config", {}).get("rl", {}).get("diag_every", 10))
        plot_blocks(blocks, path, every)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = training_curves(results)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    titles = {"length": "mean path length (train samples)", "adv_var": "advantage variance",
              "val_ioi": "validation IoI@1 (greedy)"}
    for method, c in curves.items():
        for ax, key in zip(axes, titles, strict=True):
            y = c[key]
            x = np.arange(1, y.shape[1] + 1)
            (line,) = ax.plot(x, y.mean(0), marker="o", label=method)
            if y.shape[0] > 1:
                ax.fill_between(x, y.mean(0) - y.std(0), y.mean(0) + y.std(0),
                                color=line.get_color(), alpha=0.15)
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        ax.set(xlabel="epoch", title=title)
        if key == "adv_var":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, results: dict[str, Any]) -> str:
    """Writes ``report.md`` and ``training.png`` into ``out``; returns the markdown."""
    plot_curves(results, out / "training.png")
    cfg = results.get("config", {})
    text = "\n".join([
        f"# ProRL on {cfg.get('dataset', '?')} ({cfg.get('variant', '?')} config)",
        "",
        "Test split, mined targets, greedy paths (@1) unless marked; @K = best of K sampled "
        "paths; div = 1 − mean pairwise Jaccard of the K paths; 'GRU' = the unseen GRU4Rec "
        "evaluator; 'unseen' = random targets the user never interacted with. Checkpoints "
        "selected on validation IoI@1 (validation prompts spread over users). ± = std over seeds; "
        "intervals below: bootstrap over test users.",
        "",
        results_table(results),
        "",
        "## User-clustered 95 % intervals (bootstrap over test users)",
        "",
        interval_table(results) or "(no per-prompt results)",
        "",
        "## The paper's epoch-1 predictions",
        "",
        *([f"- {c}" for c in epoch1_predictions(results)]
          or ["(they apply to one-epoch runs at L_max = 10, e.g. `paper_epoch1`)"]),
        "",
        "## Diagnostics of the first epoch (first seed; blocks of updates)",
        "",
        diagnostics_table(results) or "(no diagnostics)",
        "",
        "## The paper's claims on this run",
        "",
        *[f"- {c}" for c in claims(results)],
        "",
        "## Training dynamics (mean over seeds)",
        "",
        epoch_table(results),
        "",
        "![training curves](training.png)",
        "",
        "Run configuration: `config.json`; per-step metrics: `metrics.jsonl`; TensorBoard: "
        "`tb/`.",
    ])
    (out / "report.md").write_text(text + "\n")
    (out / "results_table.md").write_text(results_table(results) + "\n")
    return text


if __name__ == "__main__":
    import sys

    d = Path(sys.argv[1])
    print(write_report(d, json.loads((d / "results.json").read_text())))
