"""The optimiser factory shared by recrl's training loops (ProRL pretraining and RL, RLVR).

Every loop uses the same transformation, global-norm gradient clipping then AdamW; they
differ only in the learning-rate schedule, which the caller builds (an optax schedule or a
constant) and passes in.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def make_optimizer(lr: float | optax.Schedule, *, grad_clip: float, weight_decay: float
                   ) -> optax.GradientTransformation:
    """``clip_by_global_norm(grad_clip)`` then ``adamw(lr, weight_decay)``.

    Args:
      lr: a constant learning rate or a schedule ``step -> lr``.
      grad_clip: maximum global norm of the gradients.
      weight_decay: AdamW's decoupled weight decay.
    """
    return optax.chain(optax.clip_by_global_norm(grad_clip),
                       optax.adamw(lr, weight_decay=weight_decay))


def warmup_constant(lr: float, warmup_steps: int) -> optax.Schedule:
    """Linear warm-up then constant: ``lr * min(1, (step + 1) / warmup_steps)`` (the first
    update already uses ``lr / warmup_steps``; ``warmup_steps <= 1`` is constant)."""
    warmup = max(warmup_steps, 1)
    return lambda count: lr * jnp.minimum(1.0, (count + 1) / warmup)
