"""recrl.models throughput: sampling and scoring tokens/s, KV cache vs recomputation.

    python -m benchmarks.lm                      # SmolLM2-135M (GGUF, fetched if needed)
    python -m benchmarks.lm --model tiny         # a 2-block random model (seconds)
    python -m benchmarks.lm --dtype bfloat16 --batch 1 4 16 --new 32
    python -m benchmarks.lm --compare transformers --batch 1 8 16 --new 64 --completion 256
                                                 # recrl vs transformers, same weights, side by
                                                 # side (needs the [bench] extra: torch)
    python -m benchmarks.lm --compare transformers --dtype bfloat16
                                                 # recrl in bf16 vs transformers in fp32 and
                                                 # bf16, with recrl-bf16's error vs recrl-fp32

Rows (compile time excluded: every call is run once before it is timed):
  sample          ``sample`` on a padded batch of B copies of a chat prompt, N new tokens
                  (no stop token, so every row generates N): generated tokens / s.
  sample_group    ``sample_group``: the same B rows as one group sharing the prompt's prefix.
  greedy          ``sample`` with temperature 0 (the cached run the baseline is compared to).
  recompute       the same greedy generation without a KV cache: every step reruns the full
                  forward over the [B, P + N] buffer (one compiled loop). ``cache x`` =
                  recompute time / ``greedy`` time.
  score           ``logprobs`` of B completions (C tokens) with the prompt repeated per row:
                  completion tokens / s.
  score_prefix    ``score_completions``: the prompt's KV computed once and shared.

With ``--compare transformers`` the table is instead recrl vs ``transformers`` on the same
weights, interleaved, with the compile time of each recrl shape (``benchmarks.lm_transformers``).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recrl import models

QUESTION = [{"role": "user", "content": "Name three famous landmarks in Paris and explain "
                                        "briefly why each of them is worth a visit."}]


def _timeit(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


@functools.partial(jax.jit, static_argnums=(0, 4))
def greedy_recompute(graphdef, params, prompt, prompt_mask, n_new: int):
    """Greedy decoding without a cache: each step runs the whole [B, P + N] buffer."""
    model = models.merge(graphdef, params)
    b, p = prompt.shape
    tokens = jnp.concatenate([prompt, jnp.zeros((b, n_new), prompt.dtype)], axis=1)
    mask = jnp.concatenate([prompt_mask, jnp.zeros((b, n_new), bool)], axis=1)

    def step(i, carry):
        tokens, mask = carry
        hidden, _ = model(tokens, models.positions_from_mask(mask), mask)
        nxt = jnp.argmax(model.logits(hidden[:, p + i - 1]), axis=-1).astype(tokens.dtype)
        tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, p + i))
        mask = jax.lax.dynamic_update_slice(mask, jnp.ones((b, 1), bool), (0, p + i))
        return tokens, mask

    return jax.lax.fori_loop(0, n_new, step, (tokens, mask))[0]


def pin_threads(n: int) -> None:
    """Runs this process on its first ``n`` allowed cores; with ``n = 1`` XLA's CPU client
    also uses a single compute thread. Call before jax makes its first array."""
    cores = sorted(os.sched_getaffinity(0))
    if not 1 <= n <= len(cores):
        raise ValueError(f"--threads must be in 1..{len(cores)}, got {n}")
    os.sched_setaffinity(0, cores[:n])
    if n == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


def load(name: str, dtype: str):
    if name == "tiny":
        cfg = models.tiny_config(dtype=dtype, param_dtype=dtype, vocab_size=512)
        model = models.create_model(cfg)
        ids = list(np.random.default_rng(0).integers(3, 512, size=40))
        return model, ids, "tiny random (2 blocks, d=64)"
    path = models.smollm2_path()
    model = models.load_gguf(path, dtype=dtype, param_dtype=dtype)
    tok = models.Tokenizer.from_gguf(path)
    return model, tok.encode_chat(QUESTION), "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--new", type=int, default=32, help="new tokens per sampled row")
    ap.add_argument("--completion", type=int, default=64, help="scored completion length")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up")
    ap.add_argument("--compare", choices=["transformers"], default=None,
                    help="time recrl against Hugging Face transformers (torch) side by side")
    ap.add_argument("--threads", type=int, default=None,
                    help="pin the process to this many cores (XLA and, with --compare, torch "
                         "threads too); default: every core for recrl, 1 with --compare")
    ap.add_argument("--recompute-max-batch", type=int, default=4,
                    help="run the no-cache baseline only up to this batch size (it is slow)")
    args = ap.parse_args(argv)
    if args.threads is None and args.compare:
        args.threads = 1
    return args


def load_models(args: argparse.Namespace):
    """``(model, prompt ids, description, reference)``; with ``--compare`` and a non-float32
    dtype the model is rounded from the float32 one, kept as ``reference = (model, graphdef,
    params)``."""
    if args.compare and args.dtype != "float32":
        model32, prompt_ids, desc = load(args.model, "float32")
        cfg = model32.config.replace(dtype=args.dtype, param_dtype=args.dtype)
        model = models.model_from_weights(cfg, models.model_weights(model32))
        return model, prompt_ids, desc, (model32, *nnx.split(model32))
    return (*load(args.model, args.dtype), None)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare:  # checked before pinning: a skipped comparison leaves the process as it was
        from benchmarks import lm_transformers

        missing = lm_transformers.available()
        if missing:
            print(f"# skipped: {missing}")
            return
    if args.threads:
        pin_threads(args.threads)
    t0 = time.perf_counter()
    model, prompt_ids, desc, reference = load_models(args)
    load_s = time.perf_counter() - t0
    graphdef, params = nnx.split(model)
    print(f"# {desc}, {args.dtype}; prompt {len(prompt_ids)} tokens; loaded in {load_s:.1f} s")
    print(f"# {jax.devices()[0].device_kind} x{len(jax.devices())}, "
          f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} CPU cores,"
          f" {platform.machine()}, jax {jax.__version__}", flush=True)
    if args.compare:
        lm_transformers.run(model, graphdef, params, prompt_ids, batches=args.batch,
                            n_new=args.new, completion=args.completion,
                            repeats=max(args.repeats, 1),
                            threads=args.threads or len(os.sched_getaffinity(0)),
                            reference=reference)
    else:
        run_alone(args, model, graphdef, params, prompt_ids)


def run_alone(args, model, graphdef, params, prompt_ids) -> None:
    """recrl's own table (the rows of the module docstring)."""
    rng = np.random.default_rng(0)
    cfg = models.SamplingConfig(max_new_tokens=args.new, temperature=1.0, top_p=0.95)
    print(f"\n{'op':14s} {'batch':>5s} {'tokens':>7s} {'seconds':>8s} {'tokens/s':>9s}  note")

    def row(op, b, n, t, note=""):
        print(f"{op:14s} {b:5d} {n:7d} {t:8.3f} {n / t:9.1f}  {note}", flush=True)

    part = functools.partial
    prompt_1d = jnp.asarray(prompt_ids)
    greedy = models.SamplingConfig(max_new_tokens=args.new, temperature=0.0)
    for b in args.batch:
        prompt, pmask = models.pad_batch([prompt_ids] * b)
        key = jax.random.key(0)
        t = _timeit(part(models.sample, graphdef, params, prompt, pmask, key, config=cfg),
                    args.repeats)
        row("sample", b, b * args.new, t)
        t = _timeit(part(models.sample_group, graphdef, params, prompt_1d, key, num_samples=b,
                         config=cfg), args.repeats)
        row("sample_group", b, b * args.new, t)
        if b <= args.recompute_max_batch:
            t_c = _timeit(part(models.sample, graphdef, params, prompt, pmask, key,
                               config=greedy), args.repeats)
            row("greedy", b, b * args.new, t_c)
            t_r = _timeit(part(greedy_recompute, graphdef, params, prompt, pmask, args.new),
                          args.repeats)
            row("recompute", b, b * args.new, t_r, f"cache x{t_r / t_c:.1f} vs greedy")
        comp = rng.integers(3, model.config.vocab_size, size=(b, args.completion))
        cmask = np.ones(comp.shape, bool)
        t_sc = _timeit(part(models.logprobs, graphdef, params, prompt, pmask, comp, cmask),
                       args.repeats)
        row("score", b, b * args.completion, t_sc)
        t_sp = _timeit(part(models.score_completions, graphdef, params, prompt_1d, comp, cmask),
                       args.repeats)
        row("score_prefix", b, b * args.completion, t_sp, f"x{t_sc / t_sp:.1f} vs score")


if __name__ == "__main__":
    main()
