r"""GORACS on MovieLens: coreset selection for a LoRA-tuned LM recommender vs baselines.

Variants (the part after ``:``)::

    python -m experiments.goracs --config=experiments/configs/goracs.py:ml1m      # GPU, SmolLM2
    python -m experiments.goracs --config=experiments/configs/goracs.py:ml1m_cpu  # 2-core budget
    python -m experiments.goracs --config=experiments/configs/goracs.py:tiny      # tests

Override any field on the command line, e.g. ``--config.budgets=32,64``; the click task
(label-enhanced GORACS, AUC / log-loss) with ``--config.task=click``.
"""

import ml_collections

from recrl import parallel

METHODS = ("goracs", "random", "el2n", "grand", "ccs", "kcenter", "dealrec", "full")


def get_config(variant: str = "ml1m_cpu") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = variant
    parallel.add_config_fields(c)  # distributed, coordinator_address, ..., num_devices
    c.dataset = "ml-1m"  # ml-1m | ml-100k | synthetic
    c.task = "next_item"  # next_item (HR/NDCG) | click (rating > 3: AUC / log-loss)
    c.seeds = (0, 1, 2)
    c.methods = METHODS
    c.budgets = (1024,)
    c.budget_fractions = (0.01, 0.02, 0.05)  # of the pool, added to ``budgets``
    c.data = ml_collections.ConfigDict(dict(
        max_history=10, num_val=5000, num_test=5000,
        pool_size=20000,  # training-pool rows sampled (seeded) as selection candidates
        val_size=5000, test_size=1000, num_negatives=99, seed=0))
    # model: "smollm2" (GGUF + its tokenizer), "tiny" (tiny_config, byte tokenizer) or
    # "tiny_bpe" (tiny_config, SmolLM2's BPE restricted to the ids the data uses)
    c.model = ml_collections.ConfigDict(dict(
        kind="smollm2", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
        max_prompt=256, max_answer=32, lora_rank=8, lora_alpha=16))
    # CPU models are pretrained on the catalogue titles ("Movie: <title>"), which are
    # disjoint from the selection pool's (history -> next title) samples.
    c.pretrain = ml_collections.ConfigDict(dict(steps=0, batch=32, lr=3e-3, cache=True))
    c.select = ml_collections.ConfigDict(dict(lam=0.1, max_iters=100, cut=10, max_checks=20,
                                              epsilon=0.05, threshold=1e-3,
                                              exact_ot=True, block=1))  # block>1: recrl ext.
    c.finetune = ml_collections.ConfigDict(dict(epochs=3, batch=16, lr=1e-3, max_steps=2000))
    c.features = ml_collections.ConfigDict(dict(batch=128, chunk=16))
    # DEALRec baseline: influence (damped empirical-Fisher) + gamma * effort (grad norm)
    c.dealrec = ml_collections.ConfigDict(dict(influence=True, gamma=1.0, damping=0.01))
    # test samples also ranked against the whole catalogue (0: off)
    c.eval = ml_collections.ConfigDict(dict(full_catalogue=500))

    if variant == "ml1m":
        pass
    elif variant == "ml1m_cpu":
        # 2 CPU cores: a d=128 Llama on SmolLM2's BPE (compact vocabulary), pretrained on
        # the catalogue titles; 10,000 pool windows, budgets 1/2/5 % + 1024, 3 seeds; 200
        # test windows x 100 candidates (the full catalogue costs ~2 s per test prompt here)
        c.methods = ("goracs", "random", "grand", "ccs", "kcenter", "dealrec", "full")
        c.data.update(max_history=3, pool_size=10000, val_size=1000, test_size=200,
                      num_negatives=99)
        c.model.update(kind="tiny_bpe", dim=128, n_layers=2, ffn_dim=256, max_prompt=64,
                       max_answer=24, lora_rank=8, lora_alpha=16)
        c.pretrain.update(steps=1000, batch=64, lr=3e-3)
        c.finetune.update(epochs=5, batch=16, lr=2e-3, max_steps=1500)
        c.select.update(max_iters=30)
        c.eval.full_catalogue = 0
    elif variant == "tiny":
        c.dataset = "synthetic"
        c.seeds = (0,)
        c.methods = ("goracs", "random", "grand", "dealrec", "full")
        c.budgets = (8,)
        c.budget_fractions = (0.25,)
        c.pretrain.cache = False
        c.eval.full_catalogue = 3
        c.data.update(max_history=2, num_val=24, num_test=24, pool_size=40, val_size=24,
                      test_size=6, num_negatives=4)
        c.model.update(kind="tiny", dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64,
                       max_prompt=24, max_answer=8, lora_rank=2, lora_alpha=4)
        c.pretrain.update(steps=4, batch=8)
        c.finetune.update(epochs=1, batch=4, max_steps=3)
        c.select.update(max_iters=2, cut=3, max_checks=3)
        c.features.update(batch=64, chunk=8)
    else:
        raise ValueError(f"unknown goracs config variant {variant!r}; known: ml1m, ml1m_cpu, "
                         "tiny")
    return c
