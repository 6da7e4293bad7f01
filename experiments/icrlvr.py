r"""In-Context RLVR experiments on the built-in checkable arithmetic.

(a) ``quality``: Evidence Gain as a reasoning-quality signal. Traces are sampled few-shot
    (SmolLM2-135M real weights, or the SFT-warmed policy) and scored; among traces with a
    correct final answer, Spearman ρ of step correctness with EG (summed, per token, exact
    log-weight), trace length and mean token log-prob. Also the measured EG cost per trace
    per probe.
(b) ``training``: ``<preset>`` vs ``ic_<preset>`` (``num_demo`` of ``group_size`` rollouts on
    one demonstration each, demonstrations drawn per generation batch and shared as KV-cache
    prefixes) vs ``eg_<preset>`` (explicit EG reweighting), e.g. ``dapo`` / ``ic_dapo`` /
    ``eg_dapo`` (the methods table ``configs/icrlvr.py:METHODS``), from one SFT-warmed policy,
    over seeds; held-out zero-shot accuracy (greedy, avg@k) and step
    correctness over training; (c) seconds per step of each.

Launch::

    python -m experiments.icrlvr --config=icrlvr.py:tiny_cpu \
        --out_dir=runs/icrlvr_cpu
    python -m experiments.icrlvr --config=icrlvr.py:smollm2  # GPU
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from experiments import icrlvr_report
from experiments.configs import validate as config_check
from experiments.configs.icrlvr import METHODS
from recrl import models, parallel, rundir
from recrl.models.char_tokenizer import CharTokenizer
from recrl.models.finetune import sft_loop
from recrl.rlvr import config as learner_config
from recrl.rlvr import quality, tasks, training

FLAGS = flags.FLAGS


def load_smollm2():
    """SmolLM2-135M-Instruct (fp32) and its tokenizer, ``<|endoftext|>`` as document start."""
    path = models.smollm2_path()
    tok = models.Tokenizer.from_gguf(path)
    tok.bos_id = tok.token_id("<|endoftext|>")  # plain-text few-shot, not a chat turn
    graphdef, params = nnx.split(models.load_gguf(path))
    return tok, graphdef, params


def tiny_policy(model_cfg, seed: int):
    """A random char-level Llama of the configured size (config ``model``)."""
    tok = CharTokenizer()
    cfg = models.tiny_config(vocab_size=tok.vocab_size, dim=model_cfg.dim,
                             n_layers=model_cfg.n_layers, n_heads=model_cfg.n_heads,
                             n_kv_heads=model_cfg.n_kv_heads, ffn_dim=model_cfg.ffn_dim,
                             max_seq_len=512)
    graphdef, params = nnx.split(models.create_model(cfg, seed=seed))
    return tok, graphdef, params


def sft(graphdef, params, tok, problems, sft_cfg, seed: int, mesh=None):
    """Supervised warm-up: mean NLL of ``solution + eos`` given the bare prompt (data-parallel
    over ``mesh`` when given: each process builds its rows of the seeded minibatch; the
    loop is :func:`recrl.models.finetune.sft_loop`)."""
    seqs, starts = [], []
    for p in problems:
        prompt = tasks.encode_prompt(tok, p.question)
        seqs.append(prompt + tasks.encode_solution(tok, p.solution))
        starts.append(len(prompt))
    toks, mask = models.pad_batch(seqs, pad_id=tok.pad_id, side="right")
    loss_mask = mask & (np.arange(toks.shape[1])[None] >= np.array(starts)[:, None])

    def loss_fn(p, frozen, t, m, lm):
        del frozen
        return jnp.mean(models.sequence_nll(graphdef, p, t, m, lm))

    return sft_loop(loss_fn, params, None, (toks, mask, loss_mask), steps=sft_cfg.steps,
                    batch_size=sft_cfg.batch_size, lr=sft_cfg.lr, seed=seed, mesh=mesh,
                    donate_params=True, batch_name="sft.batch_size")


def train_method(method: str, seed: int, rl_cfg, eval_cfg, splits: tasks.Splits, tok,
                 graphdef, params, run_dir: str | None = None, mesh=None) -> dict:
    """Part (b)/(c): one RL run of the named ``method`` (a key of ``METHODS``) with the ``rl``
    and ``eval`` sub-configs; resumable with ``run_dir`` (``recrl.rlvr.training``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    cfg = learner_config.method_config(
        METHODS[method], num_demo=rl_cfg.num_demo, group_size=rl_cfg.group_size,
        prompts_per_step=rl_cfg.prompts_per_step, max_new_tokens=rl_cfg.max_new_tokens,
        max_prompt_len=training.prompt_budget(tok, splits.train + splits.eval),
        lr=rl_cfg.lr, warmup_steps=rl_cfg.warmup_steps, temperature=rl_cfg.temperature,
        eg_temperature=rl_cfg.eg_temperature, eg_mode=rl_cfg.eg_mode,
        eg_signal=rl_cfg.eg_signal, dynamic_sampling=rl_cfg.dynamic_sampling,
        max_sampling_rounds=rl_cfg.max_sampling_rounds)
    schedule = training.Schedule(steps=rl_cfg.steps, eval_every=rl_cfg.eval_every,
                                 checkpoint_every=rl_cfg.get("checkpoint_every", 0),
                                 eval_k=eval_cfg.k, eval_problems=eval_cfg.max_problems)
    probes = splits.probe[:rl_cfg.eg_probes] if cfg.eg_reweight else None
    return training.train_run(method, cfg, schedule, seed, splits, tok, graphdef, params,
                              probes=probes, run_dir=run_dir, mesh=mesh)


def _policy(cfg, seed: int, splits: tasks.Splits, mesh=None):
    if cfg.model.kind == "smollm2":
        tok, graphdef, params = load_smollm2()
        return tok, graphdef, params, []
    tok, graphdef, params = tiny_policy(cfg.model, seed)
    params, losses = sft(graphdef, params, tok, splits.demo, cfg.sft, seed, mesh)
    return tok, graphdef, params, losses


def _start(cfg, out_dir: str):
    """Distributed start-up, config and output checks, cached-stage guard; the mesh."""
    mesh = parallel.startup(cfg)  # jax.distributed first, then the global mesh
    config_check.preflight(cfg, out_dir, config_check.validate_icrlvr)
    parallel.writer_checks("cached-stage guard", lambda: rundir.guard_stages(
        out_dir, cfg, config_check.ICRLVR_STAGES, config_check.ICRLVR_FREE,
        retrain=cfg.get("retrain_changed", False)))
    if "training" in cfg.parts:
        parallel.check_divisible({"rl.prompts_per_step": cfg.rl.prompts_per_step}, mesh)
        parallel.log_batch("RL update (groups)", (cfg.rl.prompts_per_step, cfg.rl.group_size),
                           mesh)
    os.makedirs(out_dir, exist_ok=True)
    return mesh


def _write_results(res: dict, out_dir: str) -> None:
    if parallel.is_writer():
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(res, f, indent=1, default=float)


def run(cfg, out_dir: str) -> dict:
    """Runs the configured parts; writes ``results.json``, ``report.md`` and ``curves.png``.

    Training runs are resumable (``out_dir/runs/<method>_s<seed>``, see :func:`train_method`);
    a rerun with a config that changes what they depend on stops (``recrl.rundir``)."""
    mesh = _start(cfg, out_dir)
    data_cfg = cfg.data
    splits = tasks.make_splits(data_cfg.n_train, data_cfg.n_demo, data_cfg.n_probe,
                               data_cfg.n_eval, seed=data_cfg.seed,
                               num_ops=tuple(data_cfg.num_ops),
                               max_operand=data_cfg.max_operand)
    res: dict[str, Any] = dict(variant=cfg.variant, methods=list(cfg.methods),
                               eval_k=cfg.eval.k, runs=[])
    policy = None
    if "training" in cfg.parts or cfg.quality.model == "policy":
        t0 = time.perf_counter()
        policy = _policy(cfg, cfg.seeds[0], splits, mesh)
        res["sft"] = dict(seconds=time.perf_counter() - t0, loss_first=policy[3][:1],
                          loss_last=policy[3][-1:])
    if "quality" in cfg.parts:
        tok, graphdef, params = (load_smollm2() if cfg.quality.model == "smollm2"
                                 else policy[:3])
        res["quality"] = dict(model=cfg.quality.model, **quality.quality_experiment(
            cfg.quality, splits, tok, graphdef, params, mesh=mesh))
        logging.info("quality: %s", res["quality"])
    if "training" in cfg.parts:
        for seed in cfg.seeds:
            for m in cfg.methods:
                res["runs"].append(train_method(
                    m, seed, cfg.rl, cfg.eval, splits, *policy[:3],
                    run_dir=os.path.join(out_dir, "runs", f"{m}_s{seed}"), mesh=mesh))
                _write_results(res, out_dir)
    _write_results(res, out_dir)
    if parallel.is_writer():
        icrlvr_report.report(res, out_dir)
    return res


def main(argv: list[str]) -> None:
    del argv
    run(FLAGS.config, FLAGS.out_dir)  # start-up (distributed, mesh) happens in run()
    if parallel.is_writer():
        print(open(os.path.join(FLAGS.out_dir, "report.md")).read())


if __name__ == "__main__":
    # flags are defined here, not at import: launchers share one flag registry in a process
    config_check.define_config("config", "icrlvr.py:tiny_cpu",
                               "Experiment config (variant after ':').")
    flags.DEFINE_string("out_dir", "runs/icrlvr", "Output directory.")
    app.run(main)
