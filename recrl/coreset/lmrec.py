r"""The LM recommender of GORACS: sample encoding, selection features, LoRA fine-tuning,
ranking / click evaluation.

* gradient feature :math:`g_i = \|\nabla_\phi \ell(z_i;\phi_0)\|` over a parameter subset
  (default: the last block's ``v_proj.lora_b``), ``ℓ`` = mean NLL of the answer tokens;
* embedding :math:`h_i` = mean over real tokens of the final hidden state (pre-head);
* ranking: score of a candidate title = :math:`\sum_t \log\pi(y_t\mid x, y_{<t})`;
  HR@K = 1[rank < K], NDCG@K = 1[rank < K] / log2(rank + 2), rank = number of negatives
  scoring at least the target (ties count against the target);
* full catalogue: every title scored as a continuation of the prompt's cached keys/values
  (one prompt pass, then all titles in one batch); the user's earlier items are excluded,
  rank = number of remaining items scoring at least the target;
* click: :math:`p = \sigma(\log\pi(\text{Yes}) - \log\pi(\text{No}))`, AUC (Mann–Whitney,
  ties ½) and log-loss.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from recrl import models, parallel
from recrl.checkpoint import Checkpointer
from recrl.models.finetune import restore_point, sft_loop


def encode_pairs(encode: Callable[[str], list[int]], prompts: Sequence[str],
                 answers: Sequence[str], *, max_prompt: int = 256, max_answer: int = 32
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenises prompt + answer, right-padded: ``(tokens int32, mask, loss_mask) [B, L]``.

    The prompt keeps its last ``max_prompt`` tokens, the answer its first ``max_answer``;
    ``loss_mask`` marks the answer tokens.
    """
    seqs, lens = [], []
    for p, a in zip(prompts, answers, strict=True):
        pt, at = encode(p)[-max_prompt:], encode(a)[:max_answer]
        seqs.append(pt + at)
        lens.append((len(pt), len(at)))
    width = max(len(s) for s in seqs)
    tokens = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), bool)
    loss = np.zeros((len(seqs), width), bool)
    for i, (s, (lp, la)) in enumerate(zip(seqs, lens, strict=True)):
        tokens[i, :len(s)] = s
        mask[i, :len(s)] = True
        loss[i, lp:lp + la] = True
    return tokens, mask, loss


def _wrap(it, desc: str, progress: bool):
    return tqdm(it, desc=desc, leave=False) if progress else it


def _grad_split(model: models.Llama, layer: int, target: str):
    layer = layer % model.config.n_layers
    subset = nnx.All(models.LoRAParam, nnx.PathContains(target), nnx.PathContains("lora_b"),
                     nnx.PathContains(layer))
    graphdef, wrt, rest = nnx.split(model, subset, ...)
    if not jax.tree.leaves(wrt):
        raise ValueError(f"no LoRA lora_b on block {layer} {target}: call add_lora first")
    return graphdef, wrt, rest


def grad_norms(model: models.Llama, tokens: np.ndarray, mask: np.ndarray,
               loss_mask: np.ndarray, *, layer: int = -1, target: str = "v_proj",
               batch_size: int = 256, chunk: int = 16, progress: bool = True,
               mesh: Mesh | None = None) -> np.ndarray:
    r"""Per-sample :math:`\|\nabla_{B}\,\mathrm{NLL}(z_i)\|` w.r.t. one LoRA ``lora_b``
    (block ``layer``, projection ``target``); ``[N]`` float32. Needs LoRA on that block.
    With ``mesh`` each batch is split over the devices (:func:`recrl.parallel.map_rows`)."""
    graphdef, wrt, rest = _grad_split(model, layer, target)
    return _per_sample_grad_norms(graphdef, wrt, rest, (tokens, mask, loss_mask), batch_size,
                                  chunk, mesh, "grad norms", progress)


