r"""Evidence Gain study: does EG track step correctness among answer-correct traces?

Protocol (fixed before the run; docs/icrlvr.md states the decision rule):

1. pilot: for each candidate difficulty (built-in arithmetic, ``num_ops >= 2`` so a trace has
   several checkable steps) sample ``pilot_questions`` few-shot and measure answer accuracy; use
   the hardest difficulty with accuracy >= ``min_accuracy`` (else the most accurate one, flagged
   ``underpowered``).
2. traces: few-shot prompts (``shots`` demonstrations from the demo split, one prefix shared by
   every row through the KV cache), ``samples`` per question, until ``target_correct``
   answer-correct traces (or ``max_questions``). Each trace: reward, step correctness (tolerant
   parser; the strict parser's score is kept too), scored length, mean token log-prob.
3. EG over ``n_probes`` probes for every correct trace: summed EG, per-token EG, exact
   ``log w = log mean_e exp Δ_e``.
4. analysis on correct traces: Spearman ρ of EG, EG_tok, log w, mean log-prob, length with step
   correctness; 95 % bootstrap intervals (over traces) on each ρ and on the differences
   ρ(EG) − ρ(mean log-prob), ρ(log w) − ρ(mean log-prob), ρ(EG) − ρ(length),
   ρ(log w) − ρ(EG).
5. labels: ``label_sample.csv`` (``n_label`` random correct traces with the reference steps, the
   parsed steps and the parser's score; fill ``hand_sc``); when ``hand_labels.csv`` (the same
   file, filled) exists, the parser's agreement with the hand labels is reported.

Resumable: traces and EG values are appended to ``traces.jsonl`` / ``eg.jsonl`` chunk by chunk;
a rerun with the same config skips what is there.

Launch::

    python -m experiments.eg_study --config=experiments/configs/icrlvr.py:eg_study \
        --out_dir=runs/eg_study          # SmolLM2-135M real weights, ~2-3 h on 2 CPU cores
"""

from __future__ import annotations

import csv
import json
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm.auto import tqdm

from experiments.icrlvr import load_smollm2, spearman, tiny_policy
from recrl import models
from recrl.rlvr import evidence, tasks

FLAGS = flags.FLAGS
SIGNALS = ("eg", "eg_per_token", "log_weight", "mean_logprob", "length")
DIFFERENCES = (("eg", "mean_logprob"), ("log_weight", "mean_logprob"), ("eg", "length"),
               ("log_weight", "eg"))

# sampler(problems, key) -> list of (text, scored length, mean log-prob), one per problem
Sampler = Callable[[Sequence[tasks.Problem], jax.Array], list[tuple[str, int, float]]]


def make_sampler(graphdef, params, tok, shots: Sequence[tasks.Problem], sc) -> Sampler:
    """Few-shot sampler: the ``shots`` blocks are one prefix shared by every row (KV cache)."""
    bos = [tok.bos_id] if tok.bos_id is not None else []
    prefix = bos + tok.encode("".join(tasks.format_example(d.question, d.solution)
                                      for d in shots))
    pre, pre_m = models.pad_batch([prefix], pad_id=tok.pad_id, side="left")
    scfg = models.SamplingConfig(max_new_tokens=sc.max_new_tokens, temperature=sc.temperature,
                                 stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)

    def sample(problems, key):
        n = len(problems)
        rows = list(problems) + [problems[-1]] * (sc.chunk - n)  # one compiled shape
        ids = [tok.encode(tasks.format_prompt(p.question)) for p in rows]
        pt, pm = models.pad_batch(ids, pad_id=tok.pad_id, side="left", length=sc.prompt_len)
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


def _append_jsonl(path: str, rows: Sequence[dict]) -> None:
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def pilot(sampler_for: Callable[[Any], Sampler], difficulties: Sequence[dict], sc,
          seed: int) -> dict:
    """Accuracy per difficulty on ``pilot_questions`` questions; the chosen difficulty."""
    rows = []
    for i, d in enumerate(difficulties):
        sp = tasks.make_splits(sc.pilot_questions, sc.shots, 0, 0, seed=seed + 100 + i,
                               num_ops=tuple(d["num_ops"]), max_operand=d["max_operand"])
        sample = sampler_for(sp.demo)
        got = []
        for s in range(0, len(sp.train), sc.chunk):
            part = sp.train[s:s + sc.chunk]
            got += [tasks.answer_reward(t, p) for (t, _, _), p in
                    zip(sample(part, jax.random.key(seed + 7 * i + s)), part, strict=True)]
        rows.append(dict(difficulty=d, accuracy=float(np.mean(got))))
    ok = [r for r in rows if r["accuracy"] >= sc.min_accuracy]
    pick = (max(ok, key=lambda r: (sum(r["difficulty"]["num_ops"]), r["difficulty"]["max_operand"]))
            if ok else max(rows, key=lambda r: r["accuracy"]))
    return dict(rows=rows, chosen=pick["difficulty"], chosen_accuracy=pick["accuracy"],
                underpowered=not ok)


