r"""In-Context RLVR experiments on the built-in checkable arithmetic.

(a) ``quality``: Evidence Gain as a reasoning-quality signal. Traces are sampled few-shot
    (SmolLM2-135M real weights, or the SFT-warmed policy) and scored; among traces with a
    correct final answer, Spearman ρ of step correctness with EG (summed, per token, exact
    log-weight), trace length and mean token log-prob. Also the measured EG cost per trace
    per probe.
(b) ``training``: ``<preset>`` vs ``ic_<preset>`` (K of G rollouts on one demonstration each,
    demonstrations drawn per generation batch and shared as KV-cache prefixes) vs
    ``eg_<preset>`` (explicit EG reweighting), e.g. ``dapo`` / ``ic_dapo`` / ``eg_dapo``, from one
    SFT-warmed policy, over seeds; held-out zero-shot accuracy (greedy, avg@k) and step
    correctness over training; (c) seconds per step of each.

Launch::

    python -m experiments.icrlvr --config=icrlvr.py:tiny_cpu \
        --out_dir=runs/icrlvr_cpu
    python -m experiments.icrlvr --config=icrlvr.py:smollm2  # GPU
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from experiments.configs import validate as config_check
from recrl import models, parallel, rundir
from recrl.checkpoint import Checkpointer
from recrl.models.finetune import sft_loop
from recrl.rlvr import evidence, tasks
from recrl.rlvr import learner as L

FLAGS = flags.FLAGS


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    r"""Spearman ρ: Pearson correlation of average ranks (nan if either side is constant)."""

    def ranks(a):
        a = np.asarray(a, np.float64)
        order = np.argsort(a, kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        _, inv = np.unique(a, return_inverse=True)  # average the ranks of ties
        sums = np.bincount(inv, weights=r)
        return sums[inv] / np.bincount(inv)[inv]

    if len(x) < 3:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def load_smollm2():
    """SmolLM2-135M-Instruct (fp32) and its tokenizer, ``<|endoftext|>`` as document start."""
    path = models.smollm2_path()
    tok = models.Tokenizer.from_gguf(path)
    tok.bos_id = tok.token_id("<|endoftext|>")  # plain-text few-shot, not a chat turn
    graphdef, params = nnx.split(models.load_gguf(path))
    return tok, graphdef, params


def tiny_policy(mc, seed: int):
    """A random char-level Llama of the configured size."""
    tok = tasks.CharTokenizer()
    cfg = models.tiny_config(vocab_size=tok.vocab_size, dim=mc.dim, n_layers=mc.n_layers,
                             n_heads=mc.n_heads, n_kv_heads=mc.n_kv_heads, ffn_dim=mc.ffn_dim,
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


def _sample_texts(graphdef, params, tok, prompts, key, max_prompt_len, scfg, chunk=32):
    texts, lengths, mean_lp = [], [], []
    for s in range(0, len(prompts), chunk):
        part = prompts[s:s + chunk]
        part = part + [part[-1]] * (chunk - len(part))  # one compiled shape
        pt, pm = models.pad_batch(part, pad_id=tok.pad_id, side="left", length=max_prompt_len)
        o = models.sample(graphdef, params, jnp.asarray(pt), jnp.asarray(pm),
                          jax.random.fold_in(key, s), config=scfg)
        toks, lens, lp = np.asarray(o.tokens), np.asarray(o.lengths), np.asarray(o.logprobs)
        for i in range(min(chunk, len(prompts) - s)):
            text = tasks.decode_completion(tok, toks[i], int(lens[i]))
            n = max(tasks.scored_length(tok, toks[i], int(lens[i])), 1)  # the kept trace
            texts.append(text)
            lengths.append(n)
            mean_lp.append(float(lp[i, :n].mean()))
    return texts, np.array(lengths), np.array(mean_lp)


def quality_experiment(qc, sp: tasks.Splits, tok, graphdef, params, seed: int = 0) -> dict:
    """Part (a): Spearman ρ of EG (and baselines) with step correctness on correct traces."""
    shots = sp.demo[:qc.shots]
    qs = sp.train[:qc.n_questions]
    probs = [p for p in qs for _ in range(qc.samples)]
    prompts = [tasks.encode_prompt(tok, p.question, shots) for p in probs]
    scfg = models.SamplingConfig(max_new_tokens=qc.max_new_tokens, temperature=qc.temperature,
                                 stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
    t0 = time.perf_counter()
    plen = -(-max(map(len, prompts)) // 16) * 16
    texts, length, mean_lp = _sample_texts(graphdef, params, tok, prompts,
                                           jax.random.key(seed), plen, scfg)
    sample_s = time.perf_counter() - t0
    s = tasks.score_traces(texts, probs)
    ok = np.flatnonzero(s.reward > 0)
    out: dict[str, Any] = dict(n_traces=len(texts), n_correct=len(ok),
                               n_flawed=int(np.sum(s.step_correctness[ok] < 1.0)),
                               malformed=float(s.malformed.mean()), sample_seconds=sample_s,
                               examples=texts[:3])
    if len(ok) == 0:
        return out
    probes = evidence.encode_probes(tok, sp.probe[:qc.n_probes])
    pj = evidence.ProbeSet(*(jnp.asarray(x) for x in probes))
    without = evidence.probe_logp_without(graphdef, params, pj)
    demo_len = max(len(evidence.encode_demos(tok, [probs[i].question], [texts[i]])[0][0])
                   for i in ok)
    chunk = 8

    def eg_chunk(c):
        idx = list(ok[c:c + chunk])
        idx += [idx[-1]] * (chunk - len(idx))  # one compiled shape
        t0 = time.perf_counter()
        r = evidence.evidence_gain_batch(graphdef, params, tok, [probs[i].question for i in idx],
                                         [texts[i] for i in idx], pj, logp_without=without,
                                         demo_length=demo_len)
        jax.block_until_ready(r.eg)
        return r, time.perf_counter() - t0

    res, times = [], []
    for c in range(0, len(ok), chunk):
        r, t = eg_chunk(c)
        res.append(r)
        times.append(t)
    steady = times[1:] or [eg_chunk(0)[1]]  # the first call includes compilation
    n = len(ok)
    cat = lambda f: np.concatenate([np.asarray(getattr(r, f)) for r in res])[:n]
    eg, eg_tok, lw = cat("eg"), cat("eg_per_token"), cat("log_weight")
    sc = s.step_correctness[ok]
    signals = {"eg": eg, "eg_per_token": eg_tok, "log_weight": lw, "length": length[ok],
               "mean_logprob": mean_lp[ok]}
    boot = np.random.default_rng(seed).integers(0, n, (1000, n))  # bootstrap over traces
    out.update(
        rho={k: spearman(v, sc) for k, v in signals.items()},
        rho_ci95={k: [float(x) for x in np.nanpercentile(
            [spearman(v[b], sc[b]) for b in boot], [2.5, 97.5])] for k, v in signals.items()},
        per_trace={"step_correct": sc.tolist(), **{k: np.asarray(v, float).tolist()
                                                   for k, v in signals.items()}},
        step_correct_mean=float(sc.mean()),
        eg_mean=float(eg.mean()), n_probes=len(without),
        eg_seconds_per_trace_probe=float(np.mean(steady) / (chunk * len(without))),
        eg_compile_seconds=float(times[0]))
    return out


def _prompt_len(tok, problems) -> int:
    """Own-prompt budget: the longest ``bos + "Q: q\nA: "`` over every problem, rounded up to
    16 (demonstrations are separate shared prefixes, sized by ``learner.encode_demo_pool``)."""
    n = max(len(tasks.encode_prompt(tok, p.question)) for p in problems)
    return -(-n // 16) * 16


def parse_method(method: str) -> tuple[str, str]:
    """``"ic_dapo"`` -> ``("ic", "dapo")``; ``"grpo"`` -> ``("", "grpo")``; unknown: error."""
    kind, _, algo = method.rpartition("_") if method[:3] in ("ic_", "eg_") else ("", "", method)
    if algo not in L.PRESETS:
        raise ValueError(f"unknown method {method!r}: use <preset>, ic_<preset> or eg_<preset> "
                         f"with a preset in {sorted(L.PRESETS)}")
    return kind, algo


def train_method(method: str, seed: int, rc, ec, sp: tasks.Splits, tok, graphdef, params,
                 run_dir: str | None = None, mesh=None) -> dict:
    """Part (b)/(c): one RL run; evaluation curve and seconds per step.

    With ``run_dir`` the run is resumable: the learner (parameters, optimiser, RNGs,
    history) and the curve are checkpointed every ``rl.checkpoint_every`` steps (0:
    ``eval_every``) and a rerun continues from the newest readable checkpoint, ending where
    an uninterrupted run ends; a finished run's ``result.json`` is reused."""
    if run_dir is not None and os.path.exists(os.path.join(run_dir, "result.json")):
        with open(os.path.join(run_dir, "result.json")) as f:
            return json.load(f)
    kind, algo = parse_method(method)
    everything = sp.train + sp.eval
    cfg = L.preset(algo, group_size=rc.group_size, num_demo=rc.num_demo if kind == "ic" else 0,
                   prompts_per_step=rc.prompts_per_step, max_new_tokens=rc.max_new_tokens,
                   max_prompt_len=_prompt_len(tok, everything),
                   lr=rc.lr, warmup_steps=rc.warmup_steps, temperature=rc.temperature,
                   eg_reweight=kind == "eg", eg_temperature=rc.eg_temperature,
                   eg_mode=rc.eg_mode, eg_signal=rc.eg_signal,
                   dynamic_sampling=rc.dynamic_sampling,
                   max_sampling_rounds=rc.max_sampling_rounds)
    lrn = L.Learner(graphdef, params, tok, cfg, demo_pool=sp.demo,
                    probes=sp.probe[:rc.eg_probes] if cfg.eg_reweight else None, seed=seed,
                    mesh=mesh)
    rng = random.Random(1000 + seed)
    draw = lambda n: rng.sample(sp.train, n)
    held_out = sp.eval[:ec.max_problems]
    eval_len = _prompt_len(tok, held_out)

    def ev(step):
        m = L.evaluate(graphdef, lrn.params, tok, held_out, jax.random.key(10_000 + step), k=ec.k,
                       max_new_tokens=rc.max_new_tokens, max_prompt_len=eval_len)
        return {"step": step, **m}

    ckpt = None if run_dir is None else Checkpointer(os.path.join(run_dir, "ckpt"),
                                                      max_to_keep=2)
    every = rc.get("checkpoint_every", 0) or rc.eval_every
    start, curve, times = 1, None, []
    if ckpt is not None and ckpt.latest_step() is not None:
        extra = lrn.restore(ckpt)["extra"]
        version, state, gauss = extra["draw_rng"]
        rng.setstate((version, tuple(state), gauss))
        start, curve, times = ckpt.restored_step + 1, extra["curve"], extra["times"]
        logging.info("%s seed %d: resuming after step %d", method, seed, start - 1)
    if curve is None:
        curve = [ev(0)]
    for step in range(start, rc.steps + 1):
        t0 = time.perf_counter()
        lrn.step(draw, jax.random.fold_in(jax.random.key(seed), step))
        times.append(time.perf_counter() - t0)
        if step % rc.eval_every == 0 or step == rc.steps:
            curve.append(ev(step))
        logging.info("%s seed %d step %d %s", method, seed, step, lrn.history[-1])
        if ckpt is not None and (step % every == 0 or step == rc.steps):
            version, state, gauss = rng.getstate()
            lrn.save(ckpt, step, {"curve": curve, "times": times,
                                  "draw_rng": [version, list(state), gauss]})
    steady = times[1:] or times
    out = dict(method=method, seed=seed, curve=curve, history=lrn.history,
               seconds_per_step=float(np.median(steady)), first_step_seconds=times[0],
               max_prompt_len=cfg.max_prompt_len)
    if run_dir is not None:
        ckpt.close()
    if run_dir is not None and parallel.is_writer():
        tmp = os.path.join(run_dir, "result.json.tmp")
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1, default=float)
        os.replace(tmp, os.path.join(run_dir, "result.json"))
    return out


