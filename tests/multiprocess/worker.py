"""One JAX process of the multi-process test (``tests/multiprocess/test_multiprocess.py``).

Usage: ``python -m tests.multiprocess.worker OUT NUM_PROCESSES PROCESS_ID PORT DEVICES``.

Sets ``DEVICES`` fake CPU devices, joins ``jax.distributed`` on ``127.0.0.1:PORT`` when
``NUM_PROCESSES > 1`` (CPU collectives via gloo, through :func:`recrl.parallel.startup`, the
launchers' start-up), then runs a few training steps of each pipeline on the global mesh:

- ProRL: the launcher's ``train_method`` (RL steps, per-epoch validation, checkpoints,
  metrics.jsonl / TensorBoard / result.json written by process 0 only) on the tiny
  synthetic config, with an untrained SASRec as the reward model;
- In-Context RLVR: ``Learner.step`` (data-parallel sampling and update) of a tiny Llama,
  then Evidence Gain weights and greedy held-out completions (rows split over the mesh),
  and two steps of an in-context method (``ic_grpo``: demonstration prefixes shared as KV
  prefixes, the prompts split over the mesh);
- GORACS: ``lmrec.finetune`` (data-parallel LoRA fine-tune) of a tiny Llama, then the
  per-sample gradient norms of its pool (``lmrec.grad_norms``, rows split over the mesh).

With one process and one device (``1 1``) the In-Context RLVR and GORACS parts use the plain
single-device code path (no mesh). Each process saves the resulting parameters to
``OUT/params_p<PROCESS_ID>.npz``.
"""

from __future__ import annotations

import os
import sys


def _flat(prefix: str, tree) -> dict:
    import jax
    import numpy as np

    from recrl import parallel

    leaves = jax.tree_util.tree_leaves_with_path(parallel.to_host(tree))
    return {f"{prefix}{jax.tree_util.keystr(p)}": np.asarray(x) for p, x in leaves}


def prorl_part(mesh, out) -> dict:
    from flax import nnx

    from experiments import prorl
    from experiments.configs.prorl import get_config
    from recrl import parallel, rundir
    from recrl.checkpoint import Checkpointer
    from recrl.prs import rl, simulator
    from recrl.prs.policy import PathPolicy, PolicyConfig

    cfg = get_config("tiny")
    cfg.rl.update(epochs=1, steps_per_epoch=3, prompts=8, group_size=4)
    cfg.eval.update(k=0, max_prompts=8, val_prompts=8)
    data = parallel.writer_first("data", lambda: prorl.load_data(cfg))
    n_items = data.sequences.num_items
    sim = simulator.build_simulator(simulator.SimConfig(kind="sasrec", num_items=n_items,
                                                        dim=16, n_heads=1, n_layers=1, ffn_dim=16,
                                                        max_len=16, dropout=0.0))
    pcfg = PolicyConfig(num_items=n_items, history=cfg.data.history, max_len=cfg.data.max_len,
                        **cfg.policy)
    policy0 = PathPolicy(pcfg, nnx.Rngs(0))
    init = _flat("init/prorl", nnx.state(policy0, nnx.Param))
    with rundir.MetricsLog(out / "metrics.jsonl", enabled=parallel.is_writer()) as log:
        ctx = prorl.Context(cfg, out, data, prorl.genre_matrix(data.genre_masks),
                            {"sasrec": sim}, mesh, log)
        prorl.train_method(ctx, policy0, "prorl", 0)
    like = parallel.to_host(rl.init_state(policy0, prorl.rl_config(cfg, "prorl", 3))[0])
    with Checkpointer(out / "rl" / "prorl_s0" / "ckpt") as ckpt:  # every process restores
        saved, _ = ckpt.restore(like={"rl": like, "best": like.params})
    state = saved["rl"]
    return {**init, **_flat("prorl", state.params)}


def _tiny_llama_policy():
    from flax import nnx

    from recrl import models
    from recrl.models.char_tokenizer import CharTokenizer

    tok = CharTokenizer()
    model = models.create_model(models.tiny_config(
        vocab_size=tok.vocab_size, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8,
        ffn_dim=32, max_seq_len=128), seed=0)
    return (tok, *nnx.split(model))


def _odd_length(text, problem):  # a reward that varies within groups: every update moves
    return float(len(text) % 2)


def icrlvr_part(mesh) -> dict:
    import jax

    from recrl.rlvr import config, learner, tasks

    tok, graphdef, params = _tiny_llama_policy()
    init = _flat("init/icrlvr", params)
    splits = tasks.make_splits(32, 8, 2, 4, seed=0)
    cfg = config.preset("grpo", group_size=4, prompts_per_step=4, max_prompt_len=32,
                   max_new_tokens=8, lr=1e-2, warmup_steps=1)
    lrn = learner.Learner(graphdef, params, tok, cfg, reward_fn=_odd_length, seed=0, mesh=mesh)
    pool = splits.train
    for step in range(3):
        lrn.step(lambda n, step=step: pool[step * n:(step + 1) * n],
                 jax.random.fold_in(jax.random.key(0), step))
    return {**init, **_flat("icrlvr", lrn.params), **icrlvr_scores(lrn, splits, mesh)}


