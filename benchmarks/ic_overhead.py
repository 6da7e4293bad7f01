"""In-context RL step time vs plain GRPO/DAPO step time at equal rollouts, per stage.

Three ways to run one RL step on ``P`` prompts × ``G`` rollouts × ``T`` new tokens:

- ``plain``: every rollout on the bare prompt (the named reference);
- ``ic_shared`` (recrl now): ``G_d`` of ``G`` rollouts continue one of ``G_d`` demonstrations drawn
  per generation batch; each demonstration is a prefix run once and shared through the KV cache
  in sampling (``sample_prefix_groups``: one shared ``Prefix`` per slot) and in the update's
  log-prob recomputation (``logprobs_with_prefixes``: keys/values gathered into the demo rows);
  bare rows run their own prompt only;
- ``ic_padded`` (recrl before, for comparison): every rollout's full prompt, bare ones padded
  to the demo-augmented length, sampled and rescored as one padded batch.

Stages: ``sample`` (prefill + decoding, no stop token so every row generates ``T``
tokens), ``score`` (decode to text, scored length, reward on the host), ``update`` (one
jitted train step: log-probs, clipped loss, gradient, AdamW). Median over ``--steps`` after
one warm-up call (compilation); the variants run interleaved, step by step, so machine load
hits them alike; wall and process-CPU seconds are both reported (on a loaded shared machine
the CPU seconds are the steadier measure of work). The paper reports +1.0 % to +4.1 % per
step for in-context training.

    python -m benchmarks.ic_overhead                          # tiny char model
    python -m benchmarks.ic_overhead --model smollm2 --prompts 2 --new_tokens 32 --steps 2
"""

from __future__ import annotations

import argparse
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recrl import models
from recrl.models.char_tokenizer import CharTokenizer
from recrl.rlvr import config, learner, rollouts, tasks