def collect_traces(sample: Sampler, problems: Sequence[tasks.Problem], sc, path: str,
                   seed: int) -> list[dict]:
    """Appends sampled traces chunk by chunk until ``target_correct`` correct ones (resumable)."""
    rows = _read_jsonl(path)
    order = [(q, s) for q in range(len(problems)) for s in range(sc.samples)]
    pos = len(rows)
    bar = tqdm(total=sc.target_correct, initial=min(_n_correct(rows), sc.target_correct),
               desc="answer-correct traces")
    while pos < len(order) and _n_correct(rows) < sc.target_correct:
        part = order[pos:pos + sc.chunk]
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
        bar.update(min(_n_correct(rows), sc.target_correct) - bar.n)
        bar.set_postfix(traces=len(rows))
    bar.close()
    return rows


def _n_correct(rows: Sequence[dict]) -> int:
    return sum(r["reward"] > 0 for r in rows)


def compute_eg(graphdef, params, tok, problems, traces: Sequence[dict], probes, sc,
               path: str) -> dict[int, dict]:
    """EG / EG_tok / log w of each correct trace, appended chunk by chunk (resumable)."""
    done = {r["id"]: r for r in _read_jsonl(path)}
    todo = [t for t in traces if t["reward"] > 0 and t["id"] not in done]
    if not todo:
        return done
    pj = evidence.ProbeSet(*(jnp.asarray(x) for x in evidence.encode_probes(tok, probes)))
    without = evidence.probe_logp_without(graphdef, params, pj)
    for c in tqdm(range(0, len(todo), sc.eg_chunk), desc=f"EG over {len(probes)} probes",
                  unit="chunk"):
        part = todo[c:c + sc.eg_chunk]
        pad = part + [part[-1]] * (sc.eg_chunk - len(part))  # one compiled shape
        r = evidence.evidence_gain_batch(
            graphdef, params, tok, [problems[t["question"]].question for t in pad],
            [t["text"] for t in pad], pj, logp_without=without, demo_length=sc.demo_len)
        new = [dict(id=t["id"], eg=float(r.eg[i]), eg_per_token=float(r.eg_per_token[i]),
                    log_weight=float(r.log_weight[i])) for i, t in enumerate(part)]
        _append_jsonl(path, new)
        done.update({x["id"]: x for x in new})
    return done


def analyse(rows: Sequence[dict], n_boot: int, seed: int) -> dict:
    """Spearman ρ of each signal with step correctness, bootstrap intervals, differences."""
    sc = np.array([r["sc"] for r in rows])
    sig = {k: np.array([r[k] for r in rows], np.float64) for k in SIGNALS}
    n = len(rows)
    out: dict[str, Any] = dict(n=n, flawed=int(np.sum(sc < 1.0)))
    if n < 3:
        return out
    boot = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    rho_b = {k: np.array([spearman(v[b], sc[b]) for b in boot]) for k, v in sig.items()}
    def ci(x):
        with warnings.catch_warnings():  # a constant resample gives nan ρ (all nan: nan CI)
            warnings.simplefilter("ignore", RuntimeWarning)
            return [float(v) for v in np.nanpercentile(x, [2.5, 97.5])]

    out["rho"] = {k: spearman(v, sc) for k, v in sig.items()}
    out["rho_ci95"] = {k: ci(v) for k, v in rho_b.items()}
    out["diff"] = {f"{a}-{b}": dict(value=out["rho"][a] - out["rho"][b],
                                    ci95=ci(rho_b[a] - rho_b[b])) for a, b in DIFFERENCES}
    out["decision"] = {}
    for k in ("eg", "log_weight"):  # the same rule for the summed EG and for exact log w
        lo, lo_diff = out["rho_ci95"][k][0], out["diff"][f"{k}-mean_logprob"]["ci95"][0]
        out["decision"][f"{k}_tracks_quality"] = bool(lo > 0)
        out["decision"][f"{k}_beats_mean_logprob"] = bool(lo > 0 and lo_diff > 0)
    return out


def decision_lines(decision: dict, agreement: dict | None) -> list[str]:
    """The decision rule's verdicts in words (docs/icrlvr.md, EG study, rule 6)."""
    lines = []
    for k, name in (("eg", "EG"), ("log_weight", "log w")):
        tracks = decision[f"{k}_tracks_quality"]
        lines.append(f"- {name} {'tracks' if tracks else 'does not track'} reasoning quality "
                     f"(lower end of the ρ interval {'>' if tracks else '<='} 0); it "
                     f"{'adds to' if decision[f'{k}_beats_mean_logprob'] else 'does not add to'}"
                     " the mean log-prob baseline.")
    if agreement is None:
        lines.append("- No hand labels yet: the conclusion rests on the parser unchecked.")
    elif agreement["flawed_agreement"] < 0.9:
        lines.append(f"- Parser agreement {agreement['flawed_agreement']:.2f} < 0.9 "
                     "(flawed vs clean): the conclusion is conditional on the parser.")
    else:
        lines.append(f"- Parser agreement {agreement['flawed_agreement']:.2f} >= 0.9 "
                     "(flawed vs clean): the parser's labels stand.")
    return lines


