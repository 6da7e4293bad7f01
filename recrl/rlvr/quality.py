r"""Evidence Gain as a reasoning-quality signal (part (a) of ``experiments/icrlvr.py``).

Traces are sampled few-shot, scored, and among the traces with a correct final answer the
Spearman ρ of step correctness is measured against EG (summed, per token, exact log-weight,
:mod:`recrl.rlvr.evidence`), trace length and mean token log-prob, with 95 % bootstrap
intervals over traces; the EG cost per trace per probe is measured on the way. With
``mesh=`` the EG scoring is split over the mesh's devices (:mod:`recrl.rlvr.evidence`, every
process gets every value); the sampling runs on each process's default device.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recrl import models
from recrl.rlvr import evidence, tasks

EG_CHUNK = 8  # traces per EG call (one compiled shape)


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


def sample_texts(graphdef: nnx.GraphDef, params, tok, prompts: Sequence[Sequence[int]],
                 key: jax.Array, max_prompt_len: int, sampling: models.SamplingConfig,
                 chunk: int = 32) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Samples one completion per prompt (id lists), ``chunk`` rows a call (one compiled
    shape); returns the scored texts, their scored lengths (>= 1) and mean token log-probs."""
    texts, lengths, mean_lp = [], [], []
    for s in range(0, len(prompts), chunk):
        part = prompts[s:s + chunk]
        part = part + [part[-1]] * (chunk - len(part))  # one compiled shape
        pt, pm = models.pad_batch(part, pad_id=tok.pad_id, side="left", length=max_prompt_len)
        o = models.sample(graphdef, params, jnp.asarray(pt), jnp.asarray(pm),
                          jax.random.fold_in(key, s), config=sampling)
        toks, lens, lp = np.asarray(o.tokens), np.asarray(o.lengths), np.asarray(o.logprobs)
        for i in range(min(chunk, len(prompts) - s)):
            text = tasks.decode_completion(tok, toks[i], int(lens[i]))
            n = max(tasks.scored_length(tok, toks[i], int(lens[i])), 1)  # the kept trace
            texts.append(text)
            lengths.append(n)
            mean_lp.append(float(lp[i, :n].mean()))
    return texts, np.array(lengths), np.array(mean_lp)


def _eg_in_chunks(graphdef: nnx.GraphDef, params, tok, questions: Sequence[str],
                  texts: Sequence[str], probes: Sequence[tasks.Problem],
                  chunk: int = EG_CHUNK, mesh=None
                  ) -> tuple[dict[str, np.ndarray], list[float], int]:
    """EG, EG per token and log-weight of each trace (``chunk`` traces a call, one compiled
    shape; split over ``mesh``'s devices when given), the seconds of each call (the first
    includes compilation) and the probe count."""
    pj = evidence.encode_probes(tok, probes)
    without = evidence.bare_logp(graphdef, params, pj, mesh)
    demo_len = max(len(evidence.encode_demos(tok, [q], [t])[0][0])
                   for q, t in zip(questions, texts, strict=True))

    def one(c):
        idx = list(range(c, min(c + chunk, len(texts))))
        idx += [idx[-1]] * (chunk - len(idx))  # one compiled shape
        t0 = time.perf_counter()
        r = evidence.evidence_gain_batch(graphdef, params, tok, [questions[i] for i in idx],
                                         [texts[i] for i in idx], pj, logp_without=without,
                                         demo_length=demo_len, mesh=mesh)
        jax.block_until_ready(r.eg)
        return r, time.perf_counter() - t0

    res, times = [], []
    for c in range(0, len(texts), chunk):
        r, t = one(c)
        res.append(r)
        times.append(t)
    times += [] if len(times) > 1 else [one(0)[1]]  # a steady-state timing after the compile
    cat = lambda f: np.concatenate([np.asarray(getattr(r, f)) for r in res])[:len(texts)]
    return {f: cat(f) for f in ("eg", "eg_per_token", "log_weight")}, times, len(without)


def rank_correlations(signals: dict[str, np.ndarray], step_correct: np.ndarray,
                      seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Spearman ρ of each signal with ``step_correct`` and 95 % bootstrap intervals over
    traces (``rho``, ``rho_ci95``) and the per-trace values (``per_trace``)."""
    n = len(step_correct)
    boot = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    return dict(
        rho={k: spearman(v, step_correct) for k, v in signals.items()},
        rho_ci95={k: [float(x) for x in np.nanpercentile(
            [spearman(v[b], step_correct[b]) for b in boot], [2.5, 97.5])]
            for k, v in signals.items()},
        per_trace={"step_correct": step_correct.tolist(),
                   **{k: np.asarray(v, float).tolist() for k, v in signals.items()}})


def quality_experiment(quality_cfg, splits: tasks.Splits, tok, graphdef: nnx.GraphDef, params,
                       seed: int = 0, mesh=None) -> dict[str, Any]:
    """Spearman ρ of EG (and baselines) with step correctness on answer-correct traces.

    ``quality_cfg`` (config ``quality``): ``shots`` demonstrations from ``splits.demo`` in
    each prompt, ``samples`` traces for each of the first ``n_questions`` training
    questions at ``temperature`` with ``max_new_tokens``, EG over ``n_probes`` probes (split
    over ``mesh``'s devices when given: every process must call this with the same inputs).
    """
    shots = splits.demo[:quality_cfg.shots]
    probs = [p for p in splits.train[:quality_cfg.n_questions] for _ in range(quality_cfg.samples)]
    prompts = [tasks.encode_prompt(tok, p.question, shots) for p in probs]
    sampling = models.SamplingConfig(max_new_tokens=quality_cfg.max_new_tokens,
                                     temperature=quality_cfg.temperature,
                                     stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
    t0 = time.perf_counter()
    plen = -(-max(map(len, prompts)) // 16) * 16
    texts, length, mean_lp = sample_texts(graphdef, params, tok, prompts,
                                          jax.random.key(seed), plen, sampling)
    sample_s = time.perf_counter() - t0
    s = tasks.score_traces(texts, probs)
    ok = np.flatnonzero(s.reward > 0)
    out: dict[str, Any] = dict(n_traces=len(texts), n_correct=len(ok),
                               n_flawed=int(np.sum(s.step_correctness[ok] < 1.0)),
                               malformed=float(s.malformed.mean()), sample_seconds=sample_s,
                               examples=texts[:3])
    if len(ok) == 0:
        return out
    eg, times, n_probes = _eg_in_chunks(graphdef, params, tok, [probs[i].question for i in ok],
                                        [texts[i] for i in ok],
                                        splits.probe[:quality_cfg.n_probes], mesh=mesh)
    step_correct = s.step_correctness[ok]
    signals = {**eg, "length": length[ok], "mean_logprob": mean_lp[ok]}
    out.update(**rank_correlations(signals, step_correct, seed),
               step_correct_mean=float(step_correct.mean()),
               eg_mean=float(eg["eg"].mean()), n_probes=n_probes,
               eg_seconds_per_trace_probe=float(np.mean(times[1:]) / (EG_CHUNK * n_probes)),
               eg_compile_seconds=float(times[0]))
    return out
