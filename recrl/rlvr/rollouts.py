r"""Rollout groups: prompts with in-context demonstrations, sampling, scoring, DAPO filtering.

Per prompt ``q`` a group of ``G`` rollouts: slot ``k < G_d`` (``num_demo``) is sampled on
``demo_k ++ q``, slots ``G_d..G−1`` on the bare ``q``. The ``G_d`` distinct demonstrations are
drawn once per generation batch (slot ``k`` uses demo ``k`` for every prompt), so each
demonstration is a prefix shared by ``P`` rows: it is run once and its keys/values are
gathered into those rows' caches (``models.sample_prefix_groups``); bare rows run on their own
prompt, never padded to the demo-augmented length. The completion mask ends where the scored
text ends (``tasks.scored_length``).

Dynamic sampling (DAPO, :func:`collect_groups`) drops groups whose rewards are all equal and
draws again, up to a round limit; missing groups are filled with dropped ones marked invalid
(zero weight).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recrl import models, parallel
from recrl.rlvr import tasks
from recrl.rlvr.config import LearnerConfig


class Rollouts(NamedTuple):
    """A batch of ``P`` groups of ``G`` rollouts (arrays only; jit-friendly).

    Attributes:
      prompt, prompt_mask: ``[P, G, S]`` each rollout's own prompt: ``bos + "Q: q\nA: "`` for
        bare rows, ``"Q: q\nA: "`` after the demonstration prefix (``demo``) for the others.
      completion, completion_mask: ``[P, G, T]``; the mask ends where the scored text ends.
      old_logp: ``[P, G, T]`` behaviour log-probs.
      reward: ``[P, G]`` binary rewards.
      step_correct: ``[P, G]`` step-correctness scores.
      demo: ``[P, G]`` int index of the demonstration in the pool, −1 for bare prompts.
      valid: ``[P]`` groups that take part in the update.
      weight: ``[P, G]`` EG weights (1 by default): on rewards or on advantages (``eg_mode``).
    """

    prompt: Any
    prompt_mask: Any
    completion: Any
    completion_mask: Any
    old_logp: Any
    reward: Any
    step_correct: Any
    demo: Any
    valid: Any
    weight: Any


def concat_rollouts(parts: Sequence[Rollouts]) -> Rollouts:
    """Concatenates batches along the group axis."""
    return Rollouts(*(np.concatenate([np.asarray(x) for x in xs]) for xs in zip(*parts,
                                                                               strict=True)))


def select_groups(batch: Rollouts, idx: np.ndarray) -> Rollouts:
    """The groups ``idx`` of ``batch``."""
    return Rollouts(*(np.asarray(x)[idx] for x in batch))


class DemoPrefixes(NamedTuple):
    """The demonstration prefixes of a batch, each run once and shared by its rows.

    Attributes:
      tokens: int ``[U, S_p]`` ``bos + "Q: d_q\nA: d_r\n\n"``, left-padded (``U`` distinct
        demonstrations of length ``S_p``).
      mask: bool ``[U, S_p]``.
      index: int ``[P, G_d]`` which prefix demo slot ``k`` of group ``p`` continues.
    """

    tokens: Any
    mask: Any
    index: Any


def encode_demo_pool(tok, demo_pool: Sequence[tasks.Problem]) -> tuple[np.ndarray, np.ndarray]:
    """``bos + demo`` token rows of the whole pool, left-padded to a multiple of 16."""
    if not demo_pool:
        return np.zeros((0, 16), np.int32), np.zeros((0, 16), bool)
    seqs = [[tok.bos_id] if tok.bos_id is not None else [] for _ in demo_pool]
    seqs = [b + tok.encode(tasks.format_example(d.question, d.solution))
            for b, d in zip(seqs, demo_pool, strict=True)]
    length = -(-max(map(len, seqs)) // 16) * 16
    return models.pad_batch(seqs, pad_id=tok.pad_id, side="left", length=length)


def draw_demos(rng: random.Random, pool_size: int, num_demo: int) -> list[int]:
    """``num_demo`` distinct pool indices for one generation batch (slot ``k`` = pick ``k``)."""
    if num_demo > pool_size:
        raise ValueError(f"num_demo={num_demo} > {pool_size} demonstrations")
    return rng.sample(range(pool_size), num_demo)


def own_prompt(tok, question: str, after_demo: bool) -> list[int]:
    """A rollout's own prompt ids: ``"Q: q\nA: "`` after a demo prefix, else with ``bos``."""
    if after_demo:
        return tok.encode(tasks.format_prompt(question))
    return tasks.encode_prompt(tok, question)


