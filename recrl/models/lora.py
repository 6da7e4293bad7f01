"""LoRA adapters on chosen projections, and per-sample gradients of a parameter subset.

A LoRA projection computes ``y = x W + (α / r) · x A B`` with the base ``W`` frozen,
``A ∈ R^{in×r}`` drawn from ``N(0, 1/in)`` and ``B ∈ R^{r×out}`` zero, so a fresh adapter
leaves the model unchanged. Adapter matrices are ``LoRAParam`` variables: ``nnx.split(model,
LoRAParam, ...)`` separates them from the frozen base, and ``nnx.Optimizer(model, tx,
wrt=LoRAParam)`` trains only them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from recrl.models.llama import Linear, Llama, ParamsLike
from recrl.models.scoring import sequence_nll

ATTN_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")


class LoRAParam(nnx.Param):
    """A trainable low-rank adapter matrix (a ``Param``, told apart by type)."""


def lora_linears(model: Llama, targets: Iterable[str] = ("q_proj", "v_proj"),
                 layers: Iterable[int] | None = None) -> list[tuple[str, Linear]]:
    """The projections ``(path, Linear)`` named in ``targets`` in blocks ``layers``.

    Args:
      model: a ``Llama``.
      targets: projection names among ``q_proj k_proj v_proj o_proj gate_proj up_proj
        down_proj``.
      layers: block indices (negative counts from the end); default all blocks.

    Returns:
      ``[("layers.3.attn.v_proj", Linear), ...]`` in block order.
    """
    targets = tuple(targets)
    unknown = set(targets) - set(ATTN_TARGETS + MLP_TARGETS)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; "
                         f"choose from {ATTN_TARGETS + MLP_TARGETS}")
    n = len(model.layers)
    idx = range(n) if layers is None else sorted({i % n for i in layers})
    out = []
    for i in idx:
        block = model.layers[i]
        for name in targets:
            sub = "attn" if name in ATTN_TARGETS else "mlp"
            out.append((f"layers.{i}.{sub}.{name}", getattr(getattr(block, sub), name)))
    return out


def add_lora(
    model: Llama,
    *,
    rank: int,
    alpha: float,
    targets: Iterable[str] = ("q_proj", "v_proj"),
    layers: Iterable[int] | None = None,
    rngs: nnx.Rngs,
    param_dtype: str = "float32",
) -> int:
    """Adds fresh adapters (``A ~ N(0, 1/in)``, ``B = 0``, scale ``α/r``) in place.

    Args:
      model: a ``Llama`` (modified in place).
      rank: adapter rank ``r``.
      alpha: LoRA ``α``.
      targets: projection names (see ``lora_linears``).
      layers: block indices; default all.
      rngs: randomness for ``A``.
      param_dtype: adapter storage dtype (float32 by default even for bf16 bases).

    Returns:
      Number of adapter parameters added.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    count = 0
    for _, lin in lora_linears(model, targets, layers):
        if lin.lora_a is not None:
            raise ValueError("adapter already present; merge_lora or rebuild the model first")
        d_in, d_out = lin.kernel.shape
        a = jax.random.normal(rngs.params(), (d_in, rank), jnp.float32) / jnp.sqrt(d_in)
        lin.lora_a = LoRAParam(a.astype(param_dtype))
        lin.lora_b = LoRAParam(jnp.zeros((rank, d_out), param_dtype))
        lin.lora_scale = float(alpha) / rank
        count += rank * (d_in + d_out)
    return count


def merge_lora(model: Llama) -> int:
    """Folds every adapter into its base kernel (``W += (α/r) A B``) and removes it.

    Returns:
      Number of projections merged.
    """
    n = 0
    for _, lin in lora_linears(model, ATTN_TARGETS + MLP_TARGETS):
        if lin.lora_a is None:
            continue
        delta = (lin.lora_a[...].astype(jnp.float32) @ lin.lora_b[...].astype(jnp.float32))
        w = lin.kernel[...]
        lin.kernel[...] = (w.astype(jnp.float32) + lin.lora_scale * delta).astype(w.dtype)
        lin.lora_a, lin.lora_b, lin.lora_scale = None, None, 0.0
        n += 1
    return n