def export_labels(rows: Sequence[dict], problems, path: str, n: int, seed: int) -> None:
    """A random sample of correct traces for hand labelling (``hand_sc`` column blank)."""
    if os.path.exists(path):
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


def run(cfg, out_dir: str, sampler: Sampler | None = None) -> dict:
    """Runs (or resumes) the study; writes ``results.json`` and ``report.md``."""
    sc = cfg.study
    os.makedirs(out_dir, exist_ok=True)
    if cfg.model.kind == "smollm2":
        tok, graphdef, params = load_smollm2()
    else:
        tok, graphdef, params = tiny_policy(cfg.model, cfg.seeds[0])
    sampler_for = (lambda shots: sampler) if sampler else (
        lambda shots: make_sampler(graphdef, params, tok, shots, sc))
    res_path = os.path.join(out_dir, "results.json")
    res = json.load(open(res_path)) if os.path.exists(res_path) else {}
    t0 = time.perf_counter()
    if "pilot" not in res:
        res["pilot"] = pilot(sampler_for, [dict(d) for d in sc.difficulties], sc, cfg.data.seed)
        json.dump(res, open(res_path, "w"), indent=1)
    d = res["pilot"]["chosen"]
    sp = tasks.make_splits(sc.max_questions, sc.shots, sc.n_probes, 0, seed=cfg.data.seed,
                           num_ops=tuple(d["num_ops"]), max_operand=d["max_operand"],
                           train_at_most=True)
    sample = sampler_for(sp.demo)
    t1 = time.perf_counter()
    traces = collect_traces(sample, sp.train, sc, os.path.join(out_dir, "traces.jsonl"),
                            cfg.data.seed)
    t2 = time.perf_counter()
    egs = compute_eg(graphdef, params, tok, sp.train, traces, sp.probe, sc,
                     os.path.join(out_dir, "eg.jsonl"))
    t3 = time.perf_counter()
    correct = [{**t, **egs[t["id"]]} for t in traces if t["reward"] > 0 and t["id"] in egs]
    export_labels(correct, sp.train, os.path.join(out_dir, "label_sample.csv"), sc.n_label,
                  cfg.data.seed)
    res.update(
        difficulty=d, n_traces=len(traces), n_correct=len(correct), n_probes=len(sp.probe),
        accuracy=float(np.mean([t["reward"] for t in traces])) if traces else 0.0,
        strict_parser_flawed=int(sum(t["sc_strict"] < 1 for t in correct)),
        seconds=dict(pilot_and_setup=t1 - t0, sampling_this_run=t2 - t1, eg_this_run=t3 - t2),
        analysis=analyse(correct, sc.n_boot, cfg.data.seed),
        hand_agreement=label_agreement(os.path.join(out_dir, "hand_labels.csv"),
                                       {t["id"]: t for t in traces}))
    json.dump(res, open(res_path, "w"), indent=1)
    report(res, out_dir)
    return res


def report(res: dict, out_dir: str) -> str:
    """``report.md``: the pilot, counts, the ρ table with intervals, differences, decision."""
    a = res["analysis"]
    lines = ["# Evidence Gain study", "",
             "| difficulty | pilot accuracy |", "|---|---|"]
    lines += [f"| {r['difficulty']} | {r['accuracy']:.3f} |" for r in res["pilot"]["rows"]]
    lines += ["", f"chosen: {res['difficulty']} (underpowered: {res['pilot']['underpowered']}); "
              f"{res['n_traces']} traces, {res['n_correct']} answer-correct "
              f"({a.get('flawed', 0)} with a wrong or missing step; the strict parser would say "
              f"{res['strict_parser_flawed']}), {res['n_probes']} probes.", ""]
    if "rho" in a:
        lines += ["| signal | ρ with step correctness | 95 % bootstrap |", "|---|---|---|"]
        lines += [f"| {k} | {a['rho'][k]:.3f} | {a['rho_ci95'][k][0]:.3f} to "
                  f"{a['rho_ci95'][k][1]:.3f} |" for k in SIGNALS]
        lines += ["", "| difference | value | 95 % bootstrap |", "|---|---|---|"]
        lines += [f"| ρ({k.replace('-', ') − ρ(')}) | {v['value']:.3f} | {v['ci95'][0]:.3f} to "
                  f"{v['ci95'][1]:.3f} |" for k, v in a["diff"].items()]
    if res.get("hand_agreement"):
        h = res["hand_agreement"]
        lines += ["", f"parser vs hand labels on {h['n']} traces: exact {h['exact']:.2f}, "
                  f"flawed/clean agreement {h['flawed_agreement']:.2f}, ρ {h['spearman']:.2f}"]
    if "decision" in a:
        lines += ["", "Decision:", ""] + decision_lines(a["decision"], res.get("hand_agreement"))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text)
    return text


def main(argv: list[str]) -> None:
    del argv
    run(FLAGS.config, FLAGS.out_dir)
    print(open(os.path.join(FLAGS.out_dir, "report.md")).read())


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", "experiments/configs/icrlvr.py:eg_study",
                                    "Experiment config (variant after ':').")
    flags.DEFINE_string("out_dir", "runs/eg_study", "Output directory.")
    app.run(main)