def build_prompts(tok, problems: Sequence[tasks.Problem], demo_pool: Sequence[tasks.Problem],
                  group_size: int, num_demo: int,
                  rng: random.Random) -> tuple[list[list[list[int]]], np.ndarray]:
    """Full prompt ids per rollout (demo prefix ++ own prompt), demos drawn once per batch.

    Returns:
      ``prompts[p][g]`` token lists and ``demo [P, G]`` pool indices (−1: bare); slot ``k <
      num_demo`` holds the same demonstration for every prompt.
    """
    picks = draw_demos(rng, len(demo_pool), num_demo)
    bos = [tok.bos_id] if tok.bos_id is not None else []
    demo = np.full((len(problems), group_size), -1, np.int32)
    demo[:, :num_demo] = picks
    prefix = [bos + tok.encode(tasks.format_example(demo_pool[i].question,
                                                    demo_pool[i].solution)) for i in picks]
    prompts = [[pre + own_prompt(tok, prob.question, True) for pre in prefix]
               + [own_prompt(tok, prob.question, False)] * (group_size - num_demo)
               for prob in problems]
    return prompts, demo


RewardFn = Callable[[str, tasks.Problem], float]


def group_prompts(tok, problems: Sequence[tasks.Problem],
                  cfg: LearnerConfig) -> tuple[np.ndarray, np.ndarray]:
    """``[P, G, S]`` own prompts (``S = max_prompt_len``) and masks: slots ``< num_demo``
    without ``bos`` (they continue a demonstration prefix), the bare slots with it."""
    n, g, k = len(problems), cfg.group_size, cfg.num_demo
    prompt = np.zeros((n, g, cfg.max_prompt_len), np.int32)
    pmask = np.zeros((n, g, cfg.max_prompt_len), bool)
    for after_demo, sl in ((True, slice(0, k)), (False, slice(k, g))):
        ids = [own_prompt(tok, p.question, after_demo) for p in problems]
        pt, pm = models.pad_batch(ids, pad_id=tok.pad_id, side="left", length=cfg.max_prompt_len)
        prompt[:, sl], pmask[:, sl] = pt[:, None], pm[:, None]
    return prompt, pmask


def _sampling_config(tok, cfg: LearnerConfig) -> models.SamplingConfig:
    return models.SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)


@functools.partial(jax.jit, static_argnums=0, static_argnames="config")
def _prefix_groups(graphdef: nnx.GraphDef, params, pre: jax.Array, pre_mask: jax.Array,
                   prompt: jax.Array, pmask: jax.Array, key: jax.Array, *,
                   config: models.SamplingConfig) -> models.SampleOutput:
    """``models.sample_prefix_groups`` on ``[P, G, S]`` prompts (group ``j`` = slot ``j``),
    results ``[P, G, ...]``: the prompt axis ``P`` stays the leading one, the one split over
    a mesh (the transposes happen inside this ``jit``, on the sharded arrays)."""
    out = models.sample_prefix_groups(graphdef, params, pre, pre_mask,
                                      jnp.swapaxes(prompt, 0, 1), jnp.swapaxes(pmask, 0, 1),
                                      key, config=config)
    return models.SampleOutput(*(jnp.swapaxes(x, 0, 1) for x in out))