def split_lora(model: Llama) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, lora_state, frozen_state)`` = ``nnx.split(model, LoRAParam, ...)``."""
    return nnx.split(model, LoRAParam, ...)


def per_sample_grads(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    batch: Any,
    *args: Any,
    chunk_size: int = 8,
) -> Any:
    """``∇_θ ℓ(θ; z_i)`` for every example ``z_i`` of ``batch``, ``chunk_size`` at a time.

    Runs ``jax.lax.map`` over the batch in chunks, each chunk a ``jax.vmap(jax.grad(loss_fn))``,
    so peak memory is ``chunk_size`` examples' activations and gradients.

    Args:
      loss_fn: ``loss_fn(params, example, *args) -> scalar`` on one unbatched example.
      params: the pytree to differentiate (e.g. a LoRA state).
      batch: pytree whose leaves have a leading example axis ``N``.
      *args: passed to ``loss_fn`` unchanged and not differentiated (e.g. graphdef-free frozen
        state); pass big arrays here rather than closing over them.
      chunk_size: examples per vectorised chunk.

    Returns:
      Pytree like ``params`` with a leading axis ``N``.
    """
    grad_fn = jax.grad(loss_fn)
    return jax.lax.map(lambda ex: grad_fn(params, ex, *args), batch, batch_size=chunk_size)


def per_sample_grad_norms(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    batch: Any,
    *args: Any,
    chunk_size: int = 8,
) -> jax.Array:
    """``‖∇_θ ℓ(θ; z_i)‖₂`` for every example, without keeping the gradients.

    Args:
      loss_fn: as in ``per_sample_grads``.
      params: the pytree to differentiate.
      batch: pytree with leading example axis ``N``.
      *args: extra non-differentiated arguments of ``loss_fn``.
      chunk_size: examples per vectorised chunk.

    Returns:
      float32 ``[N]``.
    """
    grad_fn = jax.grad(loss_fn)

    def norm(ex):
        g = grad_fn(params, ex, *args)
        return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                            for x in jax.tree.leaves(g)))

    return jax.lax.map(norm, batch, batch_size=chunk_size)


def _example_nll(wrt: nnx.State, example: dict[str, jax.Array], graphdef: nnx.GraphDef,
                 frozen: ParamsLike) -> jax.Array:
    frozen = (frozen,) if isinstance(frozen, nnx.State) else tuple(frozen)
    ex = {k: v[None] for k, v in example.items()}
    return sequence_nll(graphdef, (wrt, *frozen), ex["tokens"], ex["mask"], ex["loss_mask"])[0]


@functools.partial(jax.jit, static_argnums=0, static_argnames=("chunk_size", "norms_only"))
def nll_per_sample_grads(
    graphdef: nnx.GraphDef,
    wrt: nnx.State,
    frozen: ParamsLike,
    tokens: jax.Array,
    mask: jax.Array,
    loss_mask: jax.Array,
    *,
    chunk_size: int = 8,
    norms_only: bool = False,
) -> Any:
    """Per-sample gradients (or their norms) of the LM loss ``sequence_nll`` w.r.t. ``wrt``.

    GORACS's gradient term: ``g_i = ‖∇_φ ℓ(z_i; φ_0)‖`` over a chosen parameter subset.

    Args:
      graphdef: from ``nnx.split(model, subset_filter, ...)`` (static).
      wrt: the differentiated state (e.g. LoRA params, or one ``lora_b``).
      frozen: the remaining state(s).
      tokens: int ``[N, T]``.
      mask: bool ``[N, T]`` real tokens.
      loss_mask: ``[N, T]`` tokens whose log-likelihood is the loss (the answer).
      chunk_size: examples per vectorised chunk (static).
      norms_only: return ``[N]`` norms instead of the gradients (static).

    Returns:
      Gradients shaped like ``wrt`` with a leading ``N`` axis, or float32 ``[N]`` norms.
    """
    batch = {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}
    fn = per_sample_grad_norms if norms_only else per_sample_grads
    return fn(_example_nll, wrt, batch, graphdef, frozen, chunk_size=chunk_size)


def flatten_grads(grads: Any) -> jax.Array:
    """Concatenates per-sample gradient leaves into features ``[N, D]`` (float32)."""
    leaves = jax.tree.leaves(grads)
    return jnp.concatenate([x.reshape(x.shape[0], -1).astype(jnp.float32) for x in leaves], 1)
