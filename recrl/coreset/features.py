"""Selection features of GORACS and its baselines for a LoRA-equipped LM
(the inputs of the selectors in :mod:`recrl.coreset.selectors`).

``enc`` maps split names (``train`` = the pool, ``val``) to encoded ``(tokens, mask,
loss_mask)`` rows (:func:`recrl.coreset.lmrec.encode_pairs`). Shape letters: N pool rows,
M validation rows, D model width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from recrl import models
from recrl.coreset import baselines, lmrec, surrogate


def _embeddings(model, enc, batch_size: int, mesh=None) -> dict[str, np.ndarray]:
    return {"pool_emb": lmrec.embeddings(model, *enc["train"][:2], batch_size=batch_size,
                                         mesh=mesh),
            "val_emb": lmrec.embeddings(model, *enc["val"][:2], batch_size=batch_size,
                                        mesh=mesh)}


def selection_features(model, enc, *, batch_size: int, chunk: int,
                       influence_damping: float | None = None,
                       labels: tuple[np.ndarray, np.ndarray] | None = None, mesh=None
                       ) -> dict[str, np.ndarray]:
    """The default protocol's features, from the model as it is (one pass each).

    ``grad [N]`` (ĝ: gradient norm of the last block's ``v_proj.lora_b``, also GraNd's
    score ``grand``), ``el2n [N]`` (the proxy ``1 − exp(−mean answer NLL)``),
    ``pool_emb [N, D]``, ``val_emb [M, D]``; with ``influence_damping`` DEALRec's
    ``influence [N]`` from the same per-sample gradients; with ``labels = (pool, val)``
    the click task's ``pool_labels`` / ``val_labels``. With ``mesh`` the per-sample
    gradients, log-likelihoods and embeddings run data-parallel
    (:func:`recrl.parallel.map_rows`).
    """
    tr = enc["train"]
    feats: dict[str, np.ndarray] = {}
    if influence_damping is not None:
        vec = lmrec.grad_vectors(model, *tr, batch_size=batch_size, chunk=chunk, mesh=mesh)
        grad = np.linalg.norm(vec, axis=1).astype(np.float32)
        feats["influence"] = baselines.influence_scores(vec, damping=influence_damping)
        del vec
    else:
        grad = lmrec.grad_norms(model, *tr, batch_size=batch_size, chunk=chunk, mesh=mesh)
    nll = -lmrec.answer_loglik(model, *tr, mesh=mesh) / np.maximum(tr[2][:, 1:].sum(1), 1)
    feats.update({"grad": grad, "grand": grad, "el2n": 1.0 - np.exp(-nll),
                  **_embeddings(model, enc, batch_size, mesh)})
    if labels is not None:  # click task: GORACS's label-enhanced variant
        feats["pool_labels"], feats["val_labels"] = (np.asarray(x) for x in labels)
    return feats


def averaged_el2n(model, train, *, runs: int, steps: int, batch_size: int, lr: float,
                  eval_batch_size: int, mesh=None) -> np.ndarray:
    """EL2N ``[N]`` averaged over ``runs`` copies of ``model`` LoRA-tuned ``steps`` steps on
    the pool (minibatch seeds 100, 101, …; ``runs = 0`` or ``steps = 0``: the model as is);
    tuning and scoring data-parallel over ``mesh`` when given."""
    scores = []
    for r in range(max(runs, 1)):
        m = nnx.clone(model)
        if runs > 0 and steps > 0:
            lmrec.finetune(m, *train, steps=steps, batch_size=batch_size, lr=lr, seed=100 + r,
                           progress=False, mesh=mesh)
        scores.append(lmrec.el2n_scores(m, *train, batch_size=eval_batch_size, mesh=mesh))
    return np.mean(scores, 0)


def averaged_grand(base, train, *, inits: int, lora_rank: int, lora_alpha: float,
                   batch_size: int, chunk: int, mesh=None) -> np.ndarray:
    """GraNd ``[N]``: the full-LoRA gradient norm averaged over ``inits`` LoRA
    initialisations (seeds 1000, 1001, …) of the LM ``base`` (without LoRA); rows split
    over ``mesh`` when given."""
    norms = []
    for k in range(inits):
        m = nnx.clone(base)
        models.add_lora(m, rank=lora_rank, alpha=lora_alpha, targets=("q_proj", "v_proj"),
                        rngs=nnx.Rngs(1000 + k))
        norms.append(lmrec.lora_grad_norms(m, *train, batch_size=batch_size, chunk=chunk,
                                           mesh=mesh))
    return np.mean(norms, 0)


def surrogate_influence(samples, num_items: int, *, dim: int, steps: int,
                        damping: float) -> np.ndarray:
    """DEALRec's influence ``[N]`` from a surrogate recommender trained on the pool windows
    ``samples`` (:class:`recrl.data.lmrec.WindowSamples`)."""
    hmask = np.arange(samples.history.shape[1])[None] < samples.history_len[:, None]
    sur = surrogate.train_surrogate(samples.history, hmask, samples.target, num_items,
                                    dim=dim, steps=steps)
    return surrogate.surrogate_influence(sur, samples.history, hmask, samples.target,
                                         damping=damping)


def decisive_features(cfg, model, base, enc, data, cache: Path | None = None, mesh=None
                      ) -> dict[str, np.ndarray]:
    """The decisive protocol's features: GORACS's (ĝ, embeddings) and the baselines'
    scores: EL2N averaged over ``el2n.runs`` briefly fine-tuned models, GraNd averaged over
    ``grand.inits`` LoRA initialisations, DEALRec's surrogate influence.

    With ``cache`` (an ``.npz`` path) they are loaded from it when it exists, else computed
    and written there (through a temporary file). With ``mesh`` the LM's gradients,
    embeddings, fine-tunes and scores run data-parallel (every process must call this; the
    launcher passes no ``cache`` then and lets process 0 write it); the small surrogate
    recommender trains on each process's default device."""
    if cache is not None and cache.exists():
        return dict(np.load(cache))
    feat_cfg, tr = cfg.features, enc["train"]
    feats = {"grad": lmrec.grad_norms(model, *tr, batch_size=feat_cfg.batch_size,
                                      chunk=feat_cfg.chunk, mesh=mesh),
             **_embeddings(model, enc, feat_cfg.batch_size, mesh)}
    feats["el2n"] = averaged_el2n(model, tr, runs=cfg.el2n.runs, steps=cfg.el2n.steps,
                                  batch_size=cfg.finetune.batch_size, lr=cfg.finetune.lr,
                                  eval_batch_size=feat_cfg.batch_size, mesh=mesh)
    feats["grand"] = averaged_grand(base, tr, inits=cfg.grand.inits,
                                    lora_rank=cfg.model.lora_rank,
                                    lora_alpha=cfg.model.lora_alpha,
                                    batch_size=feat_cfg.batch_size, chunk=feat_cfg.chunk,
                                    mesh=mesh)
    dealrec_cfg = cfg.dealrec
    feats["influence"] = surrogate_influence(data.splits["train"], len(data.titles),
                                             dim=dealrec_cfg.surrogate_dim,
                                             steps=dealrec_cfg.surrogate_steps,
                                             damping=dealrec_cfg.damping)
    if cache is not None:
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez(tmp, **feats)
        tmp.replace(cache)
    return feats
