r"""In-Context RLVR: EG as a quality signal, DAPO/GRPO vs IC- vs EG-reweighted, costs; EG study.

Variants (the part after ``:``)::

    python -m experiments.icrlvr --config=experiments/configs/icrlvr.py:smollm2   # GPU, real
    python -m experiments.icrlvr --config=experiments/configs/icrlvr.py:tiny_cpu  # 2-core budget
    python -m experiments.icrlvr --config=experiments/configs/icrlvr.py:tiny      # tests
    python -m experiments.eg_study --config=experiments/configs/icrlvr.py:eg_study  # ~2-3 h CPU
    python -m experiments.eg_study --config=experiments/configs/icrlvr.py:eg_study_tiny

Methods are the names of ``METHODS`` (a table, below): ``<preset>``, ``ic_<preset>``
(``num_demo`` of the ``group_size`` rollouts on a demonstration) and ``eg_<preset>`` (explicit
EG reweighting) for a preset of ``recrl.rlvr.config.PRESETS`` (``grpo``, ``drgrpo``,
``dapo``); each entry names its preset, in-context and EG reweighting as separate fields.

Override any field on the command line, e.g. ``--config.rl.steps=40``. Outputs go to
``--out_dir`` (default ``runs/icrlvr``): ``results.json``, ``report.md``, ``curves.png``.
"""

import ml_collections

from recrl import parallel
from recrl.rlvr.config import Method

# name -> (preset: loss settings, in-context demonstration rollouts, EG reweighting)
METHODS: dict[str, Method] = {
    "grpo": Method("grpo", in_context=False, eg_reweight=False),
    "ic_grpo": Method("grpo", in_context=True, eg_reweight=False),
    "eg_grpo": Method("grpo", in_context=False, eg_reweight=True),
    "drgrpo": Method("drgrpo", in_context=False, eg_reweight=False),
    "ic_drgrpo": Method("drgrpo", in_context=True, eg_reweight=False),
    "eg_drgrpo": Method("drgrpo", in_context=False, eg_reweight=True),
    "dapo": Method("dapo", in_context=False, eg_reweight=False),
    "ic_dapo": Method("dapo", in_context=True, eg_reweight=False),
    "eg_dapo": Method("dapo", in_context=False, eg_reweight=True),
}
DEFAULT_METHODS = ("dapo", "ic_dapo", "eg_dapo")


def plain_method(name: str) -> str | None:
    """The table's name for ``name``'s preset without in-context rollouts or EG weights
    (the reference an ``ic_`` method's time overhead is measured against)."""
    plain = Method(METHODS[name].preset)
    return next((k for k, m in METHODS.items() if m == plain), None)


def get_config(variant: str = "tiny_cpu") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.retrain_changed = False  # rerun into --out_dir: retrain stages whose config changed
    parallel.add_config_fields(c)  # distributed, coordinator_address, ..., num_devices
    if variant.startswith("eg_study"):
        return _study_config(c, variant)
    c.seeds = (0, 1, 2)
    c.methods = DEFAULT_METHODS
    c.parts = ("quality", "training")  # which experiments to run
    c.data = ml_collections.ConfigDict(dict(
        n_train=512, n_demo=256, n_probe=16, n_eval=128, num_ops=(2, 3), max_operand=9, seed=0))
    # policy for the training comparison: "tiny" (char-level, random init + SFT) or "smollm2"
    c.model = ml_collections.ConfigDict(dict(kind="tiny", dim=64, n_layers=2, n_heads=4,
                                             n_kv_heads=2, ffn_dim=192))
    c.sft = ml_collections.ConfigDict(dict(steps=600, batch_size=32, lr=3e-3))
    c.rl = ml_collections.ConfigDict(dict(
        steps=40, prompts_per_step=8, group_size=8, num_demo=6,
        max_prompt_len=96, max_new_tokens=40, lr=3e-4, warmup_steps=3, temperature=1.0,
        eval_every=10, eg_probes=4, eg_temperature=1.0, eg_mode="reward",
        eg_signal="log_weight", dynamic_sampling=True,
        max_sampling_rounds=2,
        checkpoint_every=0))  # learner checkpoint every N steps (0: every eval_every)
    c.eval = ml_collections.ConfigDict(dict(k=4, max_problems=64))
    # EG as a quality signal: traces sampled few-shot from `model` ("smollm2" or "policy")
    c.quality = ml_collections.ConfigDict(dict(
        model="smollm2", n_questions=24, samples=4, shots=2, n_probes=8, temperature=0.7,
        max_new_tokens=40))

    if variant not in _VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: smollm2, tiny_cpu, tiny")
    _VARIANTS[variant](c)
    return c


