r"""The length shortcut of ProRL's Theorem 1, reproduced on a tabular path policy.

A policy emits up to ``T`` items, one per position, then EOS. Each item yields two
reward components (an "interest" gain that decays with position, like IoI, and an
"acceptance" score, like CTR), both positive on average, plus noise. Without centring,
appending any item raises the return, so REINFORCE / GRPO / reward-to-go learn to always
use all ``T`` positions. ProRL centres each component with statistics frozen after the
first epoch (SRC) and uses position-specific baselines (PSAE); its length settles near the
length that is optimal for the centred objective, which this script computes exactly.

Launch (the `make demo` configuration)::

    python -m experiments.length_bias --out_dir=runs/length_bias

Writes ``metrics.jsonl`` (per step, mean over seeds), ``summary.md`` (table) and
``length_bias.png`` (mean path length and advantage variance per step).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from experiments.configs import prorl as prorl_config
from recrl.prs import rl, tabular

FLAGS = flags.FLAGS


def resolve_runs(names: Sequence[str]) -> dict[str, rl.Method]:
    """The methods-table entries (``experiments/configs/prorl.py``) of the runs ``names``.

    The tabular policy has no critic: a method with one is a clear error.
    """
    runs = {n: prorl_config.method(n) for n in names}
    for n, m in runs.items():
        if m.critic:
            raise ValueError(f"run {n!r}: a method with a critic is not supported by the "
                             "tabular policy")
    return runs


def run_all(runs: Sequence[str], **kwargs) -> dict:
    """Trains every run (names of the methods table) with :func:`recrl.prs.tabular.run_all`."""
    return tabular.run_all(resolve_runs(runs), **kwargs)


def summarise(res: dict, max_len: int, tail: int = 20) -> str:
    """Markdown table: final length, returns, advantage variance (mean ± std over seeds)."""
    runs = res["runs"]
    ref_var = float(np.mean(runs[next(iter(runs))]["metrics"]["adv_var"][:, 0]))

    def cell(x: np.ndarray) -> str:
        return f"{x.mean():.2f} ± {x.std():.2f}"

    lines = [
        f"Best length under the objective centred with the initial policy's moments: "
        f"{res['centred_optimum']} (maximum {max_len}). 'own optimum' uses each run's "
        f"first-epoch SRC statistics instead. Last {tail} steps averaged; ± = std over seeds; "
        "centred return uses the initial policy's moments for every run.",
        "",
        "| run | length | own optimum | raw return | centred return | adv. var (first → last, "
        "÷ first run's step 0) |",
        "|---|---|---|---|---|---|",
    ]
    for name, out in runs.items():
        m = {k: v[:, -tail:].mean(1) for k, v in out["metrics"].items()}
        v0 = out["metrics"]["adv_var"][:, 0].mean() / ref_var
        lines.append(
            f"| {name} | {cell(m['length'])} | {cell(out['own_optimum'])} | "
            f"{cell(m['raw_return'])} | "
            f"{cell(m['centred_return'])} | {v0:.2f} → {m['adv_var'].mean() / ref_var:.2f} |"
        )
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    """Mean path length and advantage variance per step, one line per run (band = ±1 std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, out in res["runs"].items():
        for ax, key in zip(axes, ("length", "adv_var"), strict=True):
            y = out["metrics"][key]
            x = np.arange(y.shape[1])
            (line,) = ax.plot(x, y.mean(0), label=name)
            ax.fill_between(x, y.mean(0) - y.std(0), y.mean(0) + y.std(0),
                            color=line.get_color(), alpha=0.15)
    axes[0].axhline(res["centred_optimum"], color="k", ls=":", lw=1,
                    label="centred optimum")
    axes[0].set(xlabel="update", ylabel="mean path length", title="Path length")
    axes[1].set(xlabel="update", ylabel="variance of advantages", yscale="log",
                title="Advantage variance")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def define_flags() -> None:
    """Defines this launcher's flags (only when run as a program: launchers share one
    process-wide flag registry, e.g. under pytest)."""
    flags.DEFINE_list(
        "methods", ["reinforce_no_src", "grpo_seq_sum_no_src", "rtg_no_src", "prorl_no_src",
                    "rtg", "prorl"],
        "Runs to compare: names from the ProRL methods table (experiments/configs/prorl.py: "
        "estimator, reward centring, aggregation); e.g. 'prorl' = SRC + PSAE, "
        "'reinforce_no_src' = REINFORCE on raw rewards.",
    )
    flags.DEFINE_integer("steps", 300, "Policy updates per run.")
    flags.DEFINE_integer("src_steps", 20, "Updates in the first epoch, during which SRC statistics "
                         "are gathered; frozen afterwards.")
    flags.DEFINE_integer("prompts", 64, "Groups per update (P).")
    flags.DEFINE_integer("group_size", 16, "Paths per group (G).")
    flags.DEFINE_integer("max_len", 10, "Maximum path length (T).")
    flags.DEFINE_integer("num_items", 20, "Number of items.")
    flags.DEFINE_float("decay", 0.7, "Per-position decay of the interest gain.")
    flags.DEFINE_float("noise", 0.2, "Std of the reward noise per component.")
    flags.DEFINE_float("init_stop", 0.3, "Initial stop probability per position (t >= 1), like a "
                       "policy pretrained on short mined paths.")
    flags.DEFINE_float("lr", 0.05, "Adam learning rate.")
    flags.DEFINE_integer("seeds", 3, "Independent seeds per run (vmapped).")
    flags.DEFINE_integer("seed", 0, "Base seed (also draws the item table).")
    flags.DEFINE_string("out_dir", "runs/length_bias", "Output directory.")


def write_outputs(out_dir: str, runs: Sequence[str], **kwargs) -> str:
    """Runs :func:`run_all` and writes metrics.jsonl, summary.md and length_bias.png."""
    os.makedirs(out_dir, exist_ok=True)
    res = run_all(runs, **kwargs)
    with open(os.path.join(out_dir, "metrics.jsonl"), "w") as f:
        for name, out in res["runs"].items():
            for i in range(kwargs["steps"]):
                row = {k: float(v[:, i].mean()) for k, v in out["metrics"].items()}
                f.write(json.dumps({"run": name, "step": i, **row}) + "\n")
    table = summarise(res, kwargs["max_len"])
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("# Length shortcut (ProRL Theorem 1), tabular policy\n\n" + table + "\n")
    plot(res, os.path.join(out_dir, "length_bias.png"))
    return table


def main(argv: Sequence[str]) -> None:
    del argv
    table = write_outputs(
        FLAGS.out_dir, FLAGS.methods, steps=FLAGS.steps, src_steps=FLAGS.src_steps,
        prompts=FLAGS.prompts, group_size=FLAGS.group_size, max_len=FLAGS.max_len,
        num_items=FLAGS.num_items, decay=FLAGS.decay, noise=FLAGS.noise, lr=FLAGS.lr,
        init_stop=FLAGS.init_stop, seeds=FLAGS.seeds, seed=FLAGS.seed,
    )
    print(table)
    print(f"\nwrote {FLAGS.out_dir}/summary.md, metrics.jsonl, length_bias.png")


if __name__ == "__main__":
    define_flags()
    app.run(main)
