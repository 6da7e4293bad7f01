"""Where recrl and transformers spend a SmolLM2 decode and a scoring pass (issue 19).

    python -m benchmarks.lm_profile [--batch 8] [--new 32] [--prompt 48] [--completion 256]

On one core (one XLA / torch thread), SmolLM2-135M shapes with random weights (the time does
not depend on the values):

  recrl         per-HLO-op times of ``sample`` (greedy) and ``logprobs`` from a ``jax.profiler``
                trace (XLA flag ``--xla_cpu_enable_xprof_traceme``), grouped into weight
                matmuls, the LM head, attention, and the rest;
  transformers  ``torch.profiler`` self times of ``generate`` and the scoring forward, grouped
                the same way (``aten::mm``/``addmm`` = matmuls; the LM head is one of them);
  gemm          the weight matmuls alone, chained (30 x q k v o gate up down + LM head), in each
                library, separate and with q|k|v and gate|up concatenated (what fusing buys),
                as GFLOP/s; ``--repeats`` alternating runs, best of each.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.lm import pin_threads
from recrl import models


def shapes(cfg, fused: bool) -> list[tuple[int, int]]:
    """``[in, out]`` of every weight matrix of the blocks, in order."""
    d, f, hd = cfg.dim, cfg.ffn_dim, cfg.head_dim
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    block = ([(d, q + 2 * kv), (q, d), (d, 2 * f), (f, d)] if fused else
             [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)])
    return block * cfg.n_layers


def gemm_flops(cfg, rows: int, head_rows: int) -> float:
    return 2.0 * (rows * sum(a * b for a, b in shapes(cfg, False))
                  + head_rows * cfg.dim * cfg.vocab_size)


def jax_gemms(cfg, rows, head_rows, fused):
    """A call running only the matmuls (each output fully reduced, so none is sliced away)."""
    rng = np.random.default_rng(0)
    ws = [jnp.asarray(rng.standard_normal(s, np.float32) * 0.02) for s in shapes(cfg, fused)]
    head = jnp.asarray(rng.standard_normal((cfg.vocab_size, cfg.dim), np.float32) * 0.02)
    xs = {w.shape[0]: jnp.asarray(rng.standard_normal((rows, w.shape[0]), np.float32))
          for w in ws}

    @jax.jit
    def run(xs, ws, head):
        acc = sum(jnp.sum(xs[w.shape[0]] @ w) for w in ws)
        return acc + jnp.sum(jnp.einsum("rd,vd->rv", xs[cfg.dim][:head_rows], head))

    return lambda: run(xs, ws, head)


def torch_gemms(cfg, rows, head_rows, fused):
    import torch

    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(b, a, generator=g) * 0.02 for a, b in shapes(cfg, fused)]  # [out, in]
    head = torch.randn(cfg.vocab_size, cfg.dim, generator=g) * 0.02
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], generator=g) for w in ws}

    def run():
        with torch.inference_mode():
            acc = sum(float(torch.nn.functional.linear(xs[w.shape[1]], w).sum()) for w in ws)
            return acc + float(torch.nn.functional.linear(xs[cfg.dim][:head_rows], head).sum())

    return run


def alternating(calls: dict, repeats: int) -> dict:
    """Best seconds of each named call, run in turn ``repeats`` times after a warm-up."""
    for f in calls.values():
        jax.block_until_ready(f())
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, f in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _hlo_kinds(hlo: str, vocab: int) -> dict[str, str]:
    """Fusion name -> ``weights`` / ``lm head`` / ``attention`` / ``other``: a fusion holding a
    ``dot`` with a 2-D operand is a weight matmul (the LM head when its output is ``[., V]``);
    other dots (batched, 4-/5-D) are attention."""
    kinds = {}
    for line in hlo.split("\n"):
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) fusion\(.*calls=(%[\w.\-]+)", line)
        if not m:
            continue
        start = hlo.index("\n" + m.group(3) + " ")
        body = hlo[start:hlo.index("\n}\n", start)]
        params = re.findall(r"parameter\(\d+\)", body)
        two_d = re.search(r"= f32\[\d+,\d+\]\{1,0\} parameter|= bf16\[\d+,\d+\]\{1,0\} parameter",
                          body)
        if " dot(" not in body:
            kinds[m.group(1)] = "other"
        elif two_d and params:
            kinds[m.group(1)] = "lm head" if m.group(2).split("{")[0].endswith(
                f",{vocab}]") else "weights"
        else:
            kinds[m.group(1)] = "attention"
    return kinds


def recrl_breakdown(exe, run, vocab: int) -> tuple[dict[str, float], float]:
    """``({group: seconds}, total seconds)`` of one call of ``run`` from a profiler trace."""
    kinds = _hlo_kinds(exe.as_text(), vocab)
    jax.block_until_ready(run())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            total = time.perf_counter() - t0
        trace = json.load(gzip.open(glob.glob(f"{d}/**/*.json.gz", recursive=True)[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    groups = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in kinds:
            groups[kinds[e["name"]]] += e["dur"] / 1e6
    return dict(groups), total


def torch_breakdown(fn, lm_head_rows_cols) -> tuple[dict[str, float], float]:
    """Same for a transformers call, from ``torch.profiler`` self CPU times (shapes recorded:
    an ``mm``/``addmm`` whose weight is the LM head's counts as ``lm head``)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        fn()
        total = time.perf_counter() - t0
    groups = collections.Counter()
    for e in prof.key_averages(group_by_input_shape=True):
        s = e.self_cpu_time_total / 1e6
        if e.key in ("aten::mm", "aten::addmm"):
            head = any(list(shape) == list(lm_head_rows_cols) for shape in e.input_shapes)
            groups["lm head" if head else "weights"] += s
        elif "attention" in e.key or e.key == "aten::bmm":
            groups["attention"] += s
        elif e.key.startswith("aten::") and e.self_cpu_time_total > 0:
            groups["other"] += s
    return dict(groups), total


def _row(name, groups, total, flops):
    parts = ", ".join(f"{k} {groups.get(k, 0):.2f} s ({groups.get(k, 0) / total:.0%})"
                      for k in ("weights", "lm head", "attention", "other"))
    matmul = groups.get("weights", 0) + groups.get("lm head", 0)
    print(f"{name}: {total:.2f} s | {parts} | matmuls at {flops / matmul / 1e9:.0f} GFLOP/s",
          flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new", type=int, default=32, help="greedy tokens per row")
    ap.add_argument("--prompt", type=int, default=48)
    ap.add_argument("--completion", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    pin_threads(1)
    os.environ["XLA_FLAGS"] += " --xla_cpu_enable_xprof_traceme=true"
    import torch

    from benchmarks.lm_transformers import _hf_generate, _hf_score, hf_model

    torch.set_num_threads(1)
    cfg = models.smollm2_135m_config()
    graphdef, params = nnx.split(models.create_model(cfg))
    hf = hf_model(models.model_from_weights(cfg, models.model_weights(
        models.merge(graphdef, params))))
    b, p, c, n = args.batch, args.prompt, args.completion, args.new
    print(f"# SmolLM2-135M shapes, random weights, float32, 1 core; jax {jax.__version__},"
          f" torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}", flush=True)
    rng = np.random.default_rng(0)
    ids, comp = rng.integers(3, cfg.vocab_size, (b, p)), rng.integers(3, cfg.vocab_size, (b, c))
    mask, cmask = np.ones(ids.shape, bool), np.ones(comp.shape, bool)
    key = jax.random.key(0)
    greedy = models.SamplingConfig(max_new_tokens=n, temperature=0.0)
    exe = models.sample.lower(graphdef, params, ids, mask, key, config=greedy).compile()
    head = (cfg.dim, cfg.vocab_size)
    decode_flops = gemm_flops(cfg, b * (p + n), b * n)
    _row(f"recrl greedy B={b}, {n} tokens", *recrl_breakdown(
        exe, lambda: exe(params, ids, mask, key).tokens, cfg.vocab_size), decode_flops)
    _row(f"transformers greedy B={b}, {n} tokens", *torch_breakdown(
        lambda: _hf_generate(hf, ids, n, False), head), decode_flops)
    exe = models.logprobs.lower(graphdef, params, ids, mask, comp, cmask).compile()
    score_flops = gemm_flops(cfg, b * (p + c), b * c)
    _row(f"recrl score {b}x{p}+{c}", *recrl_breakdown(
        exe, lambda: exe(params, ids, mask, comp, cmask), cfg.vocab_size), score_flops)
    _row(f"transformers score {b}x{p}+{c}", *torch_breakdown(
        lambda: _hf_score(hf, ids, comp), head), score_flops)
    for rows, head_rows in ((b, b), (b * (p + c), b * c)):
        t = alternating({(lib, fused): fn(cfg, rows, head_rows, fused)
                         for lib, fn in (("recrl", jax_gemms), ("transformers", torch_gemms))
                         for fused in (False, True)}, args.repeats)
        fl = gemm_flops(cfg, rows, head_rows)
        print(f"matmuls alone, {rows} rows: " + "; ".join(
            f"{lib} {'fused' if fused else 'separate'} {s * 1e3:.0f} ms"
            f" ({fl / s / 1e9:.0f} GFLOP/s)" for (lib, fused), s in t.items()), flush=True)


if __name__ == "__main__":
    main()