def _smollm2(c: ml_collections.ConfigDict) -> None:
    """Real SmolLM2-135M weights at the paper's scale (GPU)."""
    c.model.update(kind="smollm2")
    c.data.update(n_probe=100)
    c.quality.update(n_questions=512, samples=8, n_probes=100)
    c.rl.update(steps=200, prompts_per_step=32, lr=1e-6, warmup_steps=10, eg_probes=16,
                max_prompt_len=256, max_new_tokens=64)
    c.eval.update(k=8, max_problems=128)


def _tiny(c: ml_collections.ConfigDict) -> None:
    """The test size: one seed, a 1-block policy, 2 RL steps."""
    c.seeds = (0,)
    c.data.update(n_train=64, n_demo=16, n_probe=4, n_eval=8)
    c.model.update(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64)
    c.sft.update(steps=10, batch_size=8)
    c.rl.update(steps=2, prompts_per_step=4, group_size=4, num_demo=2, eval_every=2,
                eg_probes=2, max_new_tokens=16, max_sampling_rounds=1)
    c.eval.update(k=2, max_problems=4)
    c.quality.update(model="policy", shots=0, n_questions=4, samples=2, n_probes=2,
                     max_new_tokens=16)


# tiny_cpu: the defaults (quality.model="policy", the SFT-warmed tiny model: use
# n_questions=64, shots=0)
_VARIANTS = {"smollm2": _smollm2, "tiny_cpu": lambda c: None, "tiny": _tiny}


def _study_config(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """The Evidence Gain study (experiments/eg_study.py): protocol in docs/icrlvr.md."""
    c.seeds = (0,)
    c.data = ml_collections.ConfigDict(dict(seed=0))
    c.model = ml_collections.ConfigDict(dict(kind="smollm2", dim=64, n_layers=2, n_heads=4,
                                             n_kv_heads=2, ffn_dim=192))
    c.study = ml_collections.ConfigDict(dict(
        # candidate difficulties for the pilot (num_ops >= 2: several checkable steps)
        difficulties=(dict(num_ops=(2,), max_operand=5), dict(num_ops=(2,), max_operand=9),
                      dict(num_ops=(3,), max_operand=9)),
        pilot_questions=64, min_accuracy=0.2, shots=3, samples=8, temperature=0.7,
        max_new_tokens=48, prompt_len=32, chunk=32, target_correct=300, max_questions=1500,
        n_probes=32, eg_chunk=8, demo_len=96, n_boot=1000, n_label=60))
    if variant == "eg_study":
        pass
    elif variant == "eg_study_tiny":
        c.model.update(kind="tiny", dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64)
        c.study.update(difficulties=(dict(num_ops=(2,), max_operand=5),), pilot_questions=4,
                       shots=1, samples=2, max_new_tokens=12, prompt_len=24, chunk=4,
                       target_correct=6, max_questions=8, n_probes=2, eg_chunk=4, demo_len=48,
                       n_boot=50, n_label=4)
    else:
        raise ValueError(f"unknown variant {variant!r}; known: eg_study, eg_study_tiny")
    return c