def incontext_part(mesh) -> dict:
    """Two ``ic_grpo`` learner steps (the first at learning rate 0, the warm-up's start): 2 of
    the 4 rollouts per prompt continue a demonstration shared as a KV prefix (sampling and
    update split over the prompts)."""
    import jax
    import numpy as np

    from recrl.rlvr import config, learner, tasks

    tok, graphdef, params = _tiny_llama_policy()
    splits = tasks.make_splits(8, 8, 0, 0, seed=1)
    cfg = config.method_config(config.Method("grpo", in_context=True), num_demo=2,
                               group_size=4, prompts_per_step=4, max_prompt_len=32,
                               max_new_tokens=8, lr=1e-2, warmup_steps=1)
    lrn = learner.Learner(graphdef, params, tok, cfg, splits.demo, reward_fn=_odd_length,
                          seed=0, mesh=mesh)
    for step in range(2):
        lrn.step(lambda n, step=step: splits.train[step * n:(step + 1) * n],
                 jax.random.fold_in(jax.random.key(5), step))
    return {**_flat("init/incontext", params), **_flat("incontext", lrn.params),
            "incontext_rewards": np.array([[h["reward"], h["reward_demo"], h["reward_bare"],
                                            h["loss"]] for h in lrn.history])}


def icrlvr_scores(lrn, splits, mesh) -> dict:
    """Evidence Gain weights of 6 traces over 2 probes and greedy held-out completions of 3
    problems with the trained parameters (rows split over the mesh, padded to 8 and 4)."""
    import jax
    import numpy as np

    from recrl import models
    from recrl.rlvr import evaluation, evidence, tasks

    tok, probs = lrn.tok, splits.train[:2]
    texts = [p.solution for p in splits.train[:3]] + ["1+1=3", "??", "answer: 4"]
    weights = evidence.eg_weights(lrn.graphdef, lrn.params, tok, probs, texts,
                                  np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
                                  evidence.encode_probes(tok, splits.probe), 0.5, 48,
                                  mode="advantage", mesh=mesh)
    ids = [tasks.encode_prompt(tok, p.question) for p in splits.eval[:3]]
    pt, pm = models.pad_batch(ids, pad_id=tok.pad_id, side="left", length=32)
    scfg = models.SamplingConfig(max_new_tokens=8, temperature=0.0,
                                 stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
    toks, lens = evaluation.sample_rows(lrn.graphdef, lrn.params, pt, pm, jax.random.key(1),
                                        scfg, mesh)
    return {"icrlvr_eg_weights": weights, "icrlvr_eval_tokens": toks, "icrlvr_eval_len": lens}


def goracs_part(mesh) -> dict:
    import numpy as np
    from flax import nnx

    from recrl import models
    from recrl.coreset import lmrec

    model = models.create_model(models.tiny_config(
        vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=32,
        max_seq_len=64), seed=0)
    models.add_lora(model, rank=2, alpha=4, targets=("q_proj", "v_proj"), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 64, (24, 12)).astype(np.int32)
    mask = np.ones_like(tokens, bool)
    loss_mask = np.zeros_like(mask)
    loss_mask[:, 8:] = True
    init = _flat("init/goracs", nnx.state(model, models.LoRAParam))
    lmrec.finetune(model, tokens, mask, loss_mask, steps=3, batch_size=8, lr=1e-2, seed=0,
                   progress=False, mesh=mesh)
    # per-sample gradient norms of the fine-tuned model, 10 rows in batches of 8 (map_rows)
    norms = lmrec.grad_norms(model, tokens[:10], mask[:10], loss_mask[:10], batch_size=8,
                             progress=False, mesh=mesh)
    return {**init, **_flat("goracs", nnx.state(model, models.LoRAParam)),
            "goracs_grad_norms": norms}


def start(nproc: int, pid: int, port: int, ndev: int):
    """``ndev`` fake CPU devices, then the launchers' start-up (joining ``jax.distributed``
    on ``127.0.0.1:port`` when ``nproc > 1``); returns the global mesh. Call it before
    anything imports jax."""
    os.environ["JAX_NUM_CPU_DEVICES"] = str(ndev)
    os.environ["JAX_PLATFORMS"] = "cpu"
    import ml_collections

    from recrl import parallel

    cfg = ml_collections.ConfigDict(dict(parallel.CONFIG_FIELDS))
    if nproc > 1:
        cfg.update(distributed=True, coordinator_address=f"127.0.0.1:{port}",
                   num_processes=nproc, process_id=pid)
    return parallel.startup(cfg)


def main(argv: list[str]) -> None:
    out, nproc, pid, port, ndev = argv[1], *map(int, argv[2:6])
    mesh = start(nproc, pid, port, ndev)
    from pathlib import Path

    import numpy as np

    from recrl import parallel

    plain = None if nproc == 1 and ndev == 1 else mesh
    out = Path(out)
    import time

    params, seconds = {}, {}
    for name, part in (("prorl", lambda: prorl_part(mesh, out)),
                       ("icrlvr", lambda: icrlvr_part(plain)),
                       ("incontext", lambda: incontext_part(plain)),
                       ("goracs", lambda: goracs_part(plain))):
        t0 = time.perf_counter()
        params.update(part())
        seconds[name] = round(time.perf_counter() - t0, 1)
    print(f"process {pid}: seconds per part {seconds}", flush=True)
    np.savez(out / f"params_p{pid}.npz", **params)
    parallel.barrier("done")


if __name__ == "__main__":
    main(sys.argv)
