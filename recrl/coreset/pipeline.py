"""GORACS's experiment stages: data, LM, pretraining on titles, selection features,
coresets, evaluation (``experiments/goracs.py`` calls them; configs in
``experiments/configs/goracs.py``).

Shape letters: N pool windows (selection candidates), M validation windows, D model width.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np
from flax import nnx

from recrl import models
from recrl.checkpoint import Checkpointer
from recrl.coreset import lmrec, selectors
from recrl.data import (
    LMRecConfig,
    click_dataset,
    fetch,
    load_movielens,
    next_item_dataset,
    prepare_lmrec,
    ranking_candidates,
    seen_before_mask,
    synthetic_movielens,
)
from recrl.data.lmrec import take
from recrl.models.tokenizers_small import ByteTokenizer, CompactTokenizer

TASK_METRICS = {"next_item": ("HR@5", "HR@10", "NDCG@5", "NDCG@10"),
                "click": ("AUC", "logloss")}
TASKS = tuple(TASK_METRICS)
PRIMARY = {"next_item": "HR@10", "click": "AUC"}  # printed per run and plotted vs budget
#: the paper's λ per task (next item: n = 1024, λ = 0.1; click: n = 64, λ = 0.5)
PAPER_LAMBDA = {"next_item": 0.1, "click": 0.5}
MODEL_KINDS = ("smollm2", "tiny", "tiny_bpe")
TITLE_PROMPT = "Movie: "  # pretraining text of the CPU models: "Movie: <title>"
LORA_TARGETS = ("q_proj", "v_proj")


def task_of(cfg) -> str:
    """The config's task (``next_item`` when unset); a clear error for an unknown one."""
    task = cfg.get("task", "next_item")
    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return task


def lam_of(cfg) -> float:
    """``select.lam``, or the paper's value for the task when it is None."""
    lam = cfg.select.get("lam")
    return PAPER_LAMBDA[task_of(cfg)] if lam is None else float(lam)


def _movielens(cfg, users: int = 40):
    if cfg.dataset == "synthetic":
        return synthetic_movielens(users, 60, min_len=8, max_len=20, seed=cfg.data.seed)
    return load_movielens(cfg.dataset)


def _texts(data, splits, click: bool) -> dict[str, dict[str, list]]:
    if click:
        return {k: click_dataset(data, k).select_columns(["prompt", "answer", "label"])
                .to_dict() for k in splits}
    return {k: next_item_dataset(data, k).select_columns(["prompt", "answer"]).to_dict()
            for k in splits}


def load_data(cfg) -> tuple[Any, dict[str, Any], np.ndarray, Any]:
    """LM-rec data with subsampled pool / val / test, the test ranking candidates, and
    ``(targets, exclude)`` of the first ``eval.full_catalogue`` test samples for
    full-catalogue ranking (None when off).

    For the click task the texts also carry ``label`` (1 = rating > 3)."""
    data_cfg = cfg.data
    task = task_of(cfg)
    data = prepare_lmrec(_movielens(cfg), LMRecConfig(
        max_history=data_cfg.max_history, num_val=data_cfg.num_val,
        num_test=data_cfg.num_test))
    rng = np.random.default_rng(data_cfg.seed)
    cand_all = ranking_candidates(data, "test", num_negatives=data_cfg.num_negatives,
                                  seed=data_cfg.seed)
    sizes = {"train": data_cfg.pool_size, "val": data_cfg.val_size,
             "test": data_cfg.test_size}
    splits, picks = {}, {}
    for name, size in sizes.items():
        s = data.splits[name]
        num = s.target.shape[0]
        idx = np.sort(rng.choice(num, min(size, num), replace=False))
        splits[name], picks[name] = take(s, idx), idx
    data = dataclasses.replace(data, splits=splits)
    texts = _texts(data, splits, task == "click")
    full = None
    if task == "next_item" and cfg.get("eval", {}).get("full_catalogue", 0) > 0:
        k = min(cfg.eval.full_catalogue, splits["test"].target.shape[0])
        full = (splits["test"].target[:k], seen_before_mask(data, "test")[:k])
    return data, texts, cand_all[picks["test"]], full


