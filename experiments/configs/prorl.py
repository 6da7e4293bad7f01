r"""ProRL on MovieLens: simulator, mined-path pretraining, RL with selectable estimators.

Variants (the part after ``:``)::

    python -m experiments.prorl --config=experiments/configs/prorl.py:ml1m      # paper-like (GPU)
    python -m experiments.prorl --config=experiments/configs/prorl.py:paper_epoch1  # epoch 1
    python -m experiments.prorl --config=experiments/configs/prorl.py:ml1m_cpu  # 2-core budget
    python -m experiments.prorl --config=experiments/configs/prorl.py:demo      # `make demo`
    python -m experiments.prorl --config=experiments/configs/prorl.py:tiny      # tests

Override any field on the command line, e.g. ``--config.rl.epochs=3``.

Every budget is in epochs or steps. ``sim.max_seconds`` is a wall-clock cap that is off
(0) in every variant; when set, it can only stop simulator training early, with a warning
that the result then depends on the machine.
"""

import ml_collections

from recrl import parallel
from recrl.prs.rl import Method

# The methods table: every RL method name of the ProRL pipeline and of
# experiments/length_bias.py, with its parts as separate fields (recrl.prs.rl.Method:
# registered advantage estimator, Stepwise Reward Centering, loss aggregation over a
# path's actions, A2C critic). A name means the same thing in both launchers.
METHODS: dict[str, Method] = {
    "prorl": Method("psae", src=True),
    "prorl_no_src": Method("psae", src=False),
    "prorl_no_psae": Method("drgrpo", src=True),  # SRC, path-level group-mean baseline
    "psae_loo": Method("psae_loo", src=True),  # the unbiased leave-one-out PSAE
    "reinforce": Method("reinforce", src=True),
    "rtg": Method("rtg", src=True),
    # GRPO averages within each path first (its 1/|o| term, the source of its length bias)
    "grpo": Method("grpo", src=True, aggregation="seq_mean_token_mean"),
    "rloo": Method("rloo", src=True),
    # reward-to-go minus a learned MLP value of the policy's state
    "a2c": Method("rtg", src=True, critic=True),
    # uncentred baselines of the length shortcut (Theorem 1; experiments/length_bias.py)
    "reinforce_no_src": Method("reinforce", src=False),
    "rtg_no_src": Method("rtg", src=False),
    "grpo_seq_sum_no_src": Method("grpo", src=False),  # GRPO's advantages, summed per path
}
PAPER_METHODS = ("prorl", "reinforce", "grpo", "rtg", "a2c", "prorl_no_src", "prorl_no_psae")


def method(name: str) -> Method:
    """The methods-table entry ``name``; unknown names list the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown RL method {name!r}; known: {', '.join(METHODS)}") from None


def get_config(variant: str = "ml1m_cpu") -> ml_collections.ConfigDict:
    """The ProRL config of ``variant`` (the module docstring lists them)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown prorl config variant {variant!r}; "
                         f"known: {', '.join(VARIANTS)}")
    c = _base_config(variant)
    VARIANTS[variant](c)
    return c


def _base_config(variant: str) -> ml_collections.ConfigDict:
    """The paper's recipe (the ``ml1m`` variant before its own changes)."""
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.retrain_changed = False  # rerun into --out_dir: retrain stages whose config changed
    c.dataset = "ml-1m"  # ml-1m | ml-100k | synthetic
    c.seeds = (0, 1, 2)
    c.methods = PAPER_METHODS
    c.baselines = ("pretrained", "mined", "ipg", "greedy_sequential")
    parallel.add_config_fields(c)  # distributed, coordinator_address, ..., num_devices

    c.data = ml_collections.ConfigDict(dict(min_user=20, min_item=40, seed=0, history=10,
                                            max_len=10, long_runs="truncate"))
    c.sim = ml_collections.ConfigDict(dict(epochs=200, batch_size=128, patience=5, lr=1e-3,
                                           max_seconds=0.0))
    c.evaluator = ml_collections.ConfigDict(dict(kind="gru4rec", epochs=200, patience=5))
    c.policy = ml_collections.ConfigDict(dict(dim=128, n_layers=3, n_heads=4, ffn_dim=512,
                                              dropout=0.1))
    c.pretrain = ml_collections.ConfigDict(dict(epochs=20, batch_size=256, lr=5e-3,
                                                weight_decay=0.05))
    # The reference's RL recipe (docs/prorl.md, "Protocol"): updates of 512 prompts x 16
    # paths, AdamW lr 1e-4, weight decay 0.05, warm-up over 5 % of a 50-epoch schedule, KL
    # 0.01; rewards IoI + IoR + CTR / L_max centred with the sample std of real (non-repeated)
    # item steps; the target is out of the policy's action space.
    c.rl = ml_collections.ConfigDict(dict(
        epochs=50, prompts=512, group_size=16, lr=1e-4, warmup_frac=0.05, kl_weight=0.01,
        weight_decay=0.05, reward_weights=(1.0, 1.0, 0.1), sample_std=True,
        stats_real_items=True, mask_target=True,
        micro_batches=1,  # gradient accumulation: prompts / micro_batches per pass
        schedule_epochs=0,  # epochs the warm-up fraction refers to (0 = `epochs`)
        steps_per_epoch=0,  # 0 = a full pass over the training prompts
        grad_diag_batches=0,  # > 0: gradient cosine / SNR at the start and end of each run
        diag_every=10,  # per-update diagnostics kept as means over blocks of this many
    ))
    # val: `val_prompts` spread evenly over users; test: every prompt (max_prompts = 0) or
    # that many spread over users; intervals: bootstrap over users (n_boot replicates).
    c.eval = ml_collections.ConfigDict(dict(k=8, max_prompts=0, val_prompts=1000,
                                            coherence_all_genres=True, n_boot=2000))
    return c


