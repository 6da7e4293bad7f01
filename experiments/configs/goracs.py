r"""GORACS on MovieLens: coreset selection for a LoRA-tuned LM recommender vs baselines.

Variants (the part after ``:``)::

    python -m experiments.goracs --config=experiments/configs/goracs.py:ml1m      # GPU, SmolLM2
    python -m experiments.goracs --config=experiments/configs/goracs.py:ml1m_cpu  # 2-core budget
    python -m experiments.goracs --config=experiments/configs/goracs.py:tiny      # tests
    python -m experiments.goracs --config=experiments/configs/goracs.py:decisive_cpu  # issue 17

Override any field on the command line, e.g. ``--config.budgets=32,64``; the click task
(label-enhanced GORACS, AUC / log-loss) with ``--config.task=click``.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from recrl import parallel

METHODS = ("goracs", "random", "el2n", "grand", "ccs", "kcenter", "dealrec", "full")


def get_config(variant: str = "ml1m_cpu") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.retrain_changed = False  # rerun into --out_dir: retrain stages whose config changed
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
    # lam unset (None) = the paper's value for the task (0.1 next item, 0.5 click)
    c.select = ml_collections.ConfigDict(dict(lam=placeholder(float), max_iters=100, cut=10,
                                              max_checks=20, epsilon=0.05, threshold=1e-3,
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
    elif variant in ("decisive_cpu", "decisive_tiny"):
        return decisive_config(variant)
    else:
        raise ValueError(f"unknown goracs config variant {variant!r}; known: ml1m, ml1m_cpu, "
                         "tiny, decisive_cpu, decisive_tiny")
    return c


DECISIVE_METHODS = ("goracs", "greedy", "random", "kcenter", "el2n", "grand", "ccs",
                    "dealrec", "d2pruning")


def decisive_config(variant: str) -> ml_collections.ConfigDict:
    """The decisive protocol (docs/goracs.md): per-user leave-last-out split, |V| >= 5n,
    one fine-tuning schedule with early stopping for every subset, every test window."""
    c = get_config("ml1m_cpu")
    c.variant = variant
    c.protocol = "decisive"
    c.methods = DECISIVE_METHODS
    c.budgets = (100, 200)
    c.budget_fractions = ()
    c.random_subsets = 10  # the random distribution: seeds 0 .. 9
    c.data.update(max_history=3, pool_size=10000, val_users=1000, num_negatives=99, seed=0)
    c.finetune = ml_collections.ConfigDict(dict(max_steps=400, eval_every=25, patience=4,
                                                batch=16, lr=2e-3, seed=0))
    c.select.update(lam=0.1, max_iters=30)
    # EL2N: error L2 norm averaged over `runs` models LoRA-tuned `steps` steps on the pool
    c.el2n = ml_collections.ConfigDict(dict(runs=2, steps=50))
    # GraNd: full-LoRA gradient norm averaged over `inits` LoRA initialisations
    c.grand = ml_collections.ConfigDict(dict(inits=4))
    # DEALRec: surrogate influence + gamma * effort (full-LoRA gradient norm)
    c.dealrec = ml_collections.ConfigDict(dict(gamma=1.0, damping=1e-3, surrogate_dim=32,
                                               surrogate_steps=500))
    c.d2pruning = ml_collections.ConfigDict(dict(k=10, gamma_forward=1.0,
                                                 gamma_reverse=1.0))
    c.report = ml_collections.ConfigDict(dict(bootstrap=2000))
    if variant == "decisive_tiny":  # the pipeline end to end in a test (synthetic data)
        t = get_config("tiny")
        c.dataset = "synthetic"
        c.model, c.features, c.pretrain = t.model, t.features, t.pretrain
        c.budgets = (6,)
        c.random_subsets = 2
        c.data.update(max_history=2, pool_size=60, val_users=10, num_negatives=4,
                      synthetic_users=40)
        c.finetune.update(max_steps=4, eval_every=2, patience=1, batch=4)
        c.select.update(max_iters=2, cut=3, max_checks=3)
        c.el2n.update(runs=1, steps=2)
        c.grand.inits = 2
        c.dealrec.update(surrogate_dim=4, surrogate_steps=5)
        c.d2pruning.k = 3
        c.report.bootstrap = 200
    return c