def _policy(cfg, seed: int, sp: tasks.Splits, mesh=None):
    if cfg.model.kind == "smollm2":
        tok, graphdef, params = load_smollm2()
        return tok, graphdef, params, []
    tok, graphdef, params = tiny_policy(cfg.model, seed)
    params, losses = sft(graphdef, params, tok, sp.demo, cfg.sft, seed, mesh)
    return tok, graphdef, params, losses


def _mean_sd(xs) -> str:
    xs = np.asarray(xs, np.float64)
    return f"{xs.mean():.3f} ± {xs.std():.3f}" if len(xs) > 1 else f"{xs.mean():.3f}"


def report(res: dict, out_dir: str) -> str:
    """Markdown report (and ``curves.png``) from the results dict."""
    lines = [f"# In-Context RLVR: `{res['variant']}`", ""]
    q = res.get("quality")
    if q:
        lines += ["## (a) EG as a quality signal", "",
                  f"model `{q['model']}`: {q['n_traces']} traces, {q['n_correct']} correct "
                  f"({q['n_flawed']} with a wrong step), malformed {q['malformed']:.2f}; "
                  f"sampling {q['sample_seconds']:.1f} s.", ""]
        if "rho" in q:
            lines += ["| signal | Spearman ρ with step correctness (correct traces) |",
                      "|---|---|"]
            lines += [f"| {k} | {v:.3f} (95% bootstrap {q['rho_ci95'][k][0]:.2f} to "
                      f"{q['rho_ci95'][k][1]:.2f}) |" for k, v in q["rho"].items()]
            lines += ["", f"EG over {q['n_probes']} probes: "
                      f"{1e3 * q['eg_seconds_per_trace_probe']:.2f} ms per trace per probe "
                      f"(compile {q['eg_compile_seconds']:.1f} s). Paper: ρ(EG, judge) "
                      "0.405 / 0.444, length −0.15, mean log-prob 0.13–0.18.", ""]
    runs = res.get("runs", [])
    if runs:
        k = res["eval_k"]
        lines += ["## (b) plain vs in-context vs EG-reweighted RL (held-out, zero-shot)", "",
                  f"| method | seeds | greedy acc start → end | avg@{k} end | step-correct end "
                  "| s/step (median) | prompt len |", "|---|---|---|---|---|---|---|"]
        for m in res["methods"]:
            rs = [r for r in runs if r["method"] == m]
            if not rs:
                continue
            g0 = [r["curve"][0]["greedy_acc"] for r in rs]
            g1 = [r["curve"][-1]["greedy_acc"] for r in rs]
            lines.append(f"| {m} | {len(rs)} | {_mean_sd(g0)} → {_mean_sd(g1)} | "
                         f"{_mean_sd([r['curve'][-1][f'avg@{k}'] for r in rs])} | "
                         f"{_mean_sd([r['curve'][-1]['step_correct'] for r in rs])} | "
                         f"{_mean_sd([r['seconds_per_step'] for r in rs])} | "
                         f"{rs[0]['max_prompt_len']} |")
        for m in res["methods"]:
            kind, algo = parse_method(m)
            base = [r["seconds_per_step"] for r in runs if r["method"] == algo]
            icr = [r["seconds_per_step"] for r in runs if r["method"] == m]
            if kind != "ic" or not base or not icr:
                continue
            lines += ["", f"(c) {m} time overhead per step over {algo}: "
                      f"{100 * (np.mean(icr) / np.mean(base) - 1):+.1f}% (paper: +1.0% to +4.1%)."]
        lines += ["", "![curves](curves.png)", ""]
        _plot(res, os.path.join(out_dir, "curves.png"))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text)
    return text


