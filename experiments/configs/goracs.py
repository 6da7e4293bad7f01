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
from recrl.coreset.selectors import Method

#: every selection method by name: the selector (``recrl.coreset.selectors``) and the
#: sub-config it reads
METHOD_TABLE: dict[str, Method] = {
    "goracs": Method("goracs", "select"),
    "greedy": Method("greedy", "select"),  # GORACS's greedy start, no swaps
    "random": Method("random"),
    "el2n": Method("el2n"),
    "grand": Method("grand"),
    "ccs": Method("ccs"),
    "kcenter": Method("kcenter"),
    "dealrec": Method("dealrec", "dealrec"),
    "d2pruning": Method("d2pruning", "d2pruning"),
    "full": Method("full"),
}
#: the methods of each protocol (the defaults of ``methods``)
METHODS = ("goracs", "random", "el2n", "grand", "ccs", "kcenter", "dealrec", "full")
DECISIVE_METHODS = ("goracs", "greedy", "random", "kcenter", "el2n", "grand", "ccs",
                    "dealrec", "d2pruning")


def _base(variant: str) -> ml_collections.ConfigDict:
    """The GPU (``ml1m``) configuration every other variant starts from."""
    config = ml_collections.ConfigDict()
    config.variant = variant
    config.retrain_changed = False  # rerun into --out_dir: retrain stages whose config changed
    parallel.add_config_fields(config)  # distributed, coordinator_address, ..., num_devices
    config.dataset = "ml-1m"  # ml-1m | ml-100k | synthetic
    config.task = "next_item"  # next_item (HR/NDCG) | click (rating > 3: AUC / log-loss)
    config.seeds = (0, 1, 2)
    config.methods = METHODS
    config.budgets = (1024,)
    config.budget_fractions = (0.01, 0.02, 0.05)  # of the pool, added to ``budgets``
    config.data = ml_collections.ConfigDict(dict(
        max_history=10, num_val=5000, num_test=5000,
        pool_size=20000,  # training-pool rows sampled (seeded) as selection candidates
        val_size=5000, test_size=1000, num_negatives=99, seed=0))
    # model: "smollm2" (GGUF + its tokenizer), "tiny" (tiny_config, byte tokenizer) or
    # "tiny_bpe" (tiny_config, SmolLM2's BPE restricted to the ids the data uses)
    config.model = ml_collections.ConfigDict(dict(
        kind="smollm2", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
        max_prompt=256, max_answer=32, lora_rank=8, lora_alpha=16))
    # CPU models are pretrained on the catalogue titles ("Movie: <title>"), which are
    # disjoint from the selection pool's (history -> next title) samples.
    config.pretrain = ml_collections.ConfigDict(dict(steps=0, batch_size=32, lr=3e-3,
                                                     cache=True))
    # lam unset (None) = the paper's value for the task (0.1 next item, 0.5 click)
    config.select = ml_collections.ConfigDict(dict(
        lam=placeholder(float), max_iters=100, cut=10, max_checks=20, epsilon=0.05,
        threshold=1e-3, exact_ot=True, block=1))  # block > 1: recrl's extension
    config.finetune = ml_collections.ConfigDict(dict(epochs=3, batch_size=16, lr=1e-3,
                                                     max_steps=2000))
    config.features = ml_collections.ConfigDict(dict(batch_size=128, chunk=16))
    # DEALRec baseline: influence (damped empirical-Fisher) + gamma * effort (grad norm)
    config.dealrec = ml_collections.ConfigDict(dict(influence=True, gamma=1.0, damping=0.01))
    # test samples also ranked against the whole catalogue (0: off)
    config.eval = ml_collections.ConfigDict(dict(full_catalogue=500))
    return config


def _ml1m_cpu(config: ml_collections.ConfigDict) -> None:
    """2 CPU cores: a d=128 Llama on SmolLM2's BPE (compact vocabulary), pretrained on the
    catalogue titles; 10,000 pool windows, budgets 1/2/5 % + 1024, 3 seeds; 200 test
    windows x 100 candidates (the full catalogue costs ~2 s per test prompt here)."""
    config.methods = ("goracs", "random", "grand", "ccs", "kcenter", "dealrec", "full")
    config.data.update(max_history=3, pool_size=10000, val_size=1000, test_size=200,
                       num_negatives=99)
    config.model.update(kind="tiny_bpe", dim=128, n_layers=2, ffn_dim=256, max_prompt=64,
                        max_answer=24, lora_rank=8, lora_alpha=16)
    config.pretrain.update(steps=1000, batch_size=64, lr=3e-3)
    config.finetune.update(epochs=5, batch_size=16, lr=2e-3, max_steps=1500)
    config.select.update(max_iters=30)
    config.eval.full_catalogue = 0


