r"""The Evidence Gain study's stages (``experiments/eg_study.py``; protocol in
``docs/icrlvr.md``): does EG track step correctness among answer-correct traces?

- :func:`make_sampler`: few-shot sampling with the shots as one shared KV-cache prefix;
- :func:`pilot`: answer accuracy per candidate difficulty, and the one the study uses;
- :func:`collect_traces` / :func:`compute_eg`: traces and their EG, appended chunk by chunk
  to JSONL files (resumable; a partial last line from a killed run is dropped);
  :func:`compute_eg` splits the EG scoring over a mesh's devices (``mesh=``);
- :func:`analyse`: Spearman ρ of each signal with step correctness, bootstrap intervals,
  differences, the decision rule;
- :func:`export_labels` / :func:`label_agreement`: hand-labelling sample and the parser's
  agreement with filled labels.
"""

from __future__ import annotations

import csv
import json
import os
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from recrl import models, parallel
from recrl.rlvr import evidence, tasks
from recrl.rlvr.quality import spearman

SIGNALS = ("eg", "eg_per_token", "log_weight", "mean_logprob", "length")
DIFFERENCES = (("eg", "mean_logprob"), ("log_weight", "mean_logprob"), ("eg", "length"),
               ("log_weight", "eg"))

# sampler(problems, key) -> list of (text, scored length, mean log-prob), one per problem
Sampler = Callable[[Sequence[tasks.Problem], jax.Array], list[tuple[str, int, float]]]


def make_sampler(graphdef, params, tok, shots: Sequence[tasks.Problem],
                 study_cfg) -> Sampler:
    """Few-shot sampler: the ``shots`` blocks are one prefix shared by every row (KV cache)."""
    bos = [tok.bos_id] if tok.bos_id is not None else []
    prefix = bos + tok.encode("".join(tasks.format_example(d.question, d.solution)
                                      for d in shots))
    pre, pre_m = models.pad_batch([prefix], pad_id=tok.pad_id, side="left")
    scfg = models.SamplingConfig(max_new_tokens=study_cfg.max_new_tokens,
                                 temperature=study_cfg.temperature,
                                 stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)

    def sample(problems, key):
        n = len(problems)
        rows = list(problems) + [problems[-1]] * (study_cfg.chunk - n)  # one compiled shape
        ids = [tok.encode(tasks.format_prompt(p.question)) for p in rows]
        pt, pm = models.pad_batch(ids, pad_id=tok.pad_id, side="left", length=study_cfg.prompt_len)
        o = models.sample_with_prefixes(graphdef, params, jnp.asarray(pre), jnp.asarray(pre_m),
                                        jnp.zeros(len(rows), jnp.int32), jnp.asarray(pt),
                                        jnp.asarray(pm), key, config=scfg)
        toks, lens, lp = np.asarray(o.tokens), np.asarray(o.lengths), np.asarray(o.logprobs)
        out = []
        for i in range(n):
            kept = max(tasks.scored_length(tok, toks[i], int(lens[i])), 1)
            out.append((tasks.decode_completion(tok, toks[i], int(lens[i])), kept,
                        float(lp[i, :kept].mean())))
        return out

    return sample


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:  # a run killed mid-write leaves a partial line
                logging.warning("%s:%d: dropping an unreadable line (%s)", path, line_no, e)
    return out


def _read_before_writes(path: str) -> list[dict]:
    """:func:`_read_jsonl` on every process, then a barrier: no process reads ``path`` after
    process 0 has appended to it, so all resume from the same rows."""
    rows = _read_jsonl(path)
    parallel.barrier(f"read {path}")
    return rows