def _sample_demo_groups(graphdef: nnx.GraphDef, params, tok, prompt: np.ndarray,
                        pmask: np.ndarray, picks: Sequence[int],
                        pool: tuple[np.ndarray, np.ndarray], key: jax.Array,
                        cfg: LearnerConfig, mesh: Any = None) -> tuple[np.ndarray, ...]:
    """Slot ``j`` of every prompt is one group of ``models.sample_prefix_groups``: prefix demo
    ``j`` (``j < G_d``, run once) or none (bare). With ``mesh`` the ``P`` prompts are split
    over its devices (each process builds its rows) and the ``G`` prefixes are replicated.
    Returns ``[P, G, T]`` tokens, log-probs and ``[P, G]`` lengths."""
    g, k = cfg.group_size, cfg.num_demo
    pre = np.zeros((g, pool[0].shape[1]), np.int32)
    pre_mask = np.zeros(pre.shape, bool)
    pre[:k], pre_mask[:k] = pool[0][picks], pool[1][picks]
    if mesh is None:
        pre_in, pt_in, pm_in = (jnp.asarray(pre), jnp.asarray(pre_mask)), jnp.asarray(
            prompt), jnp.asarray(pmask)
    else:
        params, pre_in = parallel.on_mesh(params, mesh), parallel.replicate((pre, pre_mask), mesh)
        pt_in, pm_in = parallel.global_rows(lambda r: (prompt[r], pmask[r]), len(prompt), mesh)
    out = _prefix_groups(graphdef, params, *pre_in, pt_in, pm_in, key,
                         config=_sampling_config(tok, cfg))
    return tuple(np.asarray(x) for x in parallel.to_host(tuple(out)))


def _sample_flat(graphdef: nnx.GraphDef, params, tok, prompt: np.ndarray, pmask: np.ndarray,
                 key: jax.Array, cfg: LearnerConfig, mesh: Any) -> tuple[np.ndarray, ...]:
    """All ``P·G`` rows on their own prompt (``G_d = 0``), split over ``mesh``'s devices when
    given (each process builds its rows). Returns what :func:`_sample_demo_groups` does."""
    n, g, t = prompt.shape[0], prompt.shape[1], cfg.max_new_tokens
    pt, pm = prompt.reshape(n * g, -1), pmask.reshape(n * g, -1)
    if mesh is None:
        pt_in, pm_in = jnp.asarray(pt), jnp.asarray(pm)
    else:
        pt_in, pm_in = parallel.global_rows(lambda r: (pt[r], pm[r]), n * g, mesh)
    out = parallel.to_host(models.sample(graphdef, params, pt_in, pm_in, key,
                                         config=_sampling_config(tok, cfg)))
    return (np.asarray(out.tokens).reshape(n, g, t), np.asarray(out.logprobs).reshape(n, g, t),
            np.asarray(out.lengths).reshape(n, g))


