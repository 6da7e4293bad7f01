"""GORACS evaluation: scoring candidate titles with a shared prompt prefix vs batched pairs.

    python -m benchmarks.candidate_scoring                  # 200 prompts x 100 candidates
    python -m benchmarks.candidate_scoring --prompts 50 --full 5

The model is the ``ml1m_cpu`` size (``tiny_config``, d = 128, 2 blocks, vocabulary 5,384,
LoRA r = 8 on q/v), random weights; prompts are three synthetic 3–7-word "titles" repeated
twice (~40 tokens), candidates 3–7 words. Rows, side by side in one run (the first pass of
each compiles and is not timed):

  prefix   ``lmrec.catalogue_scores(..., candidates)``: each prompt's keys/values computed
           once, its candidates scored as one batch of continuations.
  pairs    ``lmrec.encode_pairs`` + ``lmrec.answer_loglik`` (batch 256): every (prompt,
           candidate) row runs the whole prompt again; the reference.
  full     ``catalogue_scores`` of every one of 3,706 titles for ``--full`` prompts: seconds
           per prompt (full-catalogue ranking).

It also prints the largest difference between the two score matrices (they must agree).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--titles", type=int, default=3706)
    ap.add_argument("--full", type=int, default=3, help="prompts ranked against all titles")
    args = ap.parse_args(argv)

    from flax import nnx

    from recrl import models
    from recrl.coreset import lmrec

    rng = np.random.default_rng(0)
    vocab_size = 5384
    model = models.create_model(models.tiny_config(
        vocab_size=vocab_size, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
        ffn_dim=256), seed=0)
    models.add_lora(model, rank=8, alpha=16, targets=("q_proj", "v_proj"), rngs=nnx.Rngs(0))
    titles = [" ".join(f"w{rng.integers(1, 2000)}" for _ in range(rng.integers(3, 8)))
              for _ in range(args.titles)]
    ids: dict[str, int] = {}

    def encode(text: str) -> list[int]:
        return [ids.setdefault(w, 1 + len(ids) % (vocab_size - 2)) for w in text.split()]

    prompts = ["; ".join(titles[j] for j in rng.choice(args.titles, 3)) * 2
               for _ in range(args.prompts)]
    cand = rng.choice(args.titles, (args.prompts, args.candidates))
    kw = dict(max_prompt=64, max_answer=24)

    def prefix():
        return lmrec.catalogue_scores(model, encode, prompts, titles, cand, progress=False,
                                      **kw)

    def pairs():
        rows = [(p, titles[c]) for p, cs in zip(prompts, cand, strict=True) for c in cs]
        enc = lmrec.encode_pairs(encode, [r[0] for r in rows], [r[1] for r in rows], **kw)
        return lmrec.answer_loglik(model, *enc, batch_size=256).reshape(cand.shape)

    timed = {}
    for name, fn in (("prefix", prefix), ("pairs", pairs)):
        fn()  # compile
        t = time.perf_counter()
        timed[name] = (fn(), time.perf_counter() - t)
    diff = np.abs(timed["prefix"][0] - timed["pairs"][0]).max()
    print(f"{args.prompts} prompts x {args.candidates} candidates (d=128, 2 blocks, "
          f"vocabulary {vocab_size})")
    print(f"prefix {timed['prefix'][1]:.1f} s | pairs {timed['pairs'][1]:.1f} s | "
          f"pairs / prefix = {timed['pairs'][1] / timed['prefix'][1]:.1f}x | "
          f"max |score difference| {diff:.1e}")
    if args.full > 0:
        lmrec.catalogue_scores(model, encode, prompts[:1], titles, progress=False, **kw)
        t = time.perf_counter()
        lmrec.catalogue_scores(model, encode, prompts[:args.full], titles, progress=False, **kw)
        print(f"full catalogue ({args.titles} titles): "
              f"{(time.perf_counter() - t) / args.full:.2f} s per prompt")


if __name__ == "__main__":
    main()