def _append_jsonl(path: str, rows: Sequence[dict]) -> None:
    if not parallel.is_writer():  # only process 0 writes; the others hold the same rows
        return
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def pilot(sampler_for: Callable[[Any], Sampler], difficulties: Sequence[dict], study_cfg,
          seed: int) -> dict:
    """Accuracy per difficulty on ``pilot_questions`` questions; the chosen difficulty."""
    rows = []
    for i, d in enumerate(difficulties):
        splits = tasks.make_splits(study_cfg.pilot_questions, study_cfg.shots, 0, 0,
                                   seed=seed + 100 + i, num_ops=tuple(d["num_ops"]),
                                   max_operand=d["max_operand"])
        sample = sampler_for(splits.demo)
        got = []
        for s in range(0, len(splits.train), study_cfg.chunk):
            part = splits.train[s:s + study_cfg.chunk]
            got += [tasks.answer_reward(t, p) for (t, _, _), p in
                    zip(sample(part, jax.random.key(seed + 7 * i + s)), part, strict=True)]
        rows.append(dict(difficulty=d, accuracy=float(np.mean(got))))
    ok = [r for r in rows if r["accuracy"] >= study_cfg.min_accuracy]
    pick = (max(ok, key=lambda r: (sum(r["difficulty"]["num_ops"]), r["difficulty"]["max_operand"]))
            if ok else max(rows, key=lambda r: r["accuracy"]))
    return dict(rows=rows, chosen=pick["difficulty"], chosen_accuracy=pick["accuracy"],
                underpowered=not ok)


def collect_traces(sample: Sampler, problems: Sequence[tasks.Problem], study_cfg, path: str,
                   seed: int) -> list[dict]:
    """Appends sampled traces chunk by chunk until ``target_correct`` correct ones (resumable;
    every process samples the same traces, process 0 writes them)."""
    rows = _read_before_writes(path)
    order = [(q, s) for q in range(len(problems)) for s in range(study_cfg.samples)]
    pos = len(rows)
    bar = tqdm(total=study_cfg.target_correct,
               initial=min(_n_correct(rows), study_cfg.target_correct),
               desc="answer-correct traces", disable=not parallel.is_writer())
    while pos < len(order) and _n_correct(rows) < study_cfg.target_correct:
        part = order[pos:pos + study_cfg.chunk]
        probs = [problems[q] for q, _ in part]
        outs = sample(probs, jax.random.fold_in(jax.random.key(seed), pos))
        new = []
        for (q, s), p, (text, length, mlp) in zip(part, probs, outs, strict=True):
            new.append(dict(id=len(rows) + len(new), question=q, sample=s, text=text,
                            reward=tasks.answer_reward(text, p),
                            sc=tasks.step_correctness(text, p),
                            sc_strict=tasks.step_correctness(text, p, strict=True),
                            length=int(length), mean_logprob=mlp))
        _append_jsonl(path, new)
        rows += new
        pos += len(part)
        bar.update(min(_n_correct(rows), study_cfg.target_correct) - bar.n)
        bar.set_postfix(traces=len(rows))
    bar.close()
    return rows


def _n_correct(rows: Sequence[dict]) -> int:
    return sum(r["reward"] > 0 for r in rows)


def compute_eg(graphdef, params, tok, problems, traces: Sequence[dict], probes, study_cfg,
               path: str, mesh=None) -> dict[int, dict]:
    """EG / EG_tok / log w of each correct trace, appended chunk by chunk (resumable). With
    ``mesh`` the scoring is split over its devices (every process calls this with the same
    traces and gets every value; process 0 writes)."""
    done = {r["id"]: r for r in _read_before_writes(path)}
    todo = [t for t in traces if t["reward"] > 0 and t["id"] not in done]
    if not todo:
        return done
    pj = evidence.encode_probes(tok, probes)
    without = evidence.bare_logp(graphdef, params, pj, mesh)
    for c in tqdm(range(0, len(todo), study_cfg.eg_chunk), desc=f"EG over {len(probes)} probes",
                  unit="chunk", disable=not parallel.is_writer()):
        part = todo[c:c + study_cfg.eg_chunk]
        pad = part + [part[-1]] * (study_cfg.eg_chunk - len(part))  # one compiled shape
        r = evidence.evidence_gain_batch(
            graphdef, params, tok, [problems[t["question"]].question for t in pad],
            [t["text"] for t in pad], pj, logp_without=without, demo_length=study_cfg.demo_len,
            mesh=mesh)
        new = [dict(id=t["id"], eg=float(r.eg[i]), eg_per_token=float(r.eg_per_token[i]),
                    log_weight=float(r.log_weight[i])) for i, t in enumerate(part)]
        _append_jsonl(path, new)
        done.update({x["id"]: x for x in new})
    return done


