"""Validation of the experiment configs, run before any work starts.

Each launcher calls its ``validate_*`` first thing in ``run()``: every problem (unknown
names, out-of-range values, wrong types, sizes that cannot divide) is collected and
reported together in one :class:`ConfigError` whose lines name the key and what it allows,
before any download, training or file is written. :func:`check_writable` does the same
for the output folder and the data cache; :func:`define_config` replaces
``config_flags.DEFINE_config_file`` so that an unknown ``--config.<key>=`` override is a
one-line error instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DATASETS = ("ml-1m", "ml-100k", "synthetic")


class ConfigError(ValueError):
    """One or more config values are invalid (one line per key)."""


class _Checker:
    """Collects problems as ``config.<key>=<value>: <what is allowed>`` lines."""

    def __init__(self, cfg: Any, name: str):
        self.cfg, self.name, self.problems = cfg, name, []

    def get(self, key: str) -> tuple[bool, Any]:
        node = self.cfg
        for part in key.split("."):
            try:
                node = node[part]
            except (KeyError, TypeError, AttributeError):
                return False, None
        return True, node

    def bad(self, key: str, value: Any, want: str) -> None:
        self.problems.append(f"config.{key}={value!r}: {want}")

    def int(self, key: str, lo: int | None = None, hi: int | None = None,
            optional: bool = False) -> int | None:
        found, v = self.get(key)
        if not found:
            if not optional:
                self.problems.append(f"config.{key} is missing")
            return None
        rng = _range_text(lo, hi)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            self.bad(key, v, f"must be an integer{rng}")
            return None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.bad(key, v, f"must be an integer{rng}")
            return None
        return int(v)

    def num(self, key: str, lo: float | None = None, hi: float | None = None, *,
            strict_lo: bool = False, optional: bool = False) -> float | None:
        found, v = self.get(key)
        if not found:
            if not optional:
                self.problems.append(f"config.{key} is missing")
            return None
        rng = _range_text(lo, hi, strict_lo)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            self.bad(key, v, f"must be a finite number{rng}")
            return None
        if (lo is not None and (v < lo or (strict_lo and v == lo))) or (hi is not None and v > hi):
            self.bad(key, v, f"must be a number{rng}")
            return None
        return float(v)

    def bool(self, key: str, optional: bool = False) -> None:
        found, v = self.get(key)
        if not found:
            if not optional:
                self.problems.append(f"config.{key} is missing")
        elif not isinstance(v, bool):
            self.bad(key, v, "must be True or False")

    def choice(self, key: str, allowed: Iterable[str], optional: bool = False) -> Any:
        allowed = tuple(allowed)
        found, v = self.get(key)
        if not found:
            if not optional:
                self.problems.append(f"config.{key} is missing; allowed: {', '.join(allowed)}")
            return None
        if v not in allowed:
            self.bad(key, v, f"unknown value; allowed: {', '.join(allowed)}")
            return None
        return v

    def names(self, key: str, allowed: Iterable[str], nonempty: bool = True) -> list[str]:
        """A tuple/list of names, each in ``allowed``, no duplicates."""
        allowed = tuple(allowed)
        found, v = self.get(key)
        if not found:
            self.problems.append(f"config.{key} is missing; allowed: {', '.join(allowed)}")
            return []
        if isinstance(v, str) or not isinstance(v, tuple | list):
            self.bad(key, v, f"must be a tuple of names from: {', '.join(allowed)} (write "
                     f"--config.{key}=a,b or --config.{key}='(\"a\", \"b\")')")
            return []
        unknown = [x for x in v if x not in allowed]
        if unknown:
            self.bad(key, tuple(v), f"unknown {', '.join(map(repr, unknown))}; allowed: "
                     f"{', '.join(allowed)}")
        if len(set(v)) != len(v):
            self.bad(key, tuple(v), "has duplicates")
        if nonempty and not v:
            self.bad(key, tuple(v), f"needs at least one of: {', '.join(allowed)}")
        return [x for x in v if x in allowed]

    def ints(self, key: str, lo: int | None = None, nonempty: bool = True) -> list[int]:
        found, v = self.get(key)
        if not found:
            self.problems.append(f"config.{key} is missing")
            return []
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            v = (v,)
        if not isinstance(v, tuple | list) or any(
                isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in v):
            self.bad(key, v, f"must be a tuple of integers{_range_text(lo, None)}")
            return []
        if lo is not None and any(x < lo for x in v):
            self.bad(key, tuple(v), f"every entry must be >= {lo}")
        if nonempty and not v:
            self.bad(key, tuple(v), "needs at least one entry")
        return [int(x) for x in v]

    def divides(self, key_a: str, key_b: str) -> None:
        """``config[key_b]`` must be a multiple of ``config[key_a]``."""
        (fa, a), (fb, b) = self.get(key_a), self.get(key_b)
        if fa and fb and isinstance(a, int) and isinstance(b, int) and a > 0 and b % a:
            self.problems.append(f"config.{key_b}={b} must be a multiple of config.{key_a}={a}")

    def done(self) -> None:
        if self.problems:
            raise ConfigError(f"invalid {self.name} config ({len(self.problems)} problem"
                              f"{'s' if len(self.problems) > 1 else ''}):\n  "
                              + "\n  ".join(self.problems))


def _range_text(lo, hi, strict_lo: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if strict_lo else '['}{lo}, {hi}]"
    if lo is not None:
        return f" {'>' if strict_lo else '>='} {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def _llama_dims(c: _Checker, prefix: str) -> None:
    for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim"):
        c.int(f"{prefix}.{k}", 1)
    c.divides(f"{prefix}.n_heads", f"{prefix}.dim")
    c.divides(f"{prefix}.n_kv_heads", f"{prefix}.n_heads")


def validate_prorl(cfg: Any) -> None:
    """Checks a ProRL config (``experiments/configs/prorl.py``); raises :class:`ConfigError`."""
    from experiments.configs.prorl import METHODS
    from recrl.prs import simulator

    c = _Checker(cfg, "prorl")
    c.choice("dataset", DATASETS)
    c.ints("seeds", 0)
    c.names("methods", METHODS)
    c.names("baselines", ("pretrained", "mined", "ipg", "greedy_sequential"), nonempty=False)
    c.bool("distributed")
    c.int("num_devices", 0)
    for k in ("min_user", "min_item", "history", "max_len"):
        c.int(f"data.{k}", 1)
    c.int("data.seed", 0)
    c.int("sim.epochs", 1)
    c.int("sim.batch_size", 1)
    c.int("sim.patience", 0)
    c.num("sim.lr", 0, strict_lo=True)
    c.num("sim.max_seconds", 0)
    c.choice("evaluator.kind", simulator.KINDS)
    c.int("evaluator.epochs", 1)
    c.int("evaluator.patience", 0)
    for k in ("dim", "n_layers", "n_heads", "ffn_dim"):
        c.int(f"policy.{k}", 1)
    c.divides("policy.n_heads", "policy.dim")
    c.num("policy.dropout", 0, 0.99)
    c.int("pretrain.epochs", 1)
    c.int("pretrain.batch_size", 1)
    c.num("pretrain.lr", 0, strict_lo=True)
    c.num("pretrain.weight_decay", 0)
    c.int("rl.epochs", 1)
    c.int("rl.prompts", 1)
    c.int("rl.group_size", 2)
    c.num("rl.lr", 0, strict_lo=True)
    c.num("rl.warmup_frac", 0, 1)
    c.num("rl.kl_weight", 0)
    c.int("rl.steps_per_epoch", 0)
    found, w = c.get("rl.reward_weights")
    if found and (not isinstance(w, tuple | list) or len(w) != 3 or not all(
            isinstance(x, numbers.Real) and math.isfinite(x) for x in w)):
        c.bad("rl.reward_weights", w, "must be 3 finite numbers (IoI, IoR, CTR)")
    c.int("eval.k", 1)
    c.int("eval.max_prompts", 0)
    c.int("eval.val_prompts", 0)
    c.bool("retrain_changed", optional=True)
    c.done()


def validate_icrlvr(cfg: Any) -> None:
    """Checks an In-Context RLVR config (``experiments/configs/icrlvr.py``)."""
    from experiments.configs.icrlvr import METHODS

    c = _Checker(cfg, "icrlvr")
    c.ints("seeds", 0)
    c.choice("model.kind", ("tiny", "smollm2"))
    _llama_dims(c, "model")
    c.bool("retrain_changed", optional=True)
    if str(cfg.get("variant", "")).startswith("eg_study"):  # experiments/eg_study.py's config
        c.done()
        return
    c.names("methods", METHODS)
    parts = c.names("parts", ("quality", "training"))
    for k in ("n_train", "n_demo", "n_probe", "n_eval", "max_operand"):
        c.int(f"data.{k}", 1)
    c.ints("data.num_ops", 1)
    c.int("data.seed", 0)
    c.int("sft.steps", 0)
    c.int("sft.batch_size", 1)
    c.num("sft.lr", 0, strict_lo=True)
    c.choice("rl.eg_mode", ("reward", "advantage"))
    c.choice("rl.eg_signal", ("log_weight", "eg", "eg_per_token"))
    for k in ("steps", "prompts_per_step", "max_prompt_len", "max_new_tokens", "eval_every",
              "eg_probes", "max_sampling_rounds"):
        c.int(f"rl.{k}", 1)
    g = c.int("rl.group_size", 2)
    c.int("rl.num_demo", 0, g)
    c.int("rl.warmup_steps", 0)
    c.int("rl.ppo_epochs", 1, optional=True)
    c.int("rl.checkpoint_every", 0, optional=True)
    c.num("rl.lr", 0, strict_lo=True)
    c.num("rl.temperature", 0, strict_lo=True)
    c.num("rl.eg_temperature", 0, strict_lo=True)
    c.bool("rl.dynamic_sampling")
    _, n_demo = c.get("data.n_demo")
    _, k_demo = c.get("rl.num_demo")
    if isinstance(n_demo, int) and isinstance(k_demo, int) and k_demo > n_demo:
        c.problems.append(f"config.rl.num_demo={k_demo} exceeds config.data.n_demo={n_demo}")
    c.int("eval.k", 1)
    c.int("eval.max_problems", 1)
    if "quality" in parts:
        c.choice("quality.model", ("smollm2", "policy"))
        for k in ("n_questions", "samples", "n_probes", "max_new_tokens"):
            c.int(f"quality.{k}", 1)
        c.int("quality.shots", 0)
        c.num("quality.temperature", 0)
    c.done()


def _goracs_budgets(c: _Checker) -> None:
    budgets = c.ints("budgets", 1, nonempty=False)
    found, fr = c.get("budget_fractions")
    fracs = []
    if found:
        if not isinstance(fr, tuple | list) or not all(
                isinstance(f, numbers.Real) and not isinstance(f, bool) and 0 < f <= 1
                for f in fr):
            c.bad("budget_fractions", fr, "must be a tuple of numbers in (0, 1]")
        else:
            fracs = list(fr)
    if not budgets and not fracs:
        c.problems.append("config.budgets and config.budget_fractions are both empty: give "
                          "at least one budget")


def _goracs_model_and_select(c: _Checker) -> None:
    c.choice("model.kind", ("smollm2", "tiny", "tiny_bpe"))
    _llama_dims(c, "model")
    for k in ("max_prompt", "max_answer", "lora_rank"):
        c.int(f"model.{k}", 1)
    c.num("model.lora_alpha", 0, strict_lo=True)
    c.int("pretrain.steps", 0)
    c.int("pretrain.batch_size", 1)
    c.num("pretrain.lr", 0, strict_lo=True)
    c.bool("pretrain.cache", optional=True)
    if c.get("select.lam")[1] is not None:  # None: the paper's value for the task
        c.num("select.lam", 0)
    c.int("select.max_iters", 0)
    c.int("select.cut", 1)
    c.int("select.max_checks", 1)
    c.num("select.epsilon", 0, strict_lo=True)
    c.num("select.threshold", 0, strict_lo=True)
    c.int("select.block", 1, optional=True)
    c.bool("select.exact_ot")


def validate_goracs(cfg: Any) -> None:
    """Checks a GORACS config (``experiments/configs/goracs.py``)."""
    from experiments.configs.goracs import DECISIVE_METHODS, METHODS

    c = _Checker(cfg, "goracs")
    decisive = c.choice("protocol", ("decisive",), optional=True) == "decisive"
    c.choice("dataset", DATASETS)
    c.choice("task", ("next_item", "click"), optional=True)
    c.ints("seeds", 0)
    c.names("methods", DECISIVE_METHODS if decisive else METHODS)
    _goracs_budgets(c)
    for k in ("max_history", "num_val", "num_test", "pool_size", "val_size", "test_size",
              "num_negatives"):
        c.int(f"data.{k}", 1)
    c.int("data.seed", 0)
    _goracs_model_and_select(c)
    if decisive:
        c.int("random_subsets", 1)
        c.int("data.val_users", 1)
        c.int("finetune.eval_every", 1)
        c.int("finetune.patience", 0)
        c.int("finetune.seed", 0)
    else:
        c.int("finetune.epochs", 1)
    c.int("finetune.batch_size", 1)
    c.num("finetune.lr", 0, strict_lo=True)
    c.int("finetune.max_steps", 1)
    c.int("features.batch_size", 1)
    c.int("features.chunk", 1)
    c.num("dealrec.gamma", 0, optional=True)
    c.num("dealrec.damping", 0, strict_lo=True, optional=True)
    c.int("eval.full_catalogue", 0, optional=True)
    c.bool("retrain_changed", optional=True)
    c.done()


# ---------------------------------------------------------------------------------------
# Cached stages of each launcher's --out_dir and the config keys each depends on
# (``recrl.rundir.guard_stages``). Keys in *_FREE change no cached result; the distributed
# settings (``recrl.parallel.CONFIG_FIELDS``) are free in every launcher, so a run resumes
# with another process or device count (results depend on them only through float rounding).

DISTRIBUTED_FREE = ("distributed", "coordinator_address", "num_processes", "process_id",
                    "cpu_collectives", "num_devices")
PRORL_FREE = ("variant", "seeds", "methods", "retrain_changed", *DISTRIBUTED_FREE)


def prorl_stages(cfg: Any) -> dict[str, tuple[str, ...]]:
    """ProRL: simulators, pretrained policy, baselines, RL runs (paths under --out_dir)."""
    data = ("dataset", "data")
    return {"sasrec": (*data, "sim"),
            str(cfg.evaluator.kind): (*data, "sim", "evaluator"),
            "policy_pretrained": (*data, "sim", "policy", "pretrain", "eval.val_prompts"),
            "baselines.json": (*data, "sim", "evaluator", "policy", "pretrain", "baselines",
                               "eval"),
            "rl": (*data, "sim", "evaluator", "policy", "pretrain", "rl", "eval")}


ICRLVR_FREE = ("variant", "seeds", "methods", "parts", "quality", "retrain_changed",
               *DISTRIBUTED_FREE)
ICRLVR_STAGES = {"runs": ("data", "model", "sft", "rl", "eval")}
GORACS_FREE = ("variant", "seeds", "methods", "budgets", "budget_fractions",
               "retrain_changed", *DISTRIBUTED_FREE)
# the decisive protocol's stages (features, selections, runs) depend on every key not free
GORACS_DECISIVE_FREE = ("variant", "seeds", "methods", "budgets", "budget_fractions",
                        "random_subsets", "report", "retrain_changed", *DISTRIBUTED_FREE)
GORACS_DECISIVE_STAGES: dict[str, tuple[str, ...]] = {
    "features.npz": (), "selections.json": (), "runs": ()}
GORACS_STAGES = {"runs": ("dataset", "task", "data", "model", "pretrain", "select", "finetune",
                          "features", "dealrec", "eval")}


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """Creates ``path`` (a folder) if needed and checks a file can be written in it.

    Raises:
      ConfigError: naming ``what`` (e.g. ``--out_dir``) and the path.
    """
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"{what} {path} is not writable ({e.strerror or e}); choose another"
                          " folder") from None
    return path


def check_data_cache() -> Path:
    """:func:`check_writable` on the data cache (``$RECRL_DATA`` or ``~/.cache/recrl``)."""
    from recrl.data import fetch

    return check_writable(fetch.cache_root(), "the data cache (RECRL_DATA)")


def needs_data_cache(cfg: Any) -> bool:
    """Whether a config reads fetched data or weights (so the cache must be writable)."""
    model = cfg.get("model", {}).get("kind", "tiny")
    quality = cfg.get("quality", {}).get("model", "")
    return (cfg.get("dataset", "synthetic") != "synthetic" or model in ("smollm2", "tiny_bpe")
            or (quality == "smollm2" and "quality" in cfg.get("parts", ()))
            or bool(cfg.get("pretrain", {}).get("cache", False)
                    and cfg.get("pretrain", {}).get("steps", 0) > 0))


def preflight(cfg: Any, out_dir: str | os.PathLike, validate) -> Path:
    """``validate(cfg)``, then the output folder and (when used) the data cache writable."""
    validate(cfg)
    out = check_writable(out_dir, "--out_dir")
    if needs_data_cache(cfg):
        check_data_cache()
    return out


# ---------------------------------------------------------------------------------------
# --config flag with clear errors for unknown override keys.


def _load_config(spec: str) -> Any:
    from experiments.configs import resolve

    try:
        spec = resolve(spec)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    path, _, variant = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("_recrl_config_check", path)
    if mod_spec is None or not os.path.exists(path):
        raise SystemExit(f"error: --config file {path!r} does not exist")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def unknown_override_keys(argv: list[str], name: str, default: str) -> list[str]:
    """Messages for ``--<name>.<key>=...`` overrides whose key the config does not have."""
    spec = default
    for a in argv[1:]:
        if a.startswith(f"--{name}="):
            spec = a.split("=", 1)[1]
    overrides = [a[len(name) + 3:].split("=", 1)[0] for a in argv[1:]
                 if a.startswith(f"--{name}.")]
    if not overrides:
        return []
    try:
        cfg = _load_config(spec)
    except ValueError as e:  # e.g. an unknown variant
        raise SystemExit(f"error: --{name}={spec}: {e}") from None
    out = []
    for key in overrides:
        node, path = cfg, []
        for part in key.split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                where = f"config.{'.'.join(path)}" if path else "the config"
                out.append(f"unknown config key {key!r} in --{name}.{key}: {where} has "
                           f"{', '.join(map(str, keys)) or 'no sub-keys'}")
                break
            node, path = node[part], [*path, part]
    return out


def define_config(name: str, default: str, help_string: str) -> None:
    """``define_config_flag`` (config files resolve from the package) after checking
    ``sys.argv``'s override keys.

    Raises:
      SystemExit: an override names a key the config does not have (message lists the keys
        allowed at that level).
    """
    from experiments.configs import define_config_flag

    problems = unknown_override_keys(sys.argv, name, default)
    if problems:
        raise SystemExit("error: " + "\n       ".join(problems))
    define_config_flag(default, help_string, name=name)
