"""The stages of the ProRL pipeline around the RL runs, driven by an experiment config.

``experiments/prorl.py`` chains them: :func:`load_data` → :func:`get_simulator` (SASRec
reward model, GRU4Rec evaluator) → :func:`pretrained_policy` → :func:`baselines` → one
:func:`recrl.prs.train.train_rl` per method and seed → :func:`test_metrics` and
:func:`user_intervals`. Every stage is cached under the output directory (``out``) and
reloaded on a rerun. ``cfg`` is the ``ml_collections`` config of
``experiments/configs/prorl.py``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx

from recrl import parallel
from recrl.checkpoint import Checkpointer
from recrl.data import ProRLConfig, load_movielens, prepare_prorl, random_unseen_targets
from recrl.prs import evaluate, simulator
from recrl.prs.policy import PathPolicy, PolicyConfig
from recrl.prs.pretrain import PretrainConfig, pretrain
from recrl.prs.train import Prompts
from recrl.prs.train_simulator import load_simulator, save_simulator, train_simulator

INTERVAL_METRICS = ("sasrec/ctr@1", "sasrec/coherence@1", "sasrec/ioi@1", "sasrec/ior@1",
                    "sasrec/length@1", "sasrec/has_target@1", "sasrec/length@K",
                    "gru4rec/ioi@1")


@dataclasses.dataclass
class Context:
    """What every stage needs: config, data, simulators, output paths, mesh."""

    cfg: Any
    out: Path
    data: Any
    genres: np.ndarray
    sims: dict[str, Any]
    mesh: Any
    log: Any  # rundir.MetricsLog of metrics.jsonl


def load_data(cfg: Any) -> Any:
    """MovieLens (fetched on first use) or synthetic data, preprocessed for ProRL."""
    if cfg.dataset == "synthetic":
        from recrl.data import synthetic_movielens

        ml = synthetic_movielens(num_users=150, num_items=120, seed=0)
    else:
        ml = load_movielens(cfg.dataset, download=True)
    data_cfg = cfg.data
    return prepare_prorl(ml, ProRLConfig(
        min_user=data_cfg.min_user, min_item=data_cfg.min_item, seed=data_cfg.seed,
        history=data_cfg.history, max_len=data_cfg.max_len,
        long_runs=data_cfg.get("long_runs", "truncate")))


def genre_matrix(masks: np.ndarray) -> np.ndarray:
    """``[I]`` uint64 genre bitmasks → ``[I, 64]`` 0/1 matrix."""
    bits = (masks.astype(np.uint64)[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    return bits.astype(np.float32)


def get_simulator(out: Path, data: Any, kind: str, sim_cfg: Any, seed: int = 0,
                  mesh: Any = None) -> Any:
    """Loads ``out/<kind>`` or trains (data-parallel over ``mesh``) and saves it."""
    path = out / kind
    try:
        return load_simulator(path)
    except FileNotFoundError:
        pass
    cfg = simulator.SimConfig(kind=kind, num_items=data.sequences.num_items)
    cap = sim_cfg.get("max_seconds", 0.0) or None
    model, metrics = train_simulator(
        data, cfg, epochs=sim_cfg.epochs, batch_size=sim_cfg.get("batch_size", 128),
        seed=seed, patience=sim_cfg.patience, lr=sim_cfg.get("lr", 1e-3), max_seconds=cap,
        mesh=mesh)
    if cap is not None and metrics["epochs_run"] < sim_cfg.epochs and \
            metrics["train_seconds"] > cap:
        logging.warning(
            "%s: the time cap (max_seconds=%s) stopped training after %d of %d epochs; the "
            "result now depends on this machine's speed (the same command elsewhere trains "
            "longer). Set max_seconds=0 for a budget in epochs only.", kind, cap,
            metrics["epochs_run"], sim_cfg.epochs)
    save_simulator(path, model, cfg, metrics=metrics)
    logging.info("%s: %s", kind, json.dumps({k: metrics[k] for k in ("val", "test")}))
    return model


def prompts_of(paths: Any, limit: int = 0, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(history, target, user)`` of a split's prompts: all of them, or ``limit`` of them
    spread evenly over users (:func:`recrl.prs.evaluate.stratified_prompts`)."""
    idx = evaluate.stratified_prompts(np.asarray(paths.user), limit, seed=seed)
    return (np.asarray(paths.history, np.int32)[idx], np.asarray(paths.target, np.int32)[idx],
            np.asarray(paths.user, np.int32)[idx])