def analyse(rows: Sequence[dict], n_boot: int, seed: int) -> dict:
    """Spearman ρ of each signal with step correctness, bootstrap intervals, differences."""
    step_correct = np.array([r["sc"] for r in rows])
    sig = {k: np.array([r[k] for r in rows], np.float64) for k in SIGNALS}
    n = len(rows)
    out: dict[str, Any] = dict(n=n, flawed=int(np.sum(step_correct < 1.0)))
    if n < 3:
        return out
    boot = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    rho_b = {k: np.array([spearman(v[b], step_correct[b]) for b in boot]) for k, v in sig.items()}
    def ci(x):
        with warnings.catch_warnings():  # a constant resample gives nan ρ (all nan: nan CI)
            warnings.simplefilter("ignore", RuntimeWarning)
            return [float(v) for v in np.nanpercentile(x, [2.5, 97.5])]

    out["rho"] = {k: spearman(v, step_correct) for k, v in sig.items()}
    out["rho_ci95"] = {k: ci(v) for k, v in rho_b.items()}
    out["diff"] = {f"{a}-{b}": dict(value=out["rho"][a] - out["rho"][b],
                                    ci95=ci(rho_b[a] - rho_b[b])) for a, b in DIFFERENCES}
    out["decision"] = {}
    for k in ("eg", "log_weight"):  # the same rule for the summed EG and for exact log w
        lo, lo_diff = out["rho_ci95"][k][0], out["diff"][f"{k}-mean_logprob"]["ci95"][0]
        out["decision"][f"{k}_tracks_quality"] = bool(lo > 0)
        out["decision"][f"{k}_beats_mean_logprob"] = bool(lo > 0 and lo_diff > 0)
    return out


def export_labels(rows: Sequence[dict], problems, path: str, n: int, seed: int) -> None:
    """A random sample of correct traces for hand labelling (``hand_sc`` column blank;
    process 0 writes it)."""
    if not parallel.is_writer() or os.path.exists(path):
        return  # never overwrite a file someone may be filling in
    pick = random.Random(seed).sample(list(rows), min(n, len(rows)))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "reference_steps", "trace", "parsed_steps", "parser_sc",
                    "hand_sc"])
        for r in pick:
            p = problems[r["question"]]
            parsed = "; ".join(f"{a}{op}{b}={c}" for a, op, b, c in tasks.parse_steps(r["text"]))
            w.writerow([r["id"], p.question, tasks.format_steps(p.steps, p.answer), r["text"],
                        parsed, f"{r['sc']:.4f}", ""])


def label_agreement(path: str, rows_by_id: dict[int, dict]) -> dict | None:
    """Parser vs hand step correctness on the filled ``hand_labels.csv`` (None if absent)."""
    if not os.path.exists(path):
        return None
    hand, parser = [], []
    with open(path, newline="") as f:
        for line_no, rec in enumerate(csv.DictReader(f), 2):
            if not (rec.get("hand_sc") or "").strip():
                continue
            try:
                hand.append(float(rec["hand_sc"]))
                parser.append(rows_by_id[int(rec["id"])]["sc"])
            except (KeyError, ValueError) as e:
                raise ValueError(f"{path}:{line_no}: bad hand label row ({e!r})") from e
    if not hand:
        return None
    h, p = np.array(hand), np.array(parser)
    return dict(n=len(h), exact=float(np.mean(np.abs(h - p) < 1e-3)),
                flawed_agreement=float(np.mean((h < 1) == (p < 1))),
                spearman=spearman(p, h))