def _tiny(config: ml_collections.ConfigDict) -> None:
    """The pipeline end to end in a test (synthetic data, a one-block byte-level model)."""
    config.dataset = "synthetic"
    config.seeds = (0,)
    config.methods = ("goracs", "random", "grand", "dealrec", "full")
    config.budgets = (8,)
    config.budget_fractions = (0.25,)
    config.pretrain.cache = False
    config.eval.full_catalogue = 3
    config.data.update(max_history=2, num_val=24, num_test=24, pool_size=40, val_size=24,
                       test_size=6, num_negatives=4)
    config.model.update(kind="tiny", dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64,
                        max_prompt=24, max_answer=8, lora_rank=2, lora_alpha=4)
    config.pretrain.update(steps=4, batch_size=8)
    config.finetune.update(epochs=1, batch_size=4, max_steps=3)
    config.select.update(max_iters=2, cut=3, max_checks=3)
    config.features.update(batch_size=64, chunk=8)


_VARIANTS = {"ml1m": None, "ml1m_cpu": _ml1m_cpu, "tiny": _tiny}


def get_config(variant: str = "ml1m_cpu") -> ml_collections.ConfigDict:
    """The config of ``variant`` (ml1m, ml1m_cpu, tiny, decisive_cpu, decisive_tiny)."""
    if variant in ("decisive_cpu", "decisive_tiny"):
        return decisive_config(variant)
    if variant not in _VARIANTS:
        raise ValueError(f"unknown goracs config variant {variant!r}; known: ml1m, ml1m_cpu, "
                         "tiny, decisive_cpu, decisive_tiny")
    config = _base(variant)
    if _VARIANTS[variant] is not None:
        _VARIANTS[variant](config)
    return config


def _decisive_tiny(config: ml_collections.ConfigDict) -> None:
    """The decisive pipeline end to end in a test (synthetic data)."""
    tiny = get_config("tiny")
    config.dataset = "synthetic"
    config.model, config.features, config.pretrain = tiny.model, tiny.features, tiny.pretrain
    config.budgets = (6,)
    config.random_subsets = 2
    config.data.update(max_history=2, pool_size=60, val_users=10, num_negatives=4,
                       synthetic_users=40)
    config.finetune.update(max_steps=4, eval_every=2, patience=1, batch_size=4)
    config.select.update(max_iters=2, cut=3, max_checks=3)
    config.el2n.update(runs=1, steps=2)
    config.grand.inits = 2
    config.dealrec.update(surrogate_dim=4, surrogate_steps=5)
    config.d2pruning.k = 3
    config.report.bootstrap = 200


def decisive_config(variant: str) -> ml_collections.ConfigDict:
    """The decisive protocol (docs/goracs.md): per-user leave-last-out split, |V| >= 5n,
    one fine-tuning schedule with early stopping for every subset, every test window."""
    config = get_config("ml1m_cpu")
    config.variant = variant
    config.protocol = "decisive"
    config.methods = DECISIVE_METHODS
    config.budgets = (100, 200)
    config.budget_fractions = ()
    config.random_subsets = 10  # the random distribution: seeds 0 .. 9
    config.data.update(max_history=3, pool_size=10000, val_users=1000, num_negatives=99,
                       seed=0)
    config.finetune = ml_collections.ConfigDict(dict(max_steps=400, eval_every=25,
                                                     patience=4, batch_size=16, lr=2e-3,
                                                     seed=0))
    config.select.update(lam=0.1, max_iters=30)
    # EL2N: error L2 norm averaged over `runs` models LoRA-tuned `steps` steps on the pool
    config.el2n = ml_collections.ConfigDict(dict(runs=2, steps=50))
    # GraNd: full-LoRA gradient norm averaged over `inits` LoRA initialisations
    config.grand = ml_collections.ConfigDict(dict(inits=4))
    # DEALRec: surrogate influence + gamma * effort (full-LoRA gradient norm)
    config.dealrec = ml_collections.ConfigDict(dict(gamma=1.0, damping=1e-3,
                                                    surrogate_dim=32, surrogate_steps=500))
    config.d2pruning = ml_collections.ConfigDict(dict(k=10, gamma_forward=1.0,
                                                      gamma_reverse=1.0))
    config.report = ml_collections.ConfigDict(dict(bootstrap=2000))
    if variant == "decisive_tiny":
        _decisive_tiny(config)
    return config
