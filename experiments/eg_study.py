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

Devices: the launchers' start-up (``--config.distributed`` etc., docs/scaling.md) builds the
global mesh; the EG scoring (step 3) is split over its devices. Every process runs the same
stages on the same data (the sampling on its own default device); only process 0 writes
files, so with several processes ``--out_dir`` must be a directory every process reads.

Launch::

    python -m experiments.eg_study --config=experiments/configs/icrlvr.py:eg_study \
        --out_dir=runs/eg_study          # SmolLM2-135M real weights, ~2-3 h on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments.icrlvr import load_smollm2, tiny_policy
from recrl import parallel
from recrl.rlvr import tasks
from recrl.rlvr.study import (
    SIGNALS,
    Sampler,
    analyse,
    collect_traces,
    compute_eg,
    export_labels,
    label_agreement,
    make_sampler,
    pilot,
)

FLAGS = flags.FLAGS


def run(cfg, out_dir: str, sampler: Sampler | None = None) -> dict:
    """Runs (or resumes) the study; writes ``results.json`` and ``report.md`` (process 0)."""
    study_cfg = cfg.study
    mesh = parallel.startup(cfg)  # jax.distributed first, then the global mesh
    if parallel.is_writer():
        os.makedirs(out_dir, exist_ok=True)
    if cfg.model.kind == "smollm2":
        tok, graphdef, params = load_smollm2()
    else:
        tok, graphdef, params = tiny_policy(cfg.model, cfg.seeds[0])
    sampler_for = (lambda shots: sampler) if sampler else (
        lambda shots: make_sampler(graphdef, params, tok, shots, study_cfg))
    res_path = os.path.join(out_dir, "results.json")
    res = json.load(open(res_path)) if os.path.exists(res_path) else {}
    parallel.barrier("eg_study: results read")  # before process 0 rewrites them
    t0 = time.perf_counter()
    if "pilot" not in res:
        res["pilot"] = pilot(sampler_for, [dict(d) for d in study_cfg.difficulties], study_cfg,
                               cfg.data.seed)
        _write_json(res, res_path)
    d = res["pilot"]["chosen"]
    splits = tasks.make_splits(study_cfg.max_questions, study_cfg.shots, study_cfg.n_probes, 0,
                               seed=cfg.data.seed, num_ops=tuple(d["num_ops"]),
                               max_operand=d["max_operand"], train_at_most=True)
    sample = sampler_for(splits.demo)
    t1 = time.perf_counter()
    traces = collect_traces(sample, splits.train, study_cfg, os.path.join(out_dir, "traces.jsonl"),
                            cfg.data.seed)
    t2 = time.perf_counter()
    egs = compute_eg(graphdef, parallel.on_mesh(params, mesh), tok, splits.train, traces,
                     splits.probe, study_cfg, os.path.join(out_dir, "eg.jsonl"), mesh)
    t3 = time.perf_counter()
    correct = [{**t, **egs[t["id"]]} for t in traces if t["reward"] > 0 and t["id"] in egs]
    export_labels(correct, splits.train, os.path.join(out_dir, "label_sample.csv"),
                  study_cfg.n_label, cfg.data.seed)
    res.update(
        difficulty=d, n_traces=len(traces), n_correct=len(correct), n_probes=len(splits.probe),
        accuracy=float(np.mean([t["reward"] for t in traces])) if traces else 0.0,
        strict_parser_flawed=int(sum(t["sc_strict"] < 1 for t in correct)),
        seconds=dict(pilot_and_setup=t1 - t0, sampling_this_run=t2 - t1, eg_this_run=t3 - t2),
        analysis=analyse(correct, study_cfg.n_boot, cfg.data.seed),
        hand_agreement=label_agreement(os.path.join(out_dir, "hand_labels.csv"),
                                       {t["id"]: t for t in traces}))
    _write_json(res, res_path)
    if parallel.is_writer():
        report(res, out_dir)
    return res


def _write_json(res: dict, path: str) -> None:
    if parallel.is_writer():  # only process 0 writes
        with open(path, "w") as f:
            json.dump(res, f, indent=1)


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
    run(FLAGS.config, FLAGS.out_dir)  # start-up (distributed, mesh) happens in run()
    if parallel.is_writer():
        print(open(os.path.join(FLAGS.out_dir, "report.md")).read())


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", "experiments/configs/icrlvr.py:eg_study",
                                    "Experiment config (variant after ':').")
    flags.DEFINE_string("out_dir", "runs/eg_study", "Output directory.")
    app.run(main)
