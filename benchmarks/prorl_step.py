"""ProRL RL-step throughput: rollouts + simulator rewards + SRC/PSAE + exact-KL update.

At the paper's batch shape (128 prompts × 16 paths × 10 steps, SASRec reward) on the
machine at hand, for 1 device and, where several are visible, all of them (data-parallel
jit with NamedSharding). Randomly initialised models: the cost does not depend on the
weights. The reference reports ~1.0 s per step for 512 prompts × 16 paths on 4 GPUs
(≈ 8,200 paths/s, ≈ 2,050 paths/s per GPU) and 10–17 paths/s for 128 × 16 on a 2-core CPU.

    python -m benchmarks.prorl_step [--prompts 128 --group_size 16 --num_items 2670]
    python -m benchmarks.prorl_step --prompts 512 --micro_batches 16   # paper_epoch1's update
    python -m benchmarks.prorl_step --prompts 512 --micro_batches 16 --dim 128 --layers 3

Prints paths/s, the compile time, the ratio to the reference's CPU rate and a per-stage
profile of one update (rollout sampling, simulator scoring, statistics + estimator, loss +
backward, optimiser and glue).
    JAX_NUM_CPU_DEVICES=4 python -m benchmarks.prorl_step   # also time 4 (fake) devices
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flax import nnx

from benchmarks.timing import median_seconds
from experiments.configs.prorl import METHODS
from recrl import parallel
from recrl.prs import rl, simulator
from recrl.prs.policy import PathPolicy, PolicyConfig


def time_steps(n_dev: int, args: argparse.Namespace) -> tuple[float, float]:
    """Median seconds per RL step, and the compile time, on ``n_dev`` devices."""
    pcfg = PolicyConfig(num_items=args.num_items, dim=args.dim, n_layers=args.layers,
                        n_heads=4, ffn_dim=4 * args.dim)
    policy = PathPolicy(pcfg, nnx.Rngs(0))
    sim = simulator.build_simulator(simulator.SimConfig(kind="sasrec", num_items=args.num_items))
    graphdef, sim_state = nnx.split(sim)
    cfg = rl.RLConfig(method=METHODS["prorl"], group_size=args.group_size,
                      micro_batches=args.micro_batches)
    state, graph = rl.init_state(policy, cfg)
    step = rl.make_train_step(
        graph, lambda s, *a: simulator.score_paths((graphdef, s), *a), cfg)
    mesh = parallel.data_mesh(n_dev)
    rng = np.random.default_rng(0)
    hist = rng.integers(0, args.num_items, (args.prompts, 10)).astype(np.int32)
    tgt = rng.integers(0, args.num_items, args.prompts).astype(np.int32)
    state = parallel.replicate(state, mesh)
    sim_state = parallel.replicate(sim_state, mesh)
    h, t = parallel.shard_batch(hist, mesh), parallel.shard_batch(tgt, mesh)
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(step(state, sim_state, h, t, jax.random.key(0)))
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        state, _ = jax.block_until_ready(step(state, sim_state, h, t, jax.random.key(i + 1)))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), compile_s


def stage_profile(args: argparse.Namespace) -> dict[str, float]:
    """Seconds per update in each stage of the step on one device, each stage jitted alone
    over the update's micro-batches: rollout sampling, simulator scoring, statistics +
    estimator, loss + backward; the optimiser and glue are the whole step minus those."""
    from recrl.prs.rollout import generate, path_uniforms

    pcfg = PolicyConfig(num_items=args.num_items, dim=args.dim, n_layers=args.layers,
                        n_heads=4, ffn_dim=4 * args.dim)
    policy = PathPolicy(pcfg, nnx.Rngs(0))
    sim = simulator.build_simulator(simulator.SimConfig(kind="sasrec",
                                                        num_items=args.num_items))
    sg, ss = nnx.split(sim)
    score = lambda s, *a: simulator.score_paths((sg, s), *a)
    cfg = rl.RLConfig(method=METHODS["prorl"], group_size=args.group_size, micro_batches=1)
    state, graph = rl.init_state(policy, cfg)
    parts = rl._Parts(*graph, score, cfg)
    G, M = args.group_size, args.micro_batches
    P = args.prompts // M  # one micro-batch; the update is M of them
    rng = np.random.default_rng(0)
    h = jax.numpy.asarray(rng.integers(0, args.num_items, (P, 10)), np.int32)
    t = jax.numpy.asarray(rng.integers(0, args.num_items, P), np.int32)
    u = path_uniforms(jax.random.key(0), P * G, pcfg.max_len)
    gen = jax.jit(lambda p, h, t, u: generate(parts.policy(p), h, t, None, uniforms=u,
                                              group_size=G))
    paths = gen(state.params, h, t, u)
    hh, tt = jax.numpy.repeat(h, G, 0), jax.numpy.repeat(t, G, 0)
    safe = jax.numpy.where(paths.path < args.num_items, paths.path, 0)
    ro = jax.jit(lambda p, s, h, t, k: rl.rollout_and_score(parts, p, s, h, t, k))(
        state.params, ss, h, t, jax.random.key(1))

    def stats_adv(st, ro):
        cen = rl.statistics(cfg, st.stats, st.collect_stats, ro)
        return rl.advantages("psae", cen.rewards, ro, (P, G, pcfg.max_len))

    adv = jax.jit(stats_adv)(state, ro)
    r = args.steps
    out = {
        "rollout sampling": median_seconds(gen, state.params, h, t, u, repeats=r),
        "simulator scoring": median_seconds(jax.jit(score), ss, hh, safe, paths.lengths,
                                             tt, repeats=r),
        "statistics + estimator": median_seconds(jax.jit(stats_adv), state, ro, repeats=r),
        "loss + backward": median_seconds(
            jax.jit(lambda s, ro, a: rl.loss_and_grads(parts, s, ro, a)[0]), state, ro, adv,
            repeats=r),
    }
    return {k: v * M for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--group_size", type=int, default=16)
    ap.add_argument("--num_items", type=int, default=2670, help="ML-1M after 20/40-core")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--micro_batches", type=int, default=1,
                    help="gradient accumulation: the prompts in this many micro-batches")
    ap.add_argument("--train_prompts", type=int, default=31230,
                    help="prompts in one RL epoch (ML-1M mined train paths, docs/data.md)")
    ap.add_argument("--no_profile", action="store_true", help="skip the per-stage profile")
    args = ap.parse_args()
    paths = args.prompts * args.group_size
    print(f"device: {jax.devices()[0].device_kind} × {jax.device_count()}, jax {jax.__version__};"
          f" {args.prompts} prompts × {args.group_size} paths × 10 steps, {args.num_items} items")
    print(f"{'devices':>8s} {'s/step':>8s} {'paths/s':>9s} {'compile s':>10s}")
    counts = sorted({1, jax.device_count()})
    results = {}
    for n in counts:
        if args.prompts % n:
            continue
        s, c = time_steps(n, args)
        results[n] = s
        print(f"{n:8d} {s:8.3f} {paths / s:9.1f} {c:10.1f}")
    steps = -(-args.train_prompts // args.prompts)
    for n, s in results.items():
        print(f"one ML-1M epoch ({args.train_prompts} prompts = {steps} steps) on {n} "
              f"device(s): {steps * s / 60:.1f} min")
    if not args.no_profile:
        stages = stage_profile(args)
        total = results[1]
        stages["optimiser + glue"] = max(total - sum(stages.values()), 0.0)
        print(f"per-stage profile, 1 device, per update of {paths} paths ({args.micro_batches}"
              f" micro-batch(es), each stage jitted alone):")
        for name, sec in stages.items():
            print(f"  {name:24s} {sec:7.3f} s  {100 * sec / total:5.1f} %")
    ref_cpu = (10.0, 17.0)
    best = paths / min(results.values())
    print(f"vs the reference on a 2-core CPU ({ref_cpu[0]:.0f}–{ref_cpu[1]:.0f} paths/s): "
          f"{best / ref_cpu[1]:.1f}–{best / ref_cpu[0]:.1f}x")


if __name__ == "__main__":
    main()
