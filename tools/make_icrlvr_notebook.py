"""Writes colab/icrlvr.ipynb (In-Context RLVR tour, tiny sizes) from the cells below.

    python tools/make_icrlvr_notebook.py
"""

from __future__ import annotations

import sys

from make_notebooks import main, setup_cell  # tools/ is on sys.path when run as a script
from nbformat.v4 import new_code_cell, new_markdown_cell

CELLS = [
    new_markdown_cell(
        "# In-Context RLVR: a tour at tiny size\n\n"
        "`recrl.rlvr`: checkable multi-step arithmetic (every scratchpad step verifiable), "
        "explicit Evidence Gain (EG) of a trace over a probe set, and a GRPO/DAPO learner "
        "with in-context demonstration groups and EG-reweighted advantages. "
        "`experiments/icrlvr.py` runs the full comparisons; see `docs/icrlvr.md`."
    ),
    setup_cell("lm,plots", ("tokenizers", "matplotlib"),
               "a 1-block model, 12 steps; accelerator: 2 blocks of width 128, 40 steps"),
    new_code_cell(
        "import random, jax, jax.numpy as jnp, numpy as np\n"
        "from flax import nnx\n"
        "from recrl import estimators, models\n"
        "from recrl.models.char_tokenizer import CharTokenizer\n"
        "from recrl.rlvr import config, evidence, learner, rollouts, tasks\n"
        "splits = tasks.make_splits(32, 8, 2, 8, seed=0)\n"
        "p = splits.train[0]\n"
        "print(p.question, '=', p.answer)\n"
        "print(p.solution)"
    ),
    new_markdown_cell(
        "## Rewards and step correctness\nA trace can reach the right answer through a "
        "wrong step (a *flawed* trace): reward 1, step correctness < 1. Malformed output "
        "scores 0 and is counted, never raised."
    ),
    new_code_cell(
        "a, op, b, c = p.steps[0]\n"
        "flawed = p.solution.replace(f'{a}{op}{b}={c}', f'{a}{op}{b}={c + 1}', 1)\n"
        "s = tasks.score_traces([p.solution, flawed, 'no idea'], [p] * 3)\n"
        "print('reward', s.reward, 'step correctness', np.round(s.step_correctness, 2), "
        "'malformed', s.malformed)"
    ),
    new_markdown_cell(
        "## Evidence Gain\n`Δ_e = log π(e_r | demo(q, r), e_q) − log π(e_r | e_q)`, "
        "`EG = mean_e Δ_e`; the demo prefix is computed once and shared by all probes. "
        "Here on a random 1-block model (the numbers are meaningless, the plumbing is not)."
    ),
    new_code_cell(
        "tok = CharTokenizer()\n"
        "dim, layers, steps = {'test': (32, 1, 6), 'cpu': (32, 1, 12),\n"
        "                      'accelerator': (128, 2, 40)}[SIZE]\n"
        "cfg = models.tiny_config(vocab_size=tok.vocab_size, dim=dim, ffn_dim=2 * dim,\n"
        "                         n_layers=layers, n_heads=2, n_kv_heads=1)\n"
        "graphdef, params = nnx.split(models.create_model(cfg, seed=0))\n"
        "res = evidence.evidence_gain_batch(graphdef, params, tok, [p.question] * 2,\n"
        "                                   [p.solution, flawed], splits.probe)\n"
        "print('EG', np.round(res.eg, 4), 'per token', np.round(res.eg_per_token, 5))\n"
        "print('EG weights within the group:', np.round(\n"
        "    estimators.evidence_gain_weights(res.eg[None], temperature=0.1), 3))"
    ),
    new_markdown_cell(
        "## In-context groups and a few DAPO steps\nEach group: `num_demo` rollouts on one "
        "distinct demonstration each, the rest on the bare prompt, one shared advantage. "
        "A trivially learnable reward (first character is a digit) shows the learner "
        "moving."
    ),
    new_code_cell(
        "prompts, demo = rollouts.build_prompts(tok, splits.train[:1], splits.demo, 4, 2,\n"
        "                                       random.Random(0))\n"
        "for g in range(4):\n"
        "    print(demo[0, g], repr(tok.decode(prompts[0][g])))\n"
        "lcfg = config.preset('dapo', group_size=8, num_demo=0, prompts_per_step=4,\n"
        "                     max_prompt_len=32, max_new_tokens=1, lr=3e-2, warmup_steps=1,\n"
        "                     weight_decay=0.0)\n"
        "digit = lambda text, _: float(text[:1].isdigit())\n"
        "lrn = learner.Learner(graphdef, params, tok, lcfg, reward_fn=digit)\n"
        "rng = random.Random(0)\n"
        "history = []\n"
        "for step in range(steps):\n"
        "    m = lrn.step(lambda n: rng.sample(splits.train, n), jax.random.key(step))\n"
        "    history.append(m['reward'])\n"
        "    print(step, {k: round(m[k], 3) for k in ('reward', 'loss', 'kept', 'rounds')})"
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "plt.plot(history, 'o-'); plt.ylim(-0.05, 1.05)\n"
        "plt.xlabel('DAPO step'); plt.ylabel('mean reward (first character is a digit)')\n"
        "plt.show()\n"
        "print(f'mean reward: first step {history[0]:.2f}, last step {history[-1]:.2f}')"
    ),
]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))  # writes every notebook