def _plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for m in res["methods"]:
        rs = [r for r in res["runs"] if r["method"] == m]
        if not rs:
            continue
        steps = [c["step"] for c in rs[0]["curve"]]
        for ax, key in zip(axes, ("greedy_acc", "step_correct"), strict=True):
            ys = np.array([[c[key] for c in r["curve"]] for r in rs])
            ax.plot(steps, ys.mean(0), marker="o", label=m)
            if len(rs) > 1:
                ax.fill_between(steps, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), alpha=0.2)
            ax.set_xlabel("RL step")
            ax.set_ylabel(key)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg, out_dir: str) -> dict:
    """Runs the configured parts; writes ``results.json``, ``report.md`` and ``curves.png``.

    Training runs are resumable (``out_dir/runs/<method>_s<seed>``, see :func:`train_method`);
    a rerun with a config that changes what they depend on stops (``recrl.rundir``)."""
    mesh = parallel.startup(cfg)  # jax.distributed first, then the global mesh
    config_check.preflight(cfg, out_dir, config_check.validate_icrlvr)
    if parallel.is_writer():
        rundir.guard_stages(out_dir, cfg, config_check.ICRLVR_STAGES, config_check.ICRLVR_FREE,
                            retrain=cfg.get("retrain_changed", False))
    if "training" in cfg.parts:
        parallel.check_divisible({"rl.prompts_per_step": cfg.rl.prompts_per_step}, mesh)
        parallel.log_batch("RL update (groups)", (cfg.rl.prompts_per_step, cfg.rl.group_size),
                           mesh)
    os.makedirs(out_dir, exist_ok=True)
    d = cfg.data
    sp = tasks.make_splits(d.n_train, d.n_demo, d.n_probe, d.n_eval, seed=d.seed,
                           num_ops=tuple(d.num_ops), max_operand=d.max_operand)
    res: dict[str, Any] = dict(variant=cfg.variant, methods=list(cfg.methods),
                               eval_k=cfg.eval.k, runs=[])
    policy = None
    if "training" in cfg.parts or cfg.quality.model == "policy":
        t0 = time.perf_counter()
        policy = _policy(cfg, cfg.seeds[0], sp, mesh)
        res["sft"] = dict(seconds=time.perf_counter() - t0, loss_first=policy[3][:1],
                          loss_last=policy[3][-1:])
    if "quality" in cfg.parts:
        tok, graphdef, params = (load_smollm2() if cfg.quality.model == "smollm2"
                                 else policy[:3])
        res["quality"] = dict(model=cfg.quality.model,
                              **quality_experiment(cfg.quality, sp, tok, graphdef, params))
        logging.info("quality: %s", res["quality"])
    if "training" in cfg.parts:
        tok, graphdef, params, _ = policy
        for seed in cfg.seeds:
            for m in cfg.methods:
                res["runs"].append(train_method(
                    m, seed, cfg.rl, cfg.eval, sp, tok, graphdef, params,
                    run_dir=os.path.join(out_dir, "runs", f"{m}_s{seed}"), mesh=mesh))
                if parallel.is_writer():
                    with open(os.path.join(out_dir, "results.json"), "w") as f:
                        json.dump(res, f, indent=1, default=float)
    if parallel.is_writer():
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(res, f, indent=1, default=float)
        report(res, out_dir)
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