def _per_sample_grad_norms(graphdef, wrt, rest, rows: tuple, batch_size: int, chunk: int,
                           mesh: Mesh | None, desc: str, progress: bool) -> np.ndarray:
    """``[N]`` float32 per-sample NLL gradient norms w.r.t. ``wrt`` over ``rows`` (tokens,
    mask, loss mask), batch by batch (split over ``mesh`` when given)."""
    def fn(params, t, m, lm):
        return models.nll_per_sample_grads(graphdef, params[0], params[1], t, m, lm,
                                           chunk_size=chunk, norms_only=True)

    return parallel.map_rows(fn, (wrt, rest), rows, batch_size, mesh,
                             wrap=lambda it: _wrap(it, desc, progress)).astype(np.float32)


def grad_vectors(model: models.Llama, tokens: np.ndarray, mask: np.ndarray,
                 loss_mask: np.ndarray, *, layer: int = -1, target: str = "v_proj",
                 batch_size: int = 256, chunk: int = 16, progress: bool = True,
                 mesh: Mesh | None = None) -> np.ndarray:
    r"""Per-sample gradients :math:`\nabla_{B}\,\mathrm{NLL}(z_i)` w.r.t. the same ``lora_b``
    as :func:`grad_norms`, flattened: ``[N, num_params]`` float32 (their row norms are
    :func:`grad_norms`). Used by the influence term of the DEALRec baseline. With ``mesh``
    each batch is split over the devices."""
    graphdef, wrt, rest = _grad_split(model, layer, target)

    def fn(params, t, m, lm):
        return models.flatten_grads(models.nll_per_sample_grads(
            graphdef, params[0], params[1], t, m, lm, chunk_size=chunk))

    return parallel.map_rows(fn, (wrt, rest), (tokens, mask, loss_mask), batch_size, mesh,
                             wrap=lambda it: _wrap(it, "grad vectors", progress)
                             ).astype(np.float32)


