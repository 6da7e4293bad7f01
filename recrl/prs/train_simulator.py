r"""Training, evaluation and checkpoints of the ProRL user simulator (SASRec / GRU4Rec).

Training data: every train-split user's full chronological sequence, cut from its end into
windows of ``max_len + 1`` items (input ``x[s:e]``, next-item labels ``x[s+1:e+1]``, the
earliest window right-padded), so every interaction after the first is a label once. Loss:
full-softmax cross-entropy at every real position,

.. math:: \mathcal L = -\frac{1}{N} \sum_{n, t < \ell_n}
          \log \mathrm{softmax}\big(h(x_{n, \le t}) V^\top\big)_{x_{n, t+1}},

Adam (lr 1e-3), dropout from explicit per-step keys (``rbg``), one jitted pure step
(``nnx.split`` / ``nnx.merge`` + optax).

Evaluation (val / test users, who are disjoint from the train users): leave-one-out, time
ordered: predict each user's last item from the ``max_len`` items before it; full ranking
over all ``I`` items, ``rank = 1 + #{j : s_j > s_target}``; HR@10 = mean 1[rank <= 10],
NDCG@10 = mean 1[rank <= 10] / log2(1 + rank), MRR@10 = mean 1[rank <= 10] / rank.
The main protocol excludes nothing (the reward model's ``P(i | S)`` is over all items);
``exclude_history=True`` also reports the variant that removes the user's earlier items
from the ranking. Early stopping on validation NDCG@10 (exclude nothing); the best
parameters are kept.

Launcher: ``python -m experiments.train_simulator --dataset=ml-1m --kind=sasrec --out=DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from tqdm.auto import tqdm

from recrl import parallel
from recrl.checkpoint import Checkpointer
from recrl.data.prorl import ProRLData
from recrl.data.sequences import Sequences
from recrl.prs.simulator import SimConfig, Simulator, _representation, _tokens, build_simulator

CONFIG_FILE = "simulator.json"


def training_windows(seqs: Sequences, users: np.ndarray, max_len: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded next-item windows covering the users' full sequences.

    A sequence ``x`` of ``n`` items gives ``ceil((n - 1) / max_len)`` windows; window ``j``
    (``j = 0`` the most recent) has inputs ``x[s:e]`` and labels ``x[s+1:e+1]`` with
    ``e = n - 1 - j·max_len``, ``s = max(e - max_len, 0)``.

    Args:
      seqs: chronological sequences.
      users: user rows to use.
      max_len: window length.

    Returns:
      ``(inputs, labels, lengths)``: ``[N, max_len]`` int32 padded with ``-1``, and ``[N]``.
    """
    users = np.asarray(users)
    n = seqs.lengths[users]
    users, n = users[n >= 2], n[n >= 2]
    count = -(-(n - 1) // max_len)
    row = np.repeat(np.arange(len(users)), count)
    j = np.arange(len(row)) - np.repeat(np.cumsum(count) - count, count)
    end = n[row] - 1 - j * max_len
    start = np.maximum(end - max_len, 0)
    length = end - start
    steps = np.arange(max_len)
    valid = steps < length[:, None]
    idx = seqs.offsets[users[row], None] + start[:, None] + steps
    idx = np.where(valid, idx, 0)
    inputs = np.where(valid, seqs.items[idx], -1)
    labels = np.where(valid, seqs.items[np.minimum(idx + 1, len(seqs.items) - 1)], -1)
    return inputs.astype(np.int32), labels.astype(np.int32), length.astype(np.int32)


def leave_one_out(seqs: Sequences, users: np.ndarray, max_len: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each user's last item as the target, the ``max_len`` items before it as input.

    Returns:
      ``(inputs [N, max_len] padded with -1, lengths [N], targets [N], users [N])`` over the
      users with at least 2 items.
    """
    users = np.asarray(users)
    users = users[seqs.lengths[users] >= 2]
    last = seqs.offsets[users + 1] - 1
    length = np.minimum(seqs.lengths[users] - 1, max_len)
    steps = np.arange(max_len)
    valid = steps < length[:, None]
    idx = np.where(valid, (last - length)[:, None] + steps, 0)
    inputs = np.where(valid, seqs.items[idx], -1).astype(np.int32)
    return inputs, length.astype(np.int32), seqs.items[last].astype(np.int32), users


@jax.jit
def _ranks(h: jax.Array, emb: jax.Array, target: jax.Array, exclude: jax.Array) -> jax.Array:
    logits = h @ emb.T
    s_target = jnp.take_along_axis(logits, target[:, None], axis=1)
    return 1 + jnp.sum(jnp.where(exclude, False, logits > s_target), axis=1)


def ranking_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    r"""HR@k, NDCG@k, MRR@k of 1-based ranks (one relevant item per query).

    .. math:: \mathrm{HR} = \overline{1[r \le k]},\quad
              \mathrm{NDCG} = \overline{1[r \le k] / \log_2(1 + r)},\quad
              \mathrm{MRR} = \overline{1[r \le k] / r}
    """
    r = np.asarray(ranks, np.float64)
    hit = r <= k
    return {f"hr@{k}": float(hit.mean()), f"ndcg@{k}": float((hit / np.log2(1 + r)).mean()),
            f"mrr@{k}": float((hit / r).mean()), "n": len(r)}


def evaluate(sim: Simulator, seqs: Sequences, users: np.ndarray, *, k: int = 10,
             exclude_history: bool = False, batch_size: int = 512) -> dict[str, float]:
    """Leave-one-out full-ranking HR@k / NDCG@k / MRR@k (see the module docstring).

    Args:
      sim: the simulator.
      seqs: chronological sequences.
      users: user rows to evaluate (each user's last item is the target).
      k: cut-off.
      exclude_history: remove the user's earlier items (all of them, not only the last
        ``max_len``) from the ranking; the target is never removed.
      batch_size: users per forward pass.

    Returns:
      ``{"hr@k", "ndcg@k", "mrr@k", "n"}``.
    """
    graphdef, state = nnx.split(sim)
    num_items = sim.cfg.num_items
    inputs, lengths, targets, users = leave_one_out(seqs, users, sim.cfg.max_len)
    ranks = []
    for lo in range(0, len(users), batch_size):
        sl = slice(lo, lo + batch_size)
        pad = batch_size - len(targets[sl])  # fixed shapes: one compilation
        x = np.pad(inputs[sl], ((0, pad), (0, 0)))
        ln = np.pad(lengths[sl], (0, pad), constant_values=1)
        tg = np.pad(targets[sl], (0, pad))
        exclude = np.zeros((batch_size, num_items), bool)
        if exclude_history:
            for r, u in enumerate(users[sl]):
                exclude[r, seqs.items[seqs.offsets[u]:seqs.offsets[u + 1] - 1]] = True
            exclude[np.arange(batch_size), tg] = False
        h, emb = _representation(graphdef, state, jnp.asarray(x), jnp.asarray(ln))
        ranks.append(np.asarray(_ranks(h, emb, jnp.asarray(tg), jnp.asarray(exclude)))[
            :batch_size - pad])
    return ranking_metrics(np.concatenate(ranks) if ranks else np.zeros(0), k)


def _make_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, num_items: int):
    """The jitted pure training step ``(params, opt_state, batch, key) -> (.., .., loss)``."""

    def loss_fn(params, inputs, labels, lengths, key):
        model = nnx.merge(graphdef, params)
        states = model(_tokens(inputs, lengths, num_items), key=key)
        logits = states @ model.item_embeddings().T
        valid = jnp.arange(inputs.shape[1]) < lengths[:, None]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.clip(labels, 0))
        return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1)

    @jax.jit
    def step(params, opt_state, inputs, labels, lengths, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, labels, lengths, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train_simulator(
    data: ProRLData,
    cfg: SimConfig,
    *,
    epochs: int = 20,
    batch_size: int = 128,
    seed: int = 0,
    patience: int = 3,
    log_every: int = 50,
    checkpoint_dir: str | Path | None = None,
    lr: float = 1e-3,
    max_seconds: float | None = None,
    mesh: Any = None,
) -> tuple[Simulator, dict]:
    """Trains the simulator on the train users, early-stops on val NDCG@10, tests once.

    Args:
      data: preprocessed data (``data.sequences``, ``data.splits``).
      cfg: model config; ``cfg.num_items`` must equal ``data.sequences.num_items``.
      epochs: maximum passes over the training windows.
      batch_size: windows per step (the last batch of an epoch is padded, masked out).
      seed: init / shuffling / dropout seed.
      patience: stop after this many epochs without a better val NDCG@10.
      log_every: log the running loss every this many steps.
      checkpoint_dir: if set, the best model is saved there (:func:`save_simulator`).
      lr: Adam step size.
      max_seconds: optional wall-clock budget, checked after each epoch.
      mesh: optional data mesh: the step runs data-parallel (parameters replicated, each
        batch split over the mesh, each process building its rows; ``batch_size`` must
        divide over the devices). Evaluation runs on one device.

    Returns:
      ``(model, metrics)``: the best-validation model and ``{"val", "test",
      "val_exclude_history", "test_exclude_history", "best_epoch", "epochs_run",
      "train_seconds", "history", "num_params", "num_windows"}``.
    """
    seqs = data.sequences
    if cfg.num_items != seqs.num_items:
        raise ValueError(f"cfg.num_items = {cfg.num_items} but the data has {seqs.num_items}")
    if min(epochs, batch_size, patience, log_every) < 1:
        raise ValueError("epochs, batch_size, patience and log_every must be >= 1")
    model = build_simulator(cfg, seed=seed)
    graphdef, params = nnx.split(model)
    tx = optax.adam(lr)
    opt_state = tx.init(params)
    if mesh is not None:
        parallel.check_divisible({"batch_size": batch_size}, mesh)
        params, opt_state = parallel.replicate((params, opt_state), mesh)
    windows = training_windows(seqs, data.splits["train"], cfg.max_len)
    loop = _EpochLoop(_make_step(graphdef, tx, cfg.num_items), windows, batch_size, log_every,
                      # rbg keys: dropout masks compile several times faster on CPU
                      jax.random.key(seed, impl="rbg"), mesh)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    logging.info("simulator %s: %d params, %d training windows", cfg.kind, num_params,
                 len(windows[2]))
    best, best_epoch, history, train_seconds = _fit(
        loop, graphdef, params, opt_state, data, np.random.default_rng(seed),
        epochs=epochs, patience=patience, max_seconds=max_seconds)
    model = nnx.merge(graphdef, best if mesh is None else
                      jax.tree.map(jnp.asarray, parallel.to_host(best)))
    metrics = {**_final_metrics(model, data), "best_epoch": best_epoch,
               "epochs_run": len(history), "train_seconds": train_seconds, "history": history,
               "num_params": int(num_params), "num_windows": len(windows[2])}
    if checkpoint_dir is not None:
        save_simulator(checkpoint_dir, model, cfg, metrics=metrics)
    return model, metrics


def _fit(loop: _EpochLoop, graphdef: nnx.GraphDef, params: Any, opt_state: Any,
         data: ProRLData, rng: np.random.Generator, *, epochs: int, patience: int,
         max_seconds: float | None) -> tuple[Any, int, list[dict], float]:
    """Epochs until ``patience`` epochs bring no better val NDCG@10 (or the time cap);
    returns ``(best params, best epoch, history, training seconds)``."""
    best, best_ndcg, best_epoch, bad, history, step = params, -1.0, 0, 0, [], 0
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        params, opt_state, step, epoch_loss = loop.run(params, opt_state, rng, step, epoch)
        model = nnx.merge(graphdef, params if loop.mesh is None else parallel.to_host(params))
        val = evaluate(model, data.sequences, data.splits["val"])
        history.append({"epoch": epoch, "loss": epoch_loss, "val_ndcg@10": val["ndcg@10"],
                        "seconds": time.perf_counter() - t0})
        logging.info("epoch %d: loss %.4f, val HR@10 %.4f NDCG@10 %.4f (%.0f s)", epoch,
                     epoch_loss, val["hr@10"], val["ndcg@10"], time.perf_counter() - t0)
        if val["ndcg@10"] > best_ndcg:
            best, best_ndcg, best_epoch, bad = jax.tree.map(jnp.copy, params), val["ndcg@10"], \
                epoch, 0
        else:
            bad += 1
        if bad >= patience or (max_seconds is not None and time.perf_counter() - t0 > max_seconds):
            break
    return best, best_epoch, history, time.perf_counter() - t0


class _EpochLoop(NamedTuple):
    """One epoch of simulator training steps over shuffled, padded batches of windows."""

    step_fn: Any
    windows: tuple[np.ndarray, np.ndarray, np.ndarray]  # inputs, labels, lengths
    batch_size: int
    log_every: int
    key: jax.Array
    mesh: Any

    def batch(self, idx: np.ndarray) -> tuple:
        """The batch of window rows ``idx`` (-1: a padding row, masked out); under a mesh
        each process builds only its rows."""
        inputs, labels, lengths = self.windows

        def rows(r, idx=idx):
            real = idx[r] >= 0
            b = [np.where(real[:, None], a[idx[r]], -1) for a in (inputs, labels)]
            return (*b, np.where(real, lengths[idx[r]], 0))

        return rows(slice(None)) if self.mesh is None else parallel.global_rows(
            rows, self.batch_size, self.mesh)

    def run(self, params: Any, opt_state: Any, rng: np.random.Generator, step: int,
            epoch: int) -> tuple[Any, Any, int, float]:
        """Returns ``(params, opt_state, step, mean loss)`` after the epoch."""
        order = rng.permutation(len(self.windows[2]))
        order = np.pad(order, (0, -len(order) % self.batch_size), constant_values=-1)
        losses = []
        bar = tqdm(order.reshape(-1, self.batch_size), desc=f"epoch {epoch}", leave=False)
        for idx in bar:
            params, opt_state, loss = self.step_fn(params, opt_state, *self.batch(idx),
                                                   jax.random.fold_in(self.key, step))
            losses.append(loss)
            step += 1
            if step % self.log_every == 0:
                bar.set_postfix(loss=f"{float(np.mean(losses[-self.log_every:])):.4f}")
        return params, opt_state, step, float(np.mean(jax.device_get(losses)))


def _final_metrics(model: Simulator, data: ProRLData) -> dict:
    """Val / test ranking metrics, excluding nothing and excluding the user's history."""
    seqs, splits = data.sequences, data.splits
    return {
        "val": evaluate(model, seqs, splits["val"]),
        "test": evaluate(model, seqs, splits["test"]),
        "val_exclude_history": evaluate(model, seqs, splits["val"], exclude_history=True),
        "test_exclude_history": evaluate(model, seqs, splits["test"], exclude_history=True),
    }


def save_simulator(directory: str | Path, model: Simulator, cfg: SimConfig, *,
                   metrics: dict | None = None) -> None:
    """Saves ``cfg`` (``directory/simulator.json``) and the parameters (Orbax, ``params/``).

    Args:
      directory: target directory (created if needed).
      model: the simulator.
      cfg: its config (must equal ``model.cfg``).
      metrics: optional JSON-able metrics stored beside the config.
    """
    if cfg != model.cfg:
        raise ValueError(f"cfg {cfg} does not match the model's {model.cfg}")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"config": dataclasses.asdict(cfg), "metrics": metrics or {}}
    with Checkpointer(path / "params", max_to_keep=1) as ckpt:
        step = (ckpt.latest_step() or 0) + 1
        # host copies: every process takes part in the save, process 0 writes them
        ckpt.save(step, jax.device_get(nnx.to_pure_dict(nnx.state(model))),
                  meta={"config": meta["config"]})
    if parallel.is_writer():
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=1))