def _score(tok, problems: Sequence[tasks.Problem], toks: np.ndarray, lens: np.ndarray,
           reward_fn: RewardFn) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Decoded texts (``P·G``, row-major), ``[P, G, T]`` completion mask (up to the scored
    length), ``[P, G]`` rewards and step correctness."""
    n, g, t = toks.shape
    flat_t, flat_l = toks.reshape(n * g, t), lens.reshape(-1)
    texts = [tasks.decode_completion(tok, flat_t[i], int(flat_l[i])) for i in range(n * g)]
    kept = np.array([tasks.scored_length(tok, flat_t[i], int(flat_l[i])) for i in range(n * g)])
    cmask = (np.arange(t)[None] < kept[:, None]).reshape(n, g, t)
    probs = [problems[i // g] for i in range(n * g)]
    reward = np.array([reward_fn(x, p) for x, p in zip(texts, probs, strict=True)], np.float32)
    step_correct = tasks.score_traces(texts, probs).step_correctness
    return texts, cmask, reward.reshape(n, g), step_correct.reshape(n, g)


def sample_rollouts(graphdef: nnx.GraphDef, params, tok, problems: Sequence[tasks.Problem],
                    demo_pool: Sequence[tasks.Problem], key: jax.Array, cfg: LearnerConfig,
                    rng: random.Random, reward_fn: RewardFn = tasks.answer_reward,
                    pool: tuple[np.ndarray, np.ndarray] | None = None,
                    mesh: Any = None) -> tuple[Rollouts, list[str]]:
    """Samples one group per problem, decodes and scores the completions (malformed text gets
    reward 0).

    One ``models.sample_prefix_groups`` loop over ``G`` groups of ``P`` rows: slot ``k < G_d``
    continues demonstration ``k`` (run once, its keys/values shared by the ``P`` rows), the
    bare slots have an empty prefix; every row's own cache holds only its prompt and
    completion. ``G_d = 0``: ``models.sample``.
    ``pool``: ``encode_demo_pool(tok, demo_pool)`` (computed here when omitted).
    With ``mesh`` the rows are split over its devices, each process building only its rows
    (``recrl.parallel.global_rows``): ``G_d = 0``, the ``P·G`` prompts; ``G_d > 0``, the
    ``P`` prompts of every group, the ``G`` prefixes replicated. Row keys depend on the global
    row index only, so the samples are those of one device for any mesh (``P`` must be a
    multiple of the mesh's devices).

    Returns:
      ``Rollouts`` and the ``P·G`` decoded (scored) texts, row-major.
    """
    n, g, k = len(problems), cfg.group_size, cfg.num_demo
    picks = draw_demos(rng, len(demo_pool), k)
    demo = np.full((n, g), -1, np.int32)
    demo[:, :k] = picks
    prompt, pmask = group_prompts(tok, problems, cfg)
    if k > 0:
        if pool is None:
            pool = encode_demo_pool(tok, demo_pool)
        toks, logp, lens = _sample_demo_groups(graphdef, params, tok, prompt, pmask, picks,
                                               pool, key, cfg, mesh)
    else:
        toks, logp, lens = _sample_flat(graphdef, params, tok, prompt, pmask, key, cfg, mesh)
    texts, cmask, reward, step_correct = _score(tok, problems, toks, lens, reward_fn)
    batch = Rollouts(prompt, pmask, toks, cmask, np.where(cmask, logp, 0.0), reward,
                     step_correct, demo, np.ones(n, bool), np.ones((n, g), np.float32))
    return batch, texts


def demo_prefixes(pool: tuple[np.ndarray, np.ndarray], demo: np.ndarray,
                  num_demo: int) -> DemoPrefixes | None:
    """The distinct demonstrations of a (possibly dynamically re-sampled) batch as prefixes.

    ``U`` (the number of distinct demos) is rounded up to a multiple of ``num_demo`` so the
    update compiles for at most ``max_sampling_rounds`` shapes; None when ``num_demo = 0``.
    """
    if num_demo == 0:
        return None
    slots = np.asarray(demo)[:, :num_demo]
    uniq = np.unique(slots)
    size = -(-len(uniq) // num_demo) * num_demo
    padded = np.concatenate([uniq, np.full(size - len(uniq), uniq[0])])
    return DemoPrefixes(pool[0][padded], pool[1][padded],
                        np.searchsorted(uniq, slots).astype(np.int32))


class SamplingStats(NamedTuple):
    """Dynamic-sampling bookkeeping: draws made, informative groups kept, groups dropped,
    invalid fillers used to reach the batch size."""

    rounds: int
    kept: int
    dropped: int
    filled: int


def collect_groups(draw: Callable[[], Rollouts], num_groups: int, *, dynamic: bool,
                   max_rounds: int) -> tuple[Rollouts, SamplingStats]:
    """Draws batches until ``num_groups`` groups with non-constant rewards are kept (DAPO).

    Without ``dynamic`` one draw is returned as is. Otherwise groups whose rewards are all
    equal are dropped; after ``max_rounds`` draws the batch is filled with dropped groups
    marked ``valid = False`` (they carry zero advantage and zero loss weight).
    """
    first = draw()
    if not dynamic:
        return first, SamplingStats(1, len(first.reward), 0, 0)
    kept, dropped, rounds, batch = [], [], 0, first
    while True:
        rounds += 1
        r = np.asarray(batch.reward)
        informative = r.max(axis=1) > r.min(axis=1)
        kept.append(select_groups(batch, np.flatnonzero(informative)))
        dropped.append(select_groups(batch, np.flatnonzero(~informative)))
        n_kept = sum(len(k.reward) for k in kept)
        if n_kept >= num_groups or rounds >= max_rounds:
            break
        batch = draw()
    good = concat_rollouts(kept)
    bad = concat_rollouts(dropped)
    n_fill = max(num_groups - len(good.reward), 0)
    filler = select_groups(bad, np.arange(n_fill))
    filler = filler._replace(valid=np.zeros(n_fill, bool))
    out = select_groups(concat_rollouts([good, filler]), np.arange(num_groups))
    return out, SamplingStats(rounds, min(len(good.reward), num_groups), len(bad.reward), n_fill)