def split_prompts(ctx: Context) -> tuple[Prompts, Prompts]:
    """The RL loop's training prompts (all) and validation prompts (``eval.val_prompts``)."""
    train_h, train_t, _ = prompts_of(ctx.data.paths["train"])
    val_h, val_t, _ = prompts_of(ctx.data.paths["val"], ctx.cfg.eval.val_prompts)
    return Prompts(train_h, train_t), Prompts(val_h, val_t)


def pretrained_policy(ctx: Context) -> PathPolicy:
    """Loads ``out/policy_pretrained`` or pretrains on the mined train paths."""
    c = ctx.cfg
    pcfg = PolicyConfig(num_items=ctx.data.sequences.num_items, history=c.data.history,
                        max_len=c.data.max_len, **c.policy)
    policy = PathPolicy(pcfg, nnx.Rngs(0))
    ckpt = Checkpointer(ctx.out / "policy_pretrained", max_to_keep=1)
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(like=nnx.state(policy, nnx.Param))
        nnx.update(policy, state)
        return policy
    val_h, val_t, _ = prompts_of(ctx.data.paths["val"], c.eval.val_prompts)

    def validate(p: PathPolicy) -> dict:
        m = evaluate.evaluate_policy(p, {"sasrec": ctx.sims["sasrec"]}, val_h, val_t,
                                     ctx.genres, mask_target=c.rl.get("mask_target", True),
                                     mesh=ctx.mesh)
        return {"val_ioi@1": m["sasrec/ioi@1"], "val_ctr@1": m["sasrec/ctr@1"],
                "val_length@1": m["sasrec/length@1"]}

    policy, history = pretrain(policy, ctx.data.paths["train"], ctx.data.paths["val"],
                               PretrainConfig(seed=0, **c.pretrain), validate, mesh=ctx.mesh)
    ckpt.save(1, jax.device_get(nnx.state(policy, nnx.Param)), meta={"history": history})
    ckpt.close()
    return policy


def test_metrics(ctx: Context, policy: PathPolicy, seed: int, per_prompt_file: Path | None = None
                 ) -> dict:
    """Test-split metrics (mined targets and random unseen targets), both simulators, on
    every test prompt (or ``eval.max_prompts`` spread over users); the per-prompt values and
    users go to ``per_prompt_file`` (``.npz``) for user-clustered intervals."""
    c = ctx.cfg
    mask = c.rl.get("mask_target", True)
    th, tt, tu = prompts_of(ctx.data.paths["test"], c.eval.max_prompts)
    out, per = evaluate.evaluate_policy(policy, ctx.sims, th, tt, ctx.genres, k=c.eval.k,
                                        seed=seed, mask_target=mask, per_prompt=True,
                                        mesh=ctx.mesh)
    unseen = random_unseen_targets(ctx.data, "test", seed=seed)
    uh, ut, _ = prompts_of(unseen, c.eval.max_prompts)
    out.update({f"unseen/{k}": v for k, v in
                evaluate.evaluate_policy(policy, ctx.sims, uh, ut, ctx.genres,
                                         mask_target=mask, mesh=ctx.mesh).items()})
    if per_prompt_file is not None:
        save_per_prompt(per_prompt_file, tu, per)
    return out


def save_per_prompt(path: Path, users: np.ndarray, values: dict[str, np.ndarray]) -> None:
    """Per-prompt metrics and the prompts' users (``user`` key) as one ``.npz``, written by
    process 0 only, through a temporary file (never a half-written file)."""
    if not parallel.is_writer():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, user=users, **{k.replace("/", "|"): v for k, v in values.items()})
    tmp.replace(path)


