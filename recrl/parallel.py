"""Device-mesh helpers for data-parallel steps, and the launchers' shared start-up.

Start-up (every launcher): :func:`startup` calls ``jax.distributed.initialize`` first when
``config.distributed`` is set (auto-detected on TPU pods / SLURM / Open MPI, or explicit
``coordinator_address`` / ``num_processes`` / ``process_id`` for CPU and GPU clusters), then
builds the global 1-D ``data`` mesh and logs devices and mesh. The config fields are the same
in every launcher (``CONFIG_FIELDS``, added with :func:`add_config_fields`). Only
process 0 writes files (:func:`is_writer`); :func:`barrier` lets the other processes wait
for it. Multi-host input: :func:`global_rows` builds only this process's rows of a global
batch and assembles the global array with ``jax.make_array_from_process_local_data``.

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

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


# The distributed settings every launcher config carries (``--config.<name>=...``).
CONFIG_FIELDS: dict[str, Any] = dict(
    distributed=False,  # call jax.distributed.initialize() before anything touches JAX
    coordinator_address="",  # "host:port" of process 0; "" = auto-detect (TPU, SLURM, MPI)
    num_processes=0,  # 0 = auto-detect
    process_id=-1,  # -1 = auto-detect
    cpu_collectives="gloo",  # CPU cross-process collectives (multi-process CPU runs)
    num_devices=0,  # devices in the data mesh; 0 = all devices of all processes
)


def add_config_fields(config: Any) -> Any:
    """Adds ``CONFIG_FIELDS`` (defaults) to an ``ml_collections.ConfigDict``."""
    for name, default in CONFIG_FIELDS.items():
        config[name] = default
    return config


def data_mesh(num_devices: int | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` global devices (all by default), Auto axis
    type. With several processes the mesh must span every device (``num_devices`` None or
    ``jax.device_count()``): a process without a device in the mesh could not feed it."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices but {len(devices)} are available")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(f"num_devices={n}: with {jax.process_count()} processes the mesh "
                         f"must use all {len(devices)} devices (set num_devices=0)")
    return jax.make_mesh((n,), (axis_name,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Sharding that splits the leading axis over ``axis_name``."""
    return NamedSharding(mesh, P(axis_name))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` on every device of ``mesh``, in fresh buffers (never
    aliasing the input's, nor each other's), so the result can be donated to a step."""
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.device_put(x, sharding, may_alias=False)
        # a host copy per leaf: on CPU a device_put may keep the input's buffer as a shard,
        # and one array used in two fields would be donated twice
        return jax.device_put(np.array(x, copy=True), sharding)

    return jax.tree.map(put, tree)


def on_mesh(tree: Any, mesh: Mesh) -> Any:
    """``tree`` replicated on ``mesh``: leaves already replicated there (parameters a
    data-parallel step returned) as they are, without a copy; the others through
    :func:`replicate` (a host copy each)."""
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        return replicate(x, mesh)

    return jax.tree.map(put, tree)


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


def initialize(config: Any) -> None:
    """``jax.distributed.initialize`` from the ``CONFIG_FIELDS`` of ``config`` when
    ``config.distributed`` is set (nothing otherwise). Must run before anything touches the
    JAX backend; a second call in the same process is a no-op."""
    if not config.get("distributed", False) or jax.distributed.is_initialized():
        return
    addr = config.get("coordinator_address", "") or None
    nproc = config.get("num_processes", 0) or None
    pid = config.get("process_id", -1)
    pid = None if pid is None or pid < 0 else pid
    if (nproc is None) != (addr is None) or (pid is None) != (addr is None):
        raise ValueError(
            "distributed: give coordinator_address, num_processes and process_id together "
            f"(got {addr!r}, {nproc}, {pid}), or none of them to auto-detect (TPU, SLURM, MPI)")
    if config.get("cpu_collectives", ""):
        jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    jax.distributed.initialize(coordinator_address=addr, num_processes=nproc, process_id=pid)


def startup(config: Any, axis_name: str = DATA_AXIS) -> Mesh:
    """The launchers' start-up: :func:`initialize`, then the global data mesh (of
    ``config.num_devices`` devices, 0 = all), then a log line of processes, devices and mesh.
    """
    initialize(config)
    mesh = data_mesh(config.get("num_devices", 0) or None, axis_name)
    logging.info(
        "process %d of %d; %d local / %d global devices (%s); mesh %s over %s",
        jax.process_index(), jax.process_count(), jax.local_device_count(),
        jax.device_count(), jax.devices()[0].platform, dict(mesh.shape),
        [d.id for d in mesh.devices.flat],
    )
    return mesh


def is_writer() -> bool:
    """True on the one process that writes logs, metrics, reports and plots (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches ``name`` (nothing to do with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def check_divisible(batches: dict[str, int], mesh: Mesh, axis_name: str = DATA_AXIS) -> None:
    """Refuses global batch sizes (``{"config.field": size}``) that do not split evenly over
    the mesh, naming the field; a batch is never silently replicated."""
    n = mesh.shape[axis_name]
    bad = {k: v for k, v in batches.items() if v % n}
    if bad:
        raise ValueError(
            "; ".join(f"{k}={v} is not a multiple of the {n} devices of the mesh" for k, v in
                      bad.items()) + f": use a multiple of {n} or set --config.num_devices")


def log_batch(name: str, global_shape: tuple[int, ...], mesh: Mesh,
              axis_name: str = DATA_AXIS) -> None:
    """Logs a global batch shape and the per-device shape it splits into."""
    n = mesh.shape[axis_name]
    per = (global_shape[0] // n, *global_shape[1:])
    logging.info("%s: global batch %s -> per device %s on %d devices", name,
                 tuple(global_shape), per, n)


def process_rows(n: int, mesh: Mesh, axis_name: str = DATA_AXIS) -> slice:
    """The rows ``[start, stop)`` of an ``n``-row global batch that live on this process's
    devices (all rows with one process).

    Raises:
      ValueError: ``n`` does not split over the mesh.
    """
    check_divisible({"batch": n}, mesh, axis_name)
    index = batch_sharding(mesh, axis_name).addressable_devices_indices_map((n,))
    spans = sorted({(s[0].start or 0, n if s[0].stop is None else s[0].stop)
                    for s in index.values()})
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise ValueError(f"this process's rows of the mesh are not contiguous: {spans}")
    return slice(start, stop)


def global_rows(make: Callable[[slice], Any], n: int, mesh: Mesh,
                axis_name: str = DATA_AXIS) -> Any:
    """A global ``n``-row batch of which this process builds only its own rows.

    ``make(rows)`` returns the pytree of numpy arrays for the global rows ``rows`` (a
    ``slice``); the global arrays (split along ``axis_name``) are assembled with
    ``jax.make_array_from_process_local_data``. With a batch order that is a function of
    (seed, step), the global batch is the same for any number of processes.
    """
    rows = process_rows(n, mesh, axis_name)
    sharding = batch_sharding(mesh, axis_name)
    local = make(rows)

    def put(x):
        x = np.asarray(x)
        if x.shape[0] != rows.stop - rows.start:
            raise ValueError(f"make({rows}) returned {x.shape[0]} rows, expected "
                             f"{rows.stop - rows.start}")
        return jax.make_array_from_process_local_data(sharding, x, (n, *x.shape[1:]))

    return jax.tree.map(put, local)


class WriterCheckFailed(RuntimeError):
    """Raised on processes other than 0 when process 0's :func:`writer_checks` failed."""


def writer_checks(name: str, fn: Callable[[], Any]) -> Any:
    """Runs ``fn`` (checks and writes of a run directory) on process 0 only and tells every
    process whether it succeeded: if ``fn`` raises there, process 0 re-raises it and the
    other processes raise :class:`WriterCheckFailed` instead of waiting at the next
    collective for a process that has stopped. Returns ``fn()`` on process 0, None elsewhere.
    """
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    out, err = None, None
    if is_writer():
        try:
            out = fn()
        except Exception as e:  # re-raised below, after the others have been told
            err = e
    ok = multihost_utils.broadcast_one_to_all(np.int32(err is None))
    if err is not None:
        raise err
    if not int(ok):
        raise WriterCheckFailed(f"process 0 stopped at {name!r} (its log says why); "
                                f"process {jax.process_index()} stops too")
    return out


def writer_first(name: str, fn: Callable[[], Any]) -> Any:
    """Runs ``fn`` on process 0 first, then (after a barrier) on the other processes: data
    fetches and cache writes happen once, and the others read the finished cache (fetches
    are atomic, so processes of other hosts with their own disks are safe as well)."""
    if jax.process_count() == 1:
        return fn()
    out = fn() if is_writer() else None
    barrier(f"{name}:written")
    return out if is_writer() else fn()


def to_host(tree: Any) -> Any:
    """Numpy copies of every leaf; arrays split over several processes are gathered first
    (every process must call this for such arrays)."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def _row_step(fn: Callable[..., Any], mesh: Mesh, axis_name: str, n_rows: int
              ) -> Callable[..., Any]:
    """The jitted ``shard_map`` of ``fn`` for :func:`map_rows`, kept on ``fn`` itself (a
    later call with the same ``fn`` and mesh reuses the compiled step; it lives as long as
    ``fn``)."""
    key = (mesh, axis_name, n_rows)
    cache = getattr(fn, "_map_rows_steps", {})
    if key in cache:
        return cache[key]

    def local(c, *batch):
        # device-varying copies: a gradient w.r.t. them stays this device's own (w.r.t.
        # the replicated value, shard_map would sum it over the devices)
        return fn(jax.lax.pcast(c, axis_name, to="varying"), *batch)

    step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), *[P(axis_name)] * n_rows),
                                 out_specs=P(axis_name)))
    try:
        fn._map_rows_steps = {**cache, key: step}
    except AttributeError:  # a callable without attributes (a bound method): not kept
        pass
    return step


def map_rows(fn: Callable[..., Any], consts: Any, rows: tuple[np.ndarray, ...],
             batch_size: int, mesh: Mesh | None = None, axis_name: str = DATA_AXIS,
             wrap: Callable[[Any], Any] = iter) -> Any:
    """``fn(consts, *batch)`` over consecutive batches of ``batch_size`` rows of ``rows``,
    concatenated on the host: per-row scores, features, per-sample gradients.

    ``fn`` must treat rows independently (row ``i`` of its result depends on row ``i`` of
    each input only). Without a mesh (or with a one-device mesh) each batch runs on the
    default device. With a mesh of several devices each device computes only its own rows
    (``jax.shard_map``, no communication): ``consts`` (parameters) are replicated once and
    enter ``fn`` device-varying (so a per-sample gradient inside ``fn`` is not summed over
    the devices), each batch is padded with copies of its first row to a multiple of the
    devices, each process builds only its rows, and the results are gathered to every
    process with the padding dropped. ``wrap`` wraps the iterator of batch starts (a
    progress bar). Pass the same ``fn`` object again (not a new lambda) to reuse its
    compiled step.

    Returns:
      The pytree of ``fn``'s outputs, each leaf a numpy array with ``len(rows[0])`` rows.
    """
    n = len(rows[0])
    if n < 1 or batch_size < 1 or any(len(r) != n for r in rows):
        raise ValueError(f"map_rows needs rows of one positive length and batch_size >= 1; "
                         f"got lengths {[len(r) for r in rows]}, batch_size {batch_size}")
    if mesh is not None and mesh.size == 1:
        mesh = None  # one device: the plain path, bit for bit
    if mesh is None:
        step = fn
    else:
        consts = on_mesh(consts, mesh)  # no copy of parameters already on the mesh
        step = _row_step(fn, mesh, axis_name, len(rows))
    out = []
    for lo in wrap(range(0, n, batch_size)):
        idx = np.arange(lo, min(lo + batch_size, n))
        if mesh is None:
            out.append(jax.tree.map(np.asarray, step(consts, *[jax.numpy.asarray(r[idx])
                                                                for r in rows])))
            continue
        idx = np.pad(idx, (0, -len(idx) % mesh.shape[axis_name]), constant_values=lo)
        batch = global_rows(lambda s, idx=idx: tuple(np.asarray(r[idx[s]]) for r in rows),
                            len(idx), mesh, axis_name)
        real = min(batch_size, n - lo)
        out.append(jax.tree.map(lambda x, real=real: x[:real], to_host(step(consts, *batch))))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *out)
