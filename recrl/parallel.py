"""Device-mesh helpers for data-parallel steps.

The default is the "global view": parameters and optimiser state replicated with
``NamedSharding(mesh, P())``, batches split along their leading axis with ``P("data")``, a
plain ``jax.jit`` step, and XLA inserting the all-reduces. The estimators also take
``axis_name=`` so the same math runs inside ``jax.shard_map`` or ``jax.pmap``.

Gradients of an ``axis_name``-aware (already global) loss with respect to replicated
parameters:

- ``jax.jit`` over sharded arrays: nothing to do, the loss is a plain global mean.
- ``jax.shard_map`` (``check_vma=True``, the default): ``jax.grad`` already returns the
  global gradient on every device; do not ``pmean``/``psum`` it again.
- ``jax.pmap``: the transpose of ``psum`` is a ``psum``, so each device holds ``N`` times its
  local share; take ``lax.pmean(grad, axis_name)``.

``tests/test_parallel.py`` checks all three against a single-device step.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all by default), Auto axis type."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices but {len(devices)} are available")
    return jax.make_mesh((n,), (axis_name,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Sharding that splits the leading axis over ``axis_name``."""
    return NamedSharding(mesh, P(axis_name))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(tree: Any, mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Splits every leaf of ``tree`` along its leading axis over the mesh.

    Example:
      >>> import numpy as np
      >>> from recrl import parallel
      >>> mesh = parallel.data_mesh()
      >>> batch = parallel.shard_batch({"x": np.zeros((8, 3))}, mesh)
      >>> [s.data.shape for s in batch["x"].addressable_shards] == [(8 // mesh.size, 3)] * mesh.size
      True
      >>> parallel.shard_batch({"lr": np.float32(0.1)}, mesh)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ValueError: batch leaf ['lr'] with shape () cannot be split over ... devices: ...

    Raises:
      ValueError: a leaf's leading dimension is not divisible by the number of devices.
    """
    n = mesh.shape[axis_name]
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        lead = np.shape(leaf)[0] if np.ndim(leaf) else None
        if lead is None or lead % n:
            raise ValueError(
                f"batch leaf {jax.tree_util.keystr(path) or '<root>'} with shape "
                f"{np.shape(leaf)} cannot be split over {n} devices: its leading dimension "
                f"must be a multiple of {n}"
            )
    return jax.device_put(tree, batch_sharding(mesh, axis_name))


def global_batch(tree: Any, mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Assembles per-process batches into global arrays (multi-host input pipelines)."""
    sharding = batch_sharding(mesh, axis_name)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)


def maybe_initialize_distributed(enabled: bool) -> None:
    """Calls ``jax.distributed.initialize()`` on multi-host pods when ``enabled``."""
    if not enabled:
        return
    jax.distributed.initialize()
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