def load_per_prompt(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(users, {metric: [N]})`` written by :func:`save_per_prompt`."""
    with np.load(path) as z:
        return z["user"], {k.replace("|", "/"): z[k] for k in z.files if k != "user"}


def _baseline(ctx: Context, policy0: PathPolicy, name: str) -> dict:
    """Test metrics of one baseline (per-prompt values in ``baselines/<name>.npz``)."""
    c = ctx.cfg
    th, tt, tu = prompts_of(ctx.data.paths["test"], c.eval.max_prompts)
    per_file = ctx.out / "baselines" / f"{name}.npz"
    if name == "pretrained":
        return test_metrics(ctx, policy0, 0, per_file)
    if name == "mined":  # the demonstrations themselves (intermediates, no target)
        tp = ctx.data.paths["test"]
        idx = evaluate.stratified_prompts(np.asarray(tp.user), c.eval.max_prompts)
        p, lengths = np.where(tp.path[idx] < 0, 0, tp.path[idx]), tp.lengths[idx]
    else:
        gen = evaluate.ipg_paths if name == "ipg" else evaluate.greedy_sequential_paths
        p, lengths = gen(ctx.sims["sasrec"], th, tt, c.data.max_len, mesh=ctx.mesh)
    res, per = evaluate.evaluate_paths(ctx.sims, th, tt, p, lengths, ctx.genres,
                                       ctx.data.sequences.num_items, per_prompt=True,
                                       mesh=ctx.mesh)
    save_per_prompt(per_file, tu, per)
    return res


def baselines(ctx: Context, policy0: PathPolicy) -> dict:
    """Test metrics of the pretrained policy, of the mined test paths themselves
    (``mined``) and of the heuristic baselines (per-prompt values in
    ``baselines/<name>.npz``); cached in ``baselines.json``."""
    path = ctx.out / "baselines.json"
    if path.exists():
        return json.loads(path.read_text())
    res = {}
    for name in ctx.cfg.baselines:
        t0 = time.perf_counter()
        res[name] = _baseline(ctx, policy0, name)
        logging.info("baseline %s in %.1fs: %s", name, time.perf_counter() - t0, res[name])
    if parallel.is_writer():
        path.with_suffix(".tmp").write_text(json.dumps(res, indent=1))
        path.with_suffix(".tmp").replace(path)  # atomic: a kill leaves no half-written file
    return res


def _per_prompt_values(out: Path, runs: list[dict], base: dict
                       ) -> dict[str, tuple[np.ndarray, dict]]:
    """Per-prompt test values of every baseline and method (a method's seeds averaged)."""
    per: dict[str, tuple[np.ndarray, dict]] = {}
    for name in base:
        f = out / "baselines" / f"{name}.npz"
        if f.exists():
            per[name] = load_per_prompt(f)
    by_method: dict[str, list] = {}
    for r in runs:
        f = out / "rl" / f"{r['method']}_s{r['seed']}" / "test_prompts.npz"
        if f.exists():
            by_method.setdefault(r["method"], []).append(load_per_prompt(f))
    for m, parts in by_method.items():
        users = parts[0][0]
        keys = set.intersection(*(set(v) for _, v in parts))
        per[m] = (users, {k: np.mean([v[k] for _, v in parts], 0) for k in keys})
    return per


def user_intervals(out: Path, runs: list[dict], base: dict, cfg: Any) -> dict:
    """User-clustered bootstrap intervals of the test metrics (per-prompt values averaged
    over a method's seeds first) and of the paired differences ProRL − each other system."""
    per = _per_prompt_values(out, runs, base)
    keys = [k for k in cfg.eval.get("interval_metrics", INTERVAL_METRICS)]
    boot = dict(n_boot=cfg.eval.get("n_boot", 2000), seed=0)
    res: dict[str, dict] = {"systems": {}, "vs_prorl": {}}
    for name, (users, vals) in per.items():
        res["systems"][name] = {k: evaluate.cluster_bootstrap(vals[k], users, **boot)
                                for k in keys if k in vals}
    if "prorl" in per:
        users, ref = per["prorl"]
        for name, (u, vals) in per.items():
            if name == "prorl" or not np.array_equal(u, users):
                continue
            res["vs_prorl"][name] = {k: evaluate.cluster_bootstrap(ref[k] - vals[k], users,
                                                                   **boot)
                                     for k in keys if k in vals and k in ref}
    return res