def _ml1m(c: ml_collections.ConfigDict) -> None:
    c.rl.update(micro_batches=4)


def _paper_epoch1(c: ml_collections.ConfigDict) -> None:
    # The paper's first RL epoch, for the epoch-1 predictions (lengths ProRL 1.6 /
    # REINFORCE 5.2 / GRPO 10; advantage variance .06 / 1.0 / .22 of REINFORCE's first
    # epoch). 110 updates of 512 prompts x 16 paths = 8,192 paths (the paper's epoch:
    # ~56k prompts / 512; our 31,230 mined train paths are reshuffled after each pass),
    # lr 1e-4 with the warm-up of the 50-epoch schedule (275 updates: epoch 1 ends at
    # 40 % of the peak lr), 32 micro-batches of 16 prompts (the fastest split on a 2-core
    # CPU, benchmarks/prorl_step.py; the update is the same for any split). psae_loo (the unbiased
    # leave-one-out PSAE) is the side run. Gradient cosine / SNR at start and end.
    c.methods = ("prorl", "reinforce", "grpo", "psae_loo")
    c.seeds = (0,)
    c.rl.update(epochs=1, schedule_epochs=50, steps_per_epoch=110, micro_batches=32,
                grad_diag_batches=4)
    c.eval.update(k=4)


def _ml1m_cpu(c: ml_collections.ConfigDict) -> None:
    # A 2-core budget (about 2 h of RL for 7 methods x 3 seeds at ~1.3 s per 32 x 16
    # step, idle machine). Smaller updates than the paper's (32 prompts), lr and the
    # rest as the paper; budgets in epochs only.
    c.sim.update(epochs=5)
    c.evaluator.update(epochs=4)
    c.policy.update(dim=64, n_layers=2, n_heads=4, ffn_dim=256)
    c.pretrain.update(epochs=4)
    c.rl.update(epochs=4, prompts=32, group_size=16, steps_per_epoch=40)
    c.eval.update(k=4)


def _demo(c: ml_collections.ConfigDict) -> None:
    # `make demo`, end to end (fetch, simulators, mining, pretraining, baselines, short
    # RL for ProRL and REINFORCE, report). Estimated ~13-14 min on 2 idle cores from the
    # step counts x the idle per-epoch / per-step times measured before (SASRec ~58 s
    # per epoch, GRU4Rec ~48 s, pretraining ~65 s per epoch of 31k paths, RL ~1.3 s per
    # 32 x 16 step, evaluation ~0.1 s per prompt and system): 2.9 + 1.6 + 2.2 + 1.5 +
    # 2 x 2.7 min. Same protocol as paper_epoch1 at a smaller update (32 prompts).
    c.seeds = (0,)
    c.methods = ("prorl", "reinforce")
    c.sim.update(epochs=3)
    c.evaluator.update(epochs=2)
    c.policy.update(dim=64, n_layers=2, n_heads=4, ffn_dim=256)
    c.pretrain.update(epochs=2)
    c.rl.update(epochs=2, prompts=32, group_size=16, steps_per_epoch=40)
    c.eval.update(k=4, max_prompts=600, val_prompts=256)


def _tiny(c: ml_collections.ConfigDict) -> None:
    c.dataset = "synthetic"
    c.seeds = (0,)
    c.methods = ("prorl", "grpo")
    c.data.update(min_user=5, min_item=5, history=4, max_len=4)
    c.sim.update(epochs=2, batch_size=32, patience=1)
    c.evaluator.update(epochs=1, patience=1)
    c.policy.update(dim=16, n_layers=1, n_heads=2, ffn_dim=32)
    c.pretrain.update(epochs=1, batch_size=32)
    c.rl.update(epochs=2, prompts=8, group_size=4, lr=1e-3, steps_per_epoch=3,
                micro_batches=2, grad_diag_batches=2)
    c.eval.update(k=2, max_prompts=32, val_prompts=16, n_boot=200)


VARIANTS = {"ml1m": _ml1m, "paper_epoch1": _paper_epoch1, "ml1m_cpu": _ml1m_cpu,
            "demo": _demo, "tiny": _tiny}