def _timed(fn, *args):
    """``fn(*args)``, its wall seconds and this process's CPU seconds (all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args))
    return out, (time.perf_counter() - t0, time.process_time() - c0)


def _pad(seqs, pad_id, length):
    t, m = models.pad_batch(seqs, pad_id=pad_id, side="left", length=length)
    return jnp.asarray(t), jnp.asarray(m)


class Setup:
    """Model, tokenizer, problems, demonstrations and the three variants' static inputs."""

    def __init__(self, args):
        if args.model == "smollm2":
            from experiments.icrlvr import load_smollm2

            self.tok, self.graphdef, params = load_smollm2()
        else:
            self.tok = CharTokenizer()
            cfg = models.tiny_config(vocab_size=self.tok.vocab_size, dim=args.dim,
                                     n_layers=args.layers, n_heads=4, n_kv_heads=2,
                                     ffn_dim=3 * args.dim, max_seq_len=512)
            self.graphdef, params = nnx.split(models.create_model(cfg, seed=0))
        self.params = params
        splits = tasks.make_splits(args.prompts, max(args.demos, 1) * 4, 0, 0, seed=0,
                               num_ops=(2, 3))
        self.problems, self.pool_problems = splits.train, splits.demo
        p, g, k = args.prompts, args.group, args.demos
        self.p, self.g, self.k, self.c = p, g, k, args.new_tokens
        self.cfg = config.preset(args.algorithm, group_size=g, num_demo=k, prompts_per_step=p,
                            max_new_tokens=self.c, dynamic_sampling=False)
        self.scfg = models.SamplingConfig(max_new_tokens=self.c, temperature=1.0,
                                          pad_id=self.tok.pad_id)  # no stop: equal tokens
        tok = self.tok
        self.pool = rollouts.encode_demo_pool(tok, self.pool_problems)
        picks = rollouts.draw_demos(random.Random(0), len(self.pool_problems), k)
        self.demo = np.full((p, g), -1, np.int32)
        self.demo[:, :k] = picks
        own = lambda after: [rollouts.own_prompt(tok, q.question, after) for q in self.problems]
        lq = -(-max(len(x) for x in own(False)) // 16) * 16
        self.bare = _pad(own(False), tok.pad_id, lq)
        self.after = _pad(own(True), tok.pad_id, lq)
        pre = np.zeros((g, self.pool[0].shape[1]), np.int32)
        pre_mask = np.zeros(pre.shape, bool)
        pre[:k], pre_mask[:k] = self.pool[0][picks], self.pool[1][picks]
        self.group_prefix = (jnp.asarray(pre), jnp.asarray(pre_mask))
        full, _ = rollouts.build_prompts(tok, self.problems, self.pool_problems, g, k,
                                         random.Random(0))
        lf = -(-max(len(x) for row in full for x in row) // 16) * 16
        self.full = _pad([x for row in full for x in row], tok.pad_id, lf)
        self.lengths = dict(own_prompt=lq, demo_prefix=self.pool[0].shape[1], padded_prompt=lf)

    # ---- sampling -------------------------------------------------------------------------
    def sample(self, variant, key):
        p, g = self.p, self.g
        rep = lambda x, n: jnp.repeat(x, n, axis=0)
        if variant == "plain":
            o = models.sample(self.graphdef, self.params, rep(self.bare[0], g),
                              rep(self.bare[1], g), key, config=self.scfg)
            return o.tokens.reshape(p, g, -1), o.logprobs.reshape(p, g, -1)
        if variant == "ic_padded":
            o = models.sample(self.graphdef, self.params, *self.full, key, config=self.scfg)
            return o.tokens.reshape(p, g, -1), o.logprobs.reshape(p, g, -1)
        o = models.sample_prefix_groups(self.graphdef, self.params, *self.group_prefix,
                                        *self._own_prompts(), key, config=self.scfg)
        return jnp.swapaxes(o.tokens, 0, 1), jnp.swapaxes(o.logprobs, 0, 1)

    def _own_prompts(self):  # [G, P, S]: slot-major groups
        k, g = self.k, self.g
        pick = lambda a, b: jnp.concatenate(
            [jnp.repeat(a[None], k, 0), jnp.repeat(b[None], g - k, 0)], 0)
        return pick(self.after[0], self.bare[0]), pick(self.after[1], self.bare[1])

    # ---- host scoring ---------------------------------------------------------------------
    def score(self, toks):
        p, g, c = self.p, self.g, self.c
        flat = np.asarray(toks).reshape(p * g, c)
        texts = [tasks.decode_completion(self.tok, flat[i], c) for i in range(p * g)]
        kept = np.array([tasks.scored_length(self.tok, flat[i], c) for i in range(p * g)])
        reward = np.array([tasks.answer_reward(t, self.problems[i // g])
                           for i, t in enumerate(texts)], np.float32)
        reward[::2] = 1.0  # informative groups whatever the model says (timing only)
        return (np.arange(c)[None] < kept[:, None]).reshape(p, g, c), reward.reshape(p, g)

    def batch(self, variant, toks, lps, mask, reward):
        p, g = self.p, self.g
        if variant == "ic_padded":
            prompt = self.full[0].reshape(p, g, -1)
            pmask = self.full[1].reshape(p, g, -1)
        else:
            k = self.k if variant == "ic_shared" else 0
            pick = lambda a, b: jnp.concatenate(
                [jnp.repeat(a[:, None], k, 1), jnp.repeat(b[:, None], g - k, 1)], 1)
            prompt, pmask = pick(self.after[0], self.bare[0]), pick(self.after[1], self.bare[1])
        return rollouts.Rollouts(prompt, pmask, toks, jnp.asarray(mask), jnp.where(mask, lps, 0.0),
                          jnp.asarray(reward), jnp.zeros((p, g)), jnp.asarray(self.demo),
                          jnp.ones(p, bool), jnp.ones((p, g)))


class Runner:
    """One variant's optimiser state and step; ``step`` returns seconds per stage."""

    def __init__(self, s: Setup, variant: str):
        self.s, self.variant = s, variant
        self.tx = learner.make_optimizer(s.cfg)
        self.params, self.opt = s.params, self.tx.init(s.params)
        self.demos = rollouts.demo_prefixes(s.pool, s.demo, s.k) if variant == "ic_shared" else None
        self.calls = 0

    def step(self) -> dict[str, float]:
        s = self.s
        (toks, lps), t_s = _timed(s.sample, self.variant, jax.random.key(self.calls))
        self.calls += 1
        (mask, reward), t_h = _timed(s.score, toks)
        b = s.batch(self.variant, toks, lps, mask, reward)
        (self.params, self.opt, _), t_u = _timed(learner.train_step, s.graphdef, self.params,
                                                 self.opt, b, s.cfg, self.tx, None, self.demos)
        out = {}
        for j, clock in enumerate(("", "cpu_")):
            out.update({clock + "sample": t_s[j], clock + "score": t_h[j],
                        clock + "update": t_u[j], clock + "total": t_s[j] + t_h[j] + t_u[j]})
        return out


def run_variants(s: Setup, variants: list[str], steps: int) -> dict[str, dict[str, float]]:
    """Median seconds per stage; variants interleaved step by step (rotating the order) so
    that load from other processes hits them alike; one warm-up step each (compilation)."""
    runners = {v: Runner(s, v) for v in variants}
    out = {v: {"warmup": r.step()["total"]} for v, r in runners.items()}
    times: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for i in range(steps):
        for j in range(len(variants)):
            v = variants[(i + j) % len(variants)]
            times[v].append(runners[v].step())
    for v, ts in times.items():
        out[v].update({k: float(np.median([t[k] for t in ts])) for k in ts[0]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    ap.add_argument("--dim", type=int, default=64, help="tiny model width")
    ap.add_argument("--layers", type=int, default=2, help="tiny model depth")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--demos", type=int, default=6,
                    help="G_d (num_demo) of G rollouts on a demonstration")
    ap.add_argument("--new_tokens", type=int, default=40)
    ap.add_argument("--algorithm", default="dapo", choices=tuple(config.PRESETS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--variants", default="plain,ic_shared,ic_padded")
    args = ap.parse_args()
    s = Setup(args)
    print(f"model {args.model}; P={args.prompts} G={args.group} G_d={args.demos} "
          f"T={args.new_tokens}; token lengths {s.lengths}; backend {jax.default_backend()}")
    res = run_variants(s, args.variants.split(","), args.steps)
    base = res.get("plain")
    for clock, name in (("", "wall"), ("cpu_", "process CPU")):
        print(f"\n{name} seconds per step (median of {args.steps}):")
        print("| variant | sample | score | update | total | total vs plain |")
        print("|---|---|---|---|---|---|")
        for v, r in res.items():
            ratio = (f"{100 * (r[clock + 'total'] / base[clock + 'total'] - 1):+.1f} %"
                     if base else "–")
            print(f"| {v} | {r[clock + 'sample']:.3f} | {r[clock + 'score']:.3f} | "
                  f"{r[clock + 'update']:.3f} | {r[clock + 'total']:.3f} | {ratio} |")
        if base:
            for v, r in res.items():
                if v != "plain":
                    print(f"{v} per stage vs plain ({name}): " + ", ".join(
                        f"{k} {100 * (r[clock + k] / base[clock + k] - 1):+.1f} %"
                        for k in ("sample", "score", "update")))
    print("warm-up (compile) wall s: " + ", ".join(f"{v} {r['warmup']:.1f}"
                                                   for v, r in res.items()))


if __name__ == "__main__":
    main()
