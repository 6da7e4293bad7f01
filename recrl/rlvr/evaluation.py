r"""Zero-shot evaluation of a policy on held-out problems: greedy accuracy, avg@k, pass@k,
step correctness, malformed rate; on one device or data-parallel over a mesh."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recrl import models, parallel
from recrl.rlvr import tasks


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    r"""Unbiased :math:`\mathrm{pass@}k = 1 - \binom{n-c}{k}/\binom{n}{k}`."""
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(num_samples - num_correct + 1,
                                                    num_samples + 1)))


def sample_rows(graphdef: nnx.GraphDef, params, prompt: np.ndarray, mask: np.ndarray,
                key: jax.Array, config: models.SamplingConfig, mesh=None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``models.sample`` of every row of ``prompt`` (host arrays): ``[N, T]`` tokens and
    ``[N]`` lengths.

    With ``mesh`` the rows are split over its devices (each process builds its own rows),
    padded with copies of the first row to a multiple of the devices; the padding is
    dropped. Each row's sampling noise depends on the key and the row's index only, and
    padding comes after the real rows, so the samples are one device's (up to float
    rounding of the logits)."""
    if mesh is None:
        out = models.sample(graphdef, params, jnp.asarray(prompt), jnp.asarray(mask), key,
                            config=config)
        return np.asarray(out.tokens), np.asarray(out.lengths)
    n = len(prompt)
    idx = np.pad(np.arange(n), (0, -n % mesh.shape[parallel.DATA_AXIS]))
    pt, pm = parallel.global_rows(lambda r: (prompt[idx[r]], mask[idx[r]]), len(idx), mesh)
    out = parallel.to_host(models.sample(graphdef, parallel.on_mesh(params, mesh), pt, pm, key,
                                         config=config))
    return np.asarray(out.tokens)[:n], np.asarray(out.lengths)[:n]


def evaluate(graphdef: nnx.GraphDef, params, tok, problems: Sequence[tasks.Problem],
             key: jax.Array, *, k: int = 4, max_new_tokens: int = 48, max_prompt_len: int = 64,
             temperature: float = 1.0, mesh=None) -> dict[str, float]:
    r"""Zero-shot evaluation (no demonstration) on held-out problems, the sampling split over
    ``mesh``'s devices when given (:func:`sample_rows`; the same texts as one device).

    ``greedy_acc``: accuracy of the greedy answer; ``avg@k``: mean accuracy of ``k`` samples at
    ``temperature`` (= pass@1 estimated from ``k`` samples); ``pass@k`` (unbiased);
    ``step_correct``: mean step correctness of the samples; ``malformed``: fraction with no
    extractable answer.
    """
    ids = [tasks.encode_prompt(tok, p.question) for p in problems]
    pt, pm = models.pad_batch(ids, pad_id=tok.pad_id, side="left", length=max_prompt_len)
    out = {}
    for name, temp, reps in (("greedy", 0.0, 1), ("sampled", temperature, k)):
        scfg = models.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temp,
                                     stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
        toks, lens = sample_rows(graphdef, params, np.repeat(pt, reps, axis=0),
                                 np.repeat(pm, reps, axis=0), key, scfg, mesh)
        texts = [tasks.decode_completion(tok, toks[i], int(lens[i])) for i in range(len(toks))]
        probs = [problems[i // reps] for i in range(len(toks))]
        out[name] = tasks.score_traces(texts, probs)
    corr = out["sampled"].reward.reshape(len(problems), k)
    return {
        "greedy_acc": float(out["greedy"].reward.mean()),
        f"avg@{k}": float(corr.mean()),
        f"pass@{k}": float(np.mean([pass_at_k(k, int(c), k) for c in corr.sum(1)])),
        "step_correct": float(out["sampled"].step_correctness.mean()),
        "malformed": float(out["sampled"].malformed.mean()),
    }