@jax.jit
def _mean_hidden(graphdef, state, tokens, mask):
    model = nnx.merge(graphdef, state)
    hidden, _ = model(tokens, models.positions_from_mask(mask), mask=mask)
    w = mask.astype(jnp.float32)[..., None]
    return (hidden.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


def embeddings(model: models.Llama, tokens: np.ndarray, mask: np.ndarray, *,
               batch_size: int = 256, progress: bool = True,
               mesh: Mesh | None = None) -> np.ndarray:
    r""":math:`h_i = \frac1{|x_i|}\sum_{t} H_t(x_i)` (final-block hidden states, mean over
    real tokens); ``[N, D]`` float32. With ``mesh`` each batch is split over the devices."""
    graphdef, state = nnx.split(model)
    return parallel.map_rows(lambda st, t, m: _mean_hidden(graphdef, st, t, m), state,
                             (tokens, mask), batch_size, mesh,
                             wrap=lambda it: _wrap(it, "embeddings", progress))


def _nll_loss(graphdef, targets: int):
    """``loss(params, rest, tokens, mask, loss_mask)``: mean answer NLL of a minibatch."""
    def loss(params, rest, tok, m, lm):
        return models.sequence_nll(graphdef, (params, rest), tok, m, lm, targets).mean()
    return loss


def finetune(model: models.Llama, tokens: np.ndarray, mask: np.ndarray,
             loss_mask: np.ndarray, *, steps: int, batch_size: int = 16, lr: float = 1e-3,
             seed: int = 0, lora_only: bool = True, progress: bool = True,
             desc: str = "fine-tune", mesh: Mesh | None = None,
             checkpoint_dir: str | os.PathLike | None = None,
             checkpoint_every: int | None = None) -> list[float]:
    """AdamW on the mean answer NLL of minibatches drawn from the given samples (in place;
    the loop is :func:`recrl.models.finetune.sft_loop`).

    Trains the LoRA parameters (``lora_only``) or every parameter (pretraining). Returns
    the per-step losses. With ``mesh`` the step is data-parallel: parameters replicated,
    each minibatch (a function of ``seed`` and the step) split over the mesh, each process
    building only its rows; the minibatch must divide over the devices.

    With ``checkpoint_dir`` the trained parameters, optimiser state and losses are saved
    there (``recrl.checkpoint``) every ``checkpoint_every`` steps (default: a tenth of
    ``steps``); a rerun with the same arguments continues from the last save and ends as
    an uninterrupted run (same parameters and losses).
    """
    wrt = models.LoRAParam if lora_only else nnx.Param
    graphdef, train, rest = nnx.split(model, wrt, ...)
    ckpt = None if checkpoint_dir is None else Checkpointer(checkpoint_dir, max_to_keep=1)
    opt_state, losses = None, []
    if (point := restore_point(ckpt, train, lr)) is not None:
        train, opt_state, losses = point[0]["params"], point[0]["opt_state"], point[1]["losses"]
    every = checkpoint_every or max(1, -(-steps // 10))

    def on_step(done: int, params, opt) -> bool:
        if ckpt is not None and done % every == 0 and done < steps:
            ckpt.save(done, {"params": params, "opt_state": opt}, meta={"losses": losses})
        return False

    train, losses = sft_loop(
        _nll_loss(graphdef, _max_targets(loss_mask)), train, rest, (tokens, mask, loss_mask),
        steps=steps, batch_size=min(batch_size, tokens.shape[0]), lr=lr, seed=seed,
        mesh=mesh, batch_name="fine-tune batch", progress=progress, desc=desc,
        opt_state=opt_state, start_step=len(losses), on_step=on_step, losses=losses)
    if ckpt is not None:
        ckpt.close()
    nnx.update(model, train if mesh is None else jax.tree.map(jnp.asarray, jax.device_get(train)))
    return losses


def _max_targets(loss_mask: np.ndarray) -> int:
    """Largest number of scored (answer) tokens in a row, rounded up to a multiple of 8 so
    that batches of similar answers share one compiled program."""
    most = int(np.asarray(loss_mask)[:, 1:].sum(1).max(initial=0))
    return max(8, -(-most // 8) * 8)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _answer_loglik(graphdef, state, tokens, mask, loss_mask, max_targets):
    nll = models.sequence_nll(graphdef, state, tokens, mask, loss_mask, max_targets)
    return -nll * jnp.maximum(loss_mask[:, 1:].sum(-1), 1)


def answer_loglik(model: models.Llama, tokens: np.ndarray, mask: np.ndarray,
                  loss_mask: np.ndarray, *, batch_size: int = 256,
                  mesh: Mesh | None = None) -> np.ndarray:
    r""":math:`\sum_{t\in\text{answer}}\log\pi(y_t\mid\cdot)` per row, ``[N]``. With
    ``mesh`` each batch is split over the devices."""
    graphdef, state = nnx.split(model)
    return parallel.map_rows(_loglik_rows(graphdef, _max_targets(loss_mask)), state,
                             (tokens, mask, loss_mask), batch_size, mesh)


@functools.lru_cache(maxsize=16)
def _loglik_rows(graphdef, max_targets: int):
    """The row function of :func:`answer_loglik`, one object per (model structure, answer
    length), so that repeated calls (validation during a fine-tune) reuse the compiled
    step of :func:`recrl.parallel.map_rows`."""
    return lambda st, t, m, lm: _answer_loglik(graphdef, st, t, m, lm, max_targets)


@functools.partial(jax.jit, static_argnums=0)
def _catalogue_scores(graphdef, state, prompt, prompt_mask, titles, title_mask):
    prefix = models.prefix_cache(graphdef, state, prompt, prompt_mask)
    return models.logprobs_from_prefix(graphdef, state, prefix, titles, title_mask).sum(-1)


def catalogue_scores(model: models.Llama, encode: Callable[[str], list[int]],
                     prompts: Sequence[str], titles: Sequence[str],
                     candidates: np.ndarray | None = None, *, max_prompt: int = 256,
                     max_answer: int = 32, progress: bool = True,
                     mesh: Mesh | None = None) -> np.ndarray:
    r"""Answer log-likelihood of titles after each prompt: ``[N, num_titles]`` (every title),
    or ``[N, C]`` for the title ids ``candidates [N, C]`` of each prompt.

    Each prompt (its last ``max_prompt`` tokens) is run once and its keys/values are shared
    by its titles (first ``max_answer`` tokens each), which are scored in one batch; the
    values equal :func:`answer_loglik` of the (prompt, title) pairs. With ``mesh`` the
    prompts are split over the devices, one prompt per device at a time
    (:func:`recrl.parallel.map_rows`).
    """
    ids = [encode(t)[:max_answer] for t in titles]
    if not ids or min(map(len, ids)) == 0:
        raise ValueError("every catalogue title must encode to at least one token")
    tt, tm = models.pad_batch(ids, side="right")
    ps = [encode(p)[-max_prompt:] for p in prompts]
    pt, pm = models.pad_batch(ps, side="right")
    if candidates is not None:
        candidates = np.asarray(candidates)
        if candidates.ndim != 2 or candidates.shape[0] != len(ps):
            raise ValueError(f"candidates must be [{len(ps)}, C]; got {candidates.shape}")
    graphdef, state = nnx.split(model)
    if mesh is not None and mesh.size > 1:
        return _catalogue_scores_on_mesh(graphdef, state, (pt, pm), (tt, tm), candidates,
                                         mesh, progress)
    out = np.zeros((len(ps), len(ids) if candidates is None else candidates.shape[1]),
                   np.float32)
    it = tqdm(range(len(ps)), desc="catalogue", leave=False) if progress else range(len(ps))
    for i in it:
        rows = slice(None) if candidates is None else candidates[i]
        out[i] = np.asarray(_catalogue_scores(graphdef, state, jnp.asarray(pt[i]),
                                              jnp.asarray(pm[i]), jnp.asarray(tt[rows]),
                                              jnp.asarray(tm[rows])))
    return out


def _catalogue_scores_on_mesh(graphdef, state, prompts: tuple, titles: tuple,
                              candidates: np.ndarray | None, mesh: Mesh,
                              progress: bool) -> np.ndarray:
    """:func:`catalogue_scores` with the prompts split over ``mesh``, one per device per
    step (each device holds one prompt's title batch, as on one device)."""
    tt, tm = titles
    cand = (np.zeros((len(prompts[0]), 0), np.int32) if candidates is None
            else np.asarray(candidates, np.int32))

    def one(st, t_tok, t_mask, p, m, c):
        rows = slice(None) if candidates is None else c
        return _catalogue_scores(graphdef, st, p, m, t_tok[rows], t_mask[rows])

    def fn(consts, p, m, c):
        return jax.vmap(one, in_axes=(None, None, None, 0, 0, 0))(*consts, p, m, c)

    return parallel.map_rows(fn, (state, tt, tm), (*prompts, cand),
                             mesh.shape[parallel.DATA_AXIS], mesh,
                             wrap=lambda it: _wrap(it, "catalogue", progress)
                             ).astype(np.float32)


def catalogue_metrics(scores: np.ndarray, target: np.ndarray, exclude: np.ndarray | None = None,
                      ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    """Full-catalogue HR@K / NDCG@K: ``scores [N, V]``, ``target [N]`` item ids, optional
    ``exclude [N, V]`` (the user's earlier items; never the target). Rank = number of
    non-excluded items other than the target scoring at least the target's score."""
    s = np.asarray(scores, np.float64)
    t = np.asarray(target)
    if s.ndim != 2 or t.shape != (s.shape[0],):
        raise ValueError(f"scores [N, V] and target [N] expected; got {s.shape}, {t.shape}")
    rows = np.arange(s.shape[0])
    ts = s[rows, t]
    beat = s >= ts[:, None]
    beat[rows, t] = False
    if exclude is not None:
        ex = np.asarray(exclude, bool)
        if ex.shape != s.shape or ex[rows, t].any():
            raise ValueError("exclude must be [N, V] and never mask the target")
        beat &= ~ex
    return rank_metrics(beat.sum(1), ks)


def target_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of column 0 (the target) among each row's candidates ``[N, C]``: the number of
    other candidates scoring at least as high (0 = first; ties count against the target)."""
    s = np.asarray(scores)
    return (s[:, 1:] >= s[:, :1]).sum(1)


def rank_metrics(rank: np.ndarray, ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    """HR@K = mean 1[rank < K] and NDCG@K = mean 1[rank < K] / log2(rank + 2)."""
    rank = np.asarray(rank)
    out = {}
    for k in ks:
        hit = rank < k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float((hit / np.log2(rank + 2.0)).mean())
    return out


def ranking_metrics(scores: np.ndarray, ks: Sequence[int] = (5, 10)) -> dict[str, float]:
    """HR@K and NDCG@K of column 0 (the target) among the row's candidates (``[N, C]``)."""
    return rank_metrics(target_ranks(scores), ks)


def click_metrics(logit_yes: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC (Mann–Whitney, ties ½; NaN with one class) and log-loss of σ(logit)."""
    z, y = np.asarray(logit_yes, np.float64), np.asarray(labels).astype(bool)
    pos, neg = z[y], z[~y]
    if pos.size and neg.size:
        auc = float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum())
                    / (pos.size * neg.size))
    else:
        auc = float("nan")
    logloss = float(np.mean(np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (~y)))
    return {"AUC": auc, "logloss": logloss}


@functools.partial(jax.jit, static_argnums=0)
def _el2n(graphdef, state, tokens, mask, loss_mask):
    model = nnx.merge(graphdef, state)
    hidden, _ = model(tokens, models.positions_from_mask(mask), mask=mask)
    p = jax.nn.softmax(model.logits(hidden[:, :-1]).astype(jnp.float32), -1)
    py = jnp.take_along_axis(p, tokens[:, 1:, None], -1)[..., 0]
    err = jnp.sqrt(jnp.maximum((p * p).sum(-1) - 2.0 * py + 1.0, 0.0))  # ||p − e_y||₂
    w = (loss_mask[:, 1:] & mask[:, 1:]).astype(jnp.float32)
    return (err * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


def el2n_scores(model: models.Llama, tokens: np.ndarray, mask: np.ndarray,
                loss_mask: np.ndarray, *, batch_size: int = 64,
                mesh: Mesh | None = None) -> np.ndarray:
    r"""EL2N (Paul et al. 2021) of each sample: the error L2 norm
    :math:`\|\mathrm{softmax}(z_t) - e_{y_t}\|_2` of every answer token, averaged over the
    answer (``[N]`` float32). Needs contiguous prompt + answer rows (:func:`encode_pairs`).
    The paper averages it over a few briefly trained models (the launcher does). With
    ``mesh`` each batch is split over the devices."""
    graphdef, state = nnx.split(model)
    return parallel.map_rows(lambda st, t, m, lm: _el2n(graphdef, st, t, m, lm), state,
                             (tokens, mask, np.asarray(loss_mask, bool)), batch_size, mesh)


def lora_grad_norms(model: models.Llama, tokens: np.ndarray, mask: np.ndarray,
                    loss_mask: np.ndarray, *, batch_size: int = 256, chunk: int = 16,
                    progress: bool = True, mesh: Mesh | None = None) -> np.ndarray:
    r"""Per-sample :math:`\|\nabla_{\phi}\,\mathrm{NLL}(z_i)\|` over *every* LoRA parameter
    (all blocks and targets, A and B), ``[N]`` float32 (GraNd's score for a LoRA model;
    GORACS's ĝ uses one ``lora_b`` only). With ``mesh`` each batch is split over the
    devices."""
    graphdef, wrt, rest = nnx.split(model, models.LoRAParam, ...)
    if not jax.tree.leaves(wrt):
        raise ValueError("the model has no LoRA parameters: call add_lora first")
    return _per_sample_grad_norms(graphdef, wrt, rest, (tokens, mask, loss_mask), batch_size,
                                  chunk, mesh, "LoRA grad norms", progress)


def mean_answer_nll(model: models.Llama, tokens: np.ndarray, mask: np.ndarray,
                    loss_mask: np.ndarray, *, batch_size: int = 256,
                    mesh: Mesh | None = None) -> np.ndarray:
    """Per-sample mean NLL of the answer tokens (the fine-tuning loss), ``[N]`` float32;
    with ``mesh`` each batch is split over the devices (every process gets every row)."""
    ll = answer_loglik(model, tokens, mask, loss_mask, batch_size=batch_size, mesh=mesh)
    return (-ll / np.maximum(np.asarray(loss_mask)[:, 1:].sum(1), 1)).astype(np.float32)


def finetune_early_stopping(model: models.Llama, train: tuple, val: tuple, *,
                            max_steps: int, eval_every: int, patience: int,
                            batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
                            eval_batch_size: int = 256,
                            checkpoint_dir: str | os.PathLike | None = None,
                            mesh: Mesh | None = None) -> dict:
    """LoRA AdamW on ``train = (tokens, mask, loss_mask)`` for at most ``max_steps`` steps,
    with the mean validation loss (:func:`mean_answer_nll` over ``val``) measured at step 0
    and every ``eval_every`` steps (and after the last); stops after ``patience``
    evaluations without a new best and leaves the model at its best validation point
    (step 0 = the untouched adapters). The loop is :func:`recrl.models.finetune.sft_loop`.

    With ``checkpoint_dir`` the fine-tune is saved there (``recrl.checkpoint``) at every
    evaluation: adapters, optimiser state, best adapters and the curve; a rerun with the
    same arguments continues from the last evaluation and ends as an uninterrupted run.

    With ``mesh`` the steps are data-parallel (:func:`finetune`; every process of a
    multi-process run calls this, and takes part in the checkpoint saves) and the
    validation loss is computed with the rows split over the mesh; every process gets
    every row's loss, so all take the same early-stopping decisions.

    Returns ``{"best_step", "steps_run", "val_curve": [[step, loss], ...]}``.
    """
    if max_steps < 0 or eval_every < 1 or patience < 1:
        raise ValueError(f"need max_steps >= 0, eval_every >= 1, patience >= 1; got "
                         f"{max_steps}, {eval_every}, {patience}")
    graphdef, params, rest = nnx.split(model, models.LoRAParam, ...)

    def val_loss(p) -> float:
        nnx.update(model, p)
        return float(mean_answer_nll(model, *val, batch_size=eval_batch_size,
                                     mesh=mesh).mean())

    ckpt = None if checkpoint_dir is None else Checkpointer(checkpoint_dir, max_to_keep=1)
    state, best = _early_stopping_start(ckpt, params, lr, val_loss)
    if mesh is not None:  # saved with the step's (replicated) arrays: Orbax refuses, with
        # several processes, the host-local ones of the model or of a restored checkpoint
        state["best"] = parallel.on_mesh(state["best"], mesh)

    on_step = _evaluation_hook(state, best, val_loss, ckpt, eval_every=eval_every,
                               max_steps=max_steps, patience=patience)
    if best["since"] < patience:
        sft_loop(_nll_loss(graphdef, _max_targets(train[2])), state["params"], rest,
                 tuple(train), steps=max_steps,
                 batch_size=min(batch_size, train[0].shape[0]), lr=lr, seed=seed,
                 opt_state=state["opt_state"], start_step=best["done"], on_step=on_step,
                 mesh=mesh)
    if ckpt is not None:
        ckpt.close()
    nnx.update(model, state["best"] if mesh is None
               else jax.tree.map(jnp.asarray, jax.device_get(state["best"])))
    return {"best_step": best["step"], "steps_run": best["done"], "val_curve": best["curve"]}


def _evaluation_hook(state: dict, best: dict, val_loss, ckpt, *, eval_every: int,
                     max_steps: int, patience: int):
    """``sft_loop``'s ``on_step`` for ``finetune_early_stopping``: at every ``eval_every``-th
    step (and the last) it measures the validation loss, keeps the best adapters in
    ``state["best"]``, updates ``best`` (curve, best loss and step, evaluations since the
    best), saves to ``ckpt`` and says stop after ``patience`` evaluations without a new
    best."""
    def on_step(done: int, p, opt_state) -> bool:
        best["done"] = done
        if done % eval_every and done != max_steps:
            return False
        v = val_loss(p)
        best["curve"].append([done, v])
        if v < best["loss"]:
            best.update(loss=v, step=done, since=0)
            state["best"] = p
        else:
            best["since"] += 1
        if ckpt is not None:
            ckpt.save(done, {"params": p, "opt_state": opt_state, "best": state["best"]},
                      meta=best)
        return best["since"] >= patience

    return on_step


def _early_stopping_start(ckpt, params, lr: float, val_loss) -> tuple[dict, dict]:
    """``(arrays, bookkeeping)`` to start from: the last saved evaluation of ``ckpt``, or
    step 0 (the validation loss of the untouched adapters)."""
    point = restore_point(ckpt, params, lr, best=params)
    if point is not None:
        return point
    first = val_loss(params)
    return ({"params": params, "opt_state": None, "best": params},
            {"loss": first, "step": 0, "since": 0, "curve": [[0, first]], "done": 0})
