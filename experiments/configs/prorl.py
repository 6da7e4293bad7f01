r"""ProRL on MovieLens: simulator, mined-path pretraining, RL with selectable estimators.

Variants (the part after ``:``)::

    python -m experiments.prorl --config=experiments/configs/prorl.py:ml1m      # paper-like (GPU)
    python -m experiments.prorl --config=experiments/configs/prorl.py:ml1m_cpu  # 2-core budget
    python -m experiments.prorl --config=experiments/configs/prorl.py:demo      # `make demo`
    python -m experiments.prorl --config=experiments/configs/prorl.py:tiny      # tests

Override any field on the command line, e.g. ``--config.rl.epochs=3``.
"""

import ml_collections

from recrl import parallel

PAPER_METHODS = ("prorl", "reinforce", "grpo", "rtg", "a2c", "prorl_no_src", "prorl_no_psae")


def get_config(variant: str = "ml1m_cpu") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.dataset = "ml-1m"  # ml-1m | ml-100k | synthetic
    c.seeds = (0, 1, 2)
    c.methods = PAPER_METHODS
    c.baselines = ("pretrained", "ipg", "greedy_sequential")
    parallel.add_config_fields(c)  # distributed, coordinator_address, ..., num_devices

    c.data = ml_collections.ConfigDict(dict(min_user=20, min_item=40, seed=0, history=10,
                                            max_len=10))
    c.sim = ml_collections.ConfigDict(dict(epochs=200, batch_size=128, patience=5, lr=1e-3,
                                           max_seconds=0.0))
    c.evaluator = ml_collections.ConfigDict(dict(kind="gru4rec", epochs=200, patience=5))
    c.policy = ml_collections.ConfigDict(dict(dim=128, heads=4, layers=3, ffn=512,
                                              dropout=0.1))
    c.pretrain = ml_collections.ConfigDict(dict(epochs=20, batch_size=256, lr=5e-3,
                                                weight_decay=0.05))
    c.rl = ml_collections.ConfigDict(dict(
        epochs=50, prompts=128, samples=16, lr=1e-4, warmup_frac=0.05, kl_weight=0.01,
        reward_weights=(1.0, 1.0, 1.0), steps_per_epoch=0,  # 0 = a full pass over prompts
    ))
    c.eval = ml_collections.ConfigDict(dict(k=8, max_prompts=0, val_prompts=1024))

    if variant == "ml1m":
        pass
    elif variant == "ml1m_cpu":
        # The 2-core budget of the README's comparison: every method x 3 seeds in ~2 h of RL
        # (RL step ~1.3 s at 32 x 16 paths), after ~12 min of simulators and pretraining.
        c.sim.update(epochs=8, max_seconds=240.0)
        c.evaluator.update(epochs=4)
        c.policy.update(dim=64, heads=4, layers=2, ffn=256)
        c.pretrain.update(epochs=2)
        c.rl.update(epochs=4, prompts=32, samples=16, lr=3e-4, steps_per_epoch=40)
        c.eval.update(k=4, max_prompts=1000, val_prompts=256)
    elif variant == "demo":
        # `make demo`: ~15 min on 2 idle cores, end to end (fetch, simulators, mining,
        # pretraining, baselines, short RL for ProRL and REINFORCE, report).
        c.seeds = (0,)
        c.methods = ("prorl", "reinforce")
        c.sim.update(epochs=6, max_seconds=150.0)
        c.evaluator.update(epochs=2)
        c.policy.update(dim=64, heads=4, layers=2, ffn=256)
        c.pretrain.update(epochs=1)
        c.rl.update(epochs=2, prompts=32, samples=16, lr=3e-4, steps_per_epoch=40)
        c.eval.update(k=4, max_prompts=500, val_prompts=256)
    elif variant == "tiny":
        c.dataset = "synthetic"
        c.seeds = (0,)
        c.methods = ("prorl", "grpo")
        c.data.update(min_user=5, min_item=5, history=4, max_len=4)
        c.sim.update(epochs=2, batch_size=32, patience=1)
        c.evaluator.update(epochs=1, patience=1)
        c.policy.update(dim=16, heads=2, layers=1, ffn=32)
        c.pretrain.update(epochs=1, batch_size=32)
        c.rl.update(epochs=2, prompts=8, samples=4, lr=1e-3, steps_per_epoch=3)
        c.eval.update(k=2, max_prompts=32, val_prompts=16)
    else:
        raise ValueError(f"unknown prorl config variant {variant!r}; "
                         "known: ml1m, ml1m_cpu, demo, tiny")
    return c