def load_simulator(directory: str | Path) -> Simulator:
    """Rebuilds the module from ``directory/simulator.json`` and restores its parameters.

    Raises:
      FileNotFoundError: no simulator was saved in ``directory``.
    """
    path = Path(directory)
    if not (path / CONFIG_FILE).is_file() or not (path / "params").is_dir():
        raise FileNotFoundError(
            f"no simulator checkpoint in {path.resolve()} (expected {CONFIG_FILE} and params/);"
            " train one with `python -m experiments.train_simulator --out=DIR`")
    cfg = SimConfig.from_dict(json.loads((path / CONFIG_FILE).read_text())["config"],
                              str(path / CONFIG_FILE))
    model = build_simulator(cfg)
    with Checkpointer(path / "params") as ckpt:
        state, _ = ckpt.restore(like=nnx.to_pure_dict(nnx.state(model)))
    params = nnx.state(model)
    nnx.replace_by_pure_dict(params, state)
    nnx.update(model, params)
    return model


def format_metrics(metrics: dict) -> str:
    """A plain-text table of the val / test metrics of :func:`train_simulator`."""
    lines = [f"{'split':24s}{'HR@10':>8s}{'NDCG@10':>9s}{'MRR@10':>8s}{'users':>7s}"]
    for name in ("val", "test", "val_exclude_history", "test_exclude_history"):
        m = metrics[name]
        lines.append(f"{name:24s}{m['hr@10']:8.4f}{m['ndcg@10']:9.4f}{m['mrr@10']:8.4f}"
                     f"{m['n']:7d}")
    lines.append(f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}, "
                 f"{metrics['train_seconds']:.0f} s, {metrics['num_params']:,} params, "
                 f"{metrics['num_windows']:,} windows")
    return "\n".join(lines)