def load_decisive_data(cfg) -> tuple[Any, dict[str, Any], np.ndarray]:
    """Per-user leave-last-out data: a seeded ``pool_size`` sample of the training windows,
    every validation-user window, every test-user window, and the test candidates."""
    from recrl.data import user_holdout_split

    data_cfg = cfg.data
    ml = _movielens(cfg, users=data_cfg.get("synthetic_users", 40))
    data = prepare_lmrec(ml, LMRecConfig(max_history=data_cfg.max_history, num_val=0,
                                         num_test=0))
    splits = user_holdout_split(data.splits["train"], num_val_users=data_cfg.val_users,
                                seed=data_cfg.seed)
    tr = splits["train"]
    rng = np.random.default_rng(data_cfg.seed)
    keep = rng.choice(len(tr.target), min(data_cfg.pool_size, len(tr.target)),
                      replace=False)
    splits["train"] = take(tr, np.sort(keep))
    data = dataclasses.replace(data, splits=splits)
    cand = ranking_candidates(data, "test", num_negatives=data_cfg.num_negatives,
                              seed=data_cfg.seed)
    return data, _texts(data, splits, click=False), cand


def build_model(cfg, corpus: list[str] | None = None):
    """``(model, encode)``: SmolLM2 + its tokenizer; or a ``tiny_config`` Llama with UTF-8
    bytes (``tiny``) or with SmolLM2's BPE restricted to the ids ``corpus`` uses
    (``tiny_bpe``, :class:`~recrl.models.tokenizers_small.CompactTokenizer`)."""
    model_cfg = cfg.model
    if model_cfg.kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {model_cfg.kind!r}; known: "
                         f"{', '.join(MODEL_KINDS)}")
    if model_cfg.kind == "smollm2":
        path = models.smollm2_path()
        return models.load_gguf(path), models.Tokenizer.from_gguf(path).encode
    if model_cfg.kind == "tiny_bpe":
        tok = CompactTokenizer(models.Tokenizer.from_gguf(models.smollm2_path()).encode,
                               corpus or [TITLE_PROMPT])
        encode, vocab = tok.encode, tok.vocab_size
    else:
        encode, vocab = ByteTokenizer().encode, 256
    model = models.create_model(models.tiny_config(
        vocab_size=vocab, dim=model_cfg.dim, n_layers=model_cfg.n_layers,
        n_heads=model_cfg.n_heads, n_kv_heads=model_cfg.n_kv_heads,
        head_dim=model_cfg.dim // model_cfg.n_heads, ffn_dim=model_cfg.ffn_dim), seed=0)
    return model, encode


def hash_texts(texts: list[str]) -> str:
    """A short content hash of a list of strings (keys the pretrained-base cache)."""
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]


def pretrain_on_titles(cfg, model, encode, titles: np.ndarray, cache_key: str = "",
                       mesh=None) -> list[float]:
    """Full-parameter LM training on ``"Movie: " -> title`` (disjoint from the pool).

    With ``pretrain.cache`` the trained weights are kept under
    ``$RECRL_DATA/goracs_base/<hash of config, vocabulary and titles>`` and reused by the
    next run with the same settings (the saved losses come back with them)."""
    pre_cfg = cfg.pretrain
    if pre_cfg.steps <= 0:
        return []
    ckpt = None
    if pre_cfg.get("cache", False):
        key = hashlib.sha256(json.dumps(
            [cfg.model.to_dict(), pre_cfg.to_dict(), cache_key, list(map(str, titles))],
            sort_keys=True).encode()).hexdigest()[:16]
        ckpt = Checkpointer(fetch.cache_root() / "goracs_base" / key, max_to_keep=1)
        if ckpt.latest_step() is not None:
            meta = models.restore_model(ckpt, model)
            ckpt.close()
            print(f"pretrained base restored from {ckpt.directory}", flush=True)
            return list(meta.get("losses", []))
    t = lmrec.encode_pairs(encode, [TITLE_PROMPT] * len(titles), list(titles),
                           max_prompt=8, max_answer=cfg.model.max_answer)
    losses = lmrec.finetune(model, *t, steps=pre_cfg.steps, batch_size=pre_cfg.batch_size,
                            lr=pre_cfg.lr, lora_only=False, progress=True, desc="pretrain",
                            mesh=mesh)
    if ckpt is not None:
        models.save_model(ckpt, pre_cfg.steps, model, meta={"losses": losses[-50:]})
        ckpt.close()
    return losses


def add_lora(cfg, model, seed: int = 0) -> None:
    """The config's LoRA adapters on q/v of every block (in place)."""
    models.add_lora(model, rank=cfg.model.lora_rank, alpha=cfg.model.lora_alpha,
                    targets=LORA_TARGETS, rngs=nnx.Rngs(seed))


@dataclasses.dataclass
class Setup:
    """What every GORACS protocol starts from: data, texts, model, encoder, encoded splits."""

    data: Any
    texts: dict[str, dict[str, list]]
    model: Any  # the LM with LoRA added
    base: Any  # the LM before LoRA (a clone; None unless asked for)
    encode: Any
    enc: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # (tokens, mask, loss_mask)
    pretrain_losses: list[float]


def setup(cfg, data, texts, mesh=None, keep_base: bool = False) -> Setup:
    """Builds the LM on the corpus, pretrains it on the titles (cached), adds LoRA and
    encodes every split's (prompt, answer) pairs; ``keep_base`` keeps a copy of the LM
    before LoRA (GraNd's LoRA initialisations start from it)."""
    corpus = [TITLE_PROMPT, *map(str, data.titles),
              *(t for v in texts.values() for t in (*v["prompt"], *v["answer"]))]
    model, encode = build_model(cfg, corpus)
    pre = pretrain_on_titles(cfg, model, encode, data.titles,
                             cache_key=f"{cfg.dataset}:{len(corpus)}:{hash_texts(corpus)}",
                             mesh=mesh)
    base = nnx.clone(model) if keep_base else None
    add_lora(cfg, model)
    mp, ma = cfg.model.max_prompt, cfg.model.max_answer
    enc = {k: lmrec.encode_pairs(encode, v["prompt"], v["answer"], max_prompt=mp,
                                 max_answer=ma) for k, v in texts.items()}
    return Setup(data, texts, model, base, encode, enc, pre)


def budgets_of(cfg, pool: int) -> list[int]:
    """Sorted distinct budgets: ``budgets`` plus ``round(f · pool)`` for each of
    ``budget_fractions``, each clipped to ``[1, pool]``."""
    got = [int(b) for b in cfg.budgets] + [round(f * pool)
                                           for f in cfg.get("budget_fractions", ())]
    if not got:
        raise ValueError("no budgets: set budgets and / or budget_fractions")
    return sorted({min(max(b, 1), pool) for b in got})


def method_options(cfg, method: selectors.Method) -> dict[str, Any]:
    """The options ``method`` reads: its sub-config as a dict (``select`` with λ resolved
    for the task)."""
    if method.options is None:
        return {}
    opts = cfg.get(method.options, {})
    opts = dict(opts.to_dict() if hasattr(opts, "to_dict") else opts)
    if method.options == "select":
        opts["lam"] = lam_of(cfg)
    return opts


def evaluate(model, encode, cfg, texts, cand, titles, full=None, mesh=None) -> dict[str, Any]:
    """HR/NDCG of the target (column 0) by answer log-likelihood among the candidates (and,
    with ``full = (targets, exclude)``, over the whole catalogue for the first
    ``len(targets)`` test prompts: keys ``full/HR@10`` …); for the click task AUC /
    log-loss of ``log p("Yes") − log p("No")``. The scoring runs data-parallel over
    ``mesh`` when given."""
    prompts = texts["test"]["prompt"]
    mp, ma = cfg.model.max_prompt, cfg.model.max_answer
    if task_of(cfg) == "click":
        t = lmrec.encode_pairs(encode, [p for p in prompts for _ in (0, 1)],
                               ["Yes", "No"] * len(prompts), max_prompt=mp, max_answer=ma)
        ll = lmrec.answer_loglik(model, *t, batch_size=256, mesh=mesh).reshape(-1, 2)
        return lmrec.click_metrics(ll[:, 0] - ll[:, 1], np.asarray(texts["test"]["label"]))
    kw = dict(max_prompt=mp, max_answer=ma, progress=False, mesh=mesh)
    ranks = lmrec.target_ranks(lmrec.catalogue_scores(model, encode, prompts, titles, cand,
                                                      **kw))
    out: dict[str, Any] = lmrec.rank_metrics(ranks)
    out["ranks"] = ranks.tolist()  # per prompt, for paired comparisons in the report
    if full is not None:
        target, exclude = full
        scores = lmrec.catalogue_scores(model, encode, prompts[:len(target)], titles, **kw)
        out.update({f"full/{k}": v for k, v in
                    lmrec.catalogue_metrics(scores, target, exclude).items()})
    return out


def decisive_evaluate(model, encode, cfg, texts, enc, cand, titles, mesh=None
                      ) -> dict[str, np.ndarray]:
    """Per test window: mean answer-token NLL of the target title and its rank among the
    candidates (rows split over ``mesh`` when given; every process gets every window)."""
    nll = lmrec.mean_answer_nll(model, *enc["test"], mesh=mesh)
    ranks = lmrec.target_ranks(lmrec.catalogue_scores(
        model, encode, texts["test"]["prompt"], titles, cand,
        max_prompt=cfg.model.max_prompt, max_answer=cfg.model.max_answer, progress=False,
        mesh=mesh))
    return {"nll": nll, "ranks": ranks}


def coreset_quality(cost: np.ndarray, indices: np.ndarray, *, epsilon: float,
                    threshold: float, exact: bool) -> dict[str, float]:
    """POO of a selection: entropic (``poo``) and, with ``exact``, exact (``exact_poo``)."""
    from recrl.coreset import objective

    quality = {"poo": objective.poo_sinkhorn(cost, indices, epsilon=epsilon,
                                             threshold=threshold)}
    if exact:
        quality["exact_poo"] = objective.poo_exact(cost, indices)
    return quality


def finetune_steps(finetune_cfg, n: int) -> int:
    """The default protocol's fine-tuning length for ``n`` samples:
    ``min(max_steps, max(1, epochs · n // batch_size))``."""
    return min(finetune_cfg.max_steps,
               max(1, finetune_cfg.epochs * n // finetune_cfg.batch_size))


def default_features(cfg, st: Setup, mesh=None) -> dict[str, np.ndarray]:
    """The default protocol's selection features of ``st.model`` (with DEALRec's influence
    when ``dealrec`` runs with ``dealrec.influence``; with labels for the click task),
    data-parallel over ``mesh`` when given."""
    from recrl.coreset import features

    dealrec_cfg = cfg.get("dealrec", {})
    influence = "dealrec" in cfg.methods and dealrec_cfg.get("influence", False)
    labels = ((st.texts["train"]["label"], st.texts["val"]["label"])
              if "label" in st.texts["train"] else None)
    return features.selection_features(
        st.model, st.enc, batch_size=cfg.features.batch_size, chunk=cfg.features.chunk,
        influence_damping=dealrec_cfg.get("damping", 0.01) if influence else None,
        labels=labels, mesh=mesh)


def run_plan(cfg, budgets: list[int]):
    """``(method, budget, seed)`` of every default-protocol run, in order: each method per
    budget and seed; full data once (first budget, first seed)."""
    for bi, n in enumerate(budgets):
        for method in cfg.methods:
            if method == "full" and bi > 0:  # full data does not depend on the budget
                continue
            # deterministic selections still vary by seed through the fine-tuning order
            for seed in cfg.seeds[:1] if method == "full" else cfg.seeds:
                yield method, n, seed


def select_with_quality(cfg, table: dict[str, selectors.Method], method: str, n: int,
                        seed: int, feats, cost, reused: dict) -> tuple[dict, dict]:
    """One coreset of ``method`` (an entry of ``table``) and its POO; selections of
    deterministic selectors are kept in ``reused`` and served again for other seeds."""
    if (method, n) in reused:
        return reused[(method, n)]
    entry = table[method]
    sel = selectors.run_method(entry, feats, n, seed, method_options(cfg, entry))
    quality = coreset_quality(cost, sel["indices"], epsilon=cfg.select.epsilon,
                              threshold=cfg.select.threshold, exact=cfg.select.exact_ot)
    if selectors.get_selector(entry.selector).deterministic:
        reused[(method, n)] = sel, quality
    return sel, quality


def finetune_and_evaluate(cfg, st: Setup, idx: np.ndarray, seed: int, cand, full=None,
                          mesh=None, checkpoint_dir=None) -> dict[str, Any]:
    """The default protocol's run on the coreset ``idx``: LoRA fine-tuning of a copy of the
    model for :func:`finetune_steps` steps (resumable from ``checkpoint_dir``, see
    :func:`lmrec.finetune`), then :func:`evaluate` (plus ``steps``), both data-parallel over
    ``mesh`` when given."""
    model = nnx.clone(st.model)  # merge(split) would share (and mutate) Variables
    steps = finetune_steps(cfg.finetune, len(idx))
    lmrec.finetune(model, *(x[idx] for x in st.enc["train"]), steps=steps,
                   batch_size=cfg.finetune.batch_size, lr=cfg.finetune.lr, seed=seed,
                   progress=False, mesh=mesh, checkpoint_dir=checkpoint_dir)
    return {"steps": steps, **evaluate(model, st.encode, cfg, st.texts, cand,
                                       st.data.titles, full, mesh)}


def decisive_selection(cfg, table: dict[str, selectors.Method], method: str, n: int,
                       seed: int, feats, cost) -> dict[str, Any]:
    """One subset of the decisive protocol: indices (a list), seconds, trace, exact POO."""
    from recrl.coreset import objective

    entry = table[method]
    sel = selectors.run_method(entry, feats, n, seed, method_options(cfg, entry))
    idx = np.asarray(sel["indices"])
    return {"indices": idx.tolist(), "seconds": sel["seconds"], "trace": sel["trace"],
            "exact_poo": objective.poo_exact(cost, idx)}


def decisive_finetune(cfg, st: Setup, idx, cand, checkpoint_dir=None, mesh=None
                      ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The decisive protocol's run on ``idx`` (None: no fine-tuning): early-stopped LoRA
    fine-tuning of a copy of the model (checkpointed in ``checkpoint_dir``), then
    :func:`decisive_evaluate`; ``(info, per-window results)``. With ``mesh`` both run
    data-parallel, and every process must call this (each gets the same results)."""
    import time

    model, ft_cfg = nnx.clone(st.model), cfg.finetune
    info = {"best_step": 0, "steps_run": 0, "val_curve": []}
    t0 = time.perf_counter()
    if idx is not None:
        info = lmrec.finetune_early_stopping(
            model, tuple(x[np.asarray(idx)] for x in st.enc["train"]), st.enc["val"],
            max_steps=ft_cfg.max_steps, eval_every=ft_cfg.eval_every,
            patience=ft_cfg.patience, batch_size=ft_cfg.batch_size, lr=ft_cfg.lr,
            seed=ft_cfg.seed, checkpoint_dir=checkpoint_dir, mesh=mesh)
    t1 = time.perf_counter()
    per = decisive_evaluate(model, st.encode, cfg, st.texts, st.enc, cand, st.data.titles,
                            mesh)
    info.update(finetune_seconds=t1 - t0, eval_seconds=time.perf_counter() - t1)
    return info, per
