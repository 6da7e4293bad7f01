"""Saving and restoring model parameters through ``recrl.checkpoint.Checkpointer``.

The saved state is the pure dict of the model's ``nnx.Param`` variables (LoRA adapters included
when present); ``meta`` records the ``LlamaConfig`` so a model can be rebuilt before restoring.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from recrl.checkpoint import Checkpointer
from recrl.models.config import LlamaConfig
from recrl.models.llama import Llama


def save_model(ckpt: Checkpointer, step: int, model: Llama,
               meta: dict[str, Any] | None = None) -> None:
    """Saves every ``Param`` of ``model`` (base and LoRA) at ``step``.

    Args:
      ckpt: the run's checkpointer.
      step: training step.
      model: the module to save.
      meta: extra JSON-able metadata (stored beside ``{"config": ...}``).
    """
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    ckpt.save(step, state, meta={"config": model.config.to_dict(), **(meta or {})})


def restore_model(ckpt: Checkpointer, model: Llama, step: int | None = None) -> dict[str, Any]:
    """Restores saved parameters into ``model`` in place (same structure, LoRA included).

    Args:
      ckpt: the run's checkpointer.
      model: a module with the saved structure (e.g. ``create_model(config_from_meta(meta))``
        plus the same ``add_lora`` calls).
      step: step to restore; default the latest.

    Returns:
      The saved metadata.
    """
    state = nnx.state(model, nnx.Param)
    restored, meta = ckpt.restore(like=nnx.to_pure_dict(state), step=step)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return meta


def config_from_meta(meta: dict[str, Any]) -> LlamaConfig:
    """The ``LlamaConfig`` recorded by ``save_model``."""
    return LlamaConfig(**meta["config"])
