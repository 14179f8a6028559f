"""Device meshes for data- and model-parallel training (``jax.make_mesh``, no ``pmap``).

One 1-D mesh over every visible device, its axis named by the layout:

* ``data``: each training batch is split over the devices, parameters are
  replicated, gradients are summed by XLA (the batch mean is unchanged);
* ``models``: K models trained together are spread over the devices, K / n on
  each.

Multi-host: call :func:`initialize_distributed` first, on every process; the
mesh then spans the devices of all processes.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_vae import rules
from jax_vae.errors import InvalidArgument
from jax_vae.vocab import LAYOUTS

DATA, MODELS = LAYOUTS

# Environment variables that say this process is one of several.
_CLUSTER_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
)


def make_mesh(layout: str = DATA, *, devices: list | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes).

    Args:
      layout: ``data`` or ``models``: the name of the mesh axis.
      devices: The devices to use, e.g. ``jax.devices()[:1]``.

    Returns:
      The mesh, with an automatically partitioned axis.
    """
    rules.choice("layout", layout, LAYOUTS)
    devices = list(devices) if devices is not None else jax.devices()
    return jax.make_mesh(
        (len(devices),), (layout,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full array on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def leading_axis(mesh: Mesh) -> NamedSharding:
    """Split the leading axis (models) over the mesh."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def check_data_parallel(batch_size: int, width: int) -> None:
    """Data parallel: each batch splits evenly over ``width`` devices.

    Raises:
      InvalidArgument: Naming ``batch_size``.
    """
    if batch_size % width:
        raise InvalidArgument(
            f"batch_size {batch_size} must divide by the data-parallel width ({width} devices)"
        )


def initialize_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins a multi-process run when flags or the cluster environment say there is one.

    Args:
      coordinator_address: ``host:port`` of process 0; with ``num_processes``
        and ``process_id`` for clusters JAX does not detect by itself.
      num_processes: Number of processes.
      process_id: This process's index.

    Returns:
      True when ``jax.distributed.initialize`` was called.
    """
    explicit = coordinator_address is not None or num_processes is not None
    in_cluster = any(os.environ.get(v) for v in _CLUSTER_ENV)
    if os.environ.get("SLURM_NTASKS") == "1" and not explicit:
        in_cluster = False  # One task: nothing to join.
    if not (explicit or in_cluster):
        return False
    # CPU processes need a collectives backend; GPU and TPU clients ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True


def is_main_process() -> bool:
    """True on the process that writes files (process 0)."""
    return jax.process_index() == 0


def put(x, target: NamedSharding) -> jax.Array:
    """Places ``x`` (the same full value in every process) with ``target``.

    ``jax.device_put`` only reaches this process's devices; across processes
    each one builds its own shards from its full copy.
    """
    if target.is_fully_addressable:
        return jax.device_put(x, target)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = put(jax.random.key_data(x), target)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def local_copy(tree):
    """Host (NumPy) copies of arrays that may be spread over several processes.

    Fully addressable arrays are fetched; replicated multi-process arrays come
    from this process's first shard; sharded ones are gathered from all processes.
    """

    def fetch(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(jax.device_get(a))
        if a.sharding.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(fetch, tree)


def on_one_device(tree):
    """``tree`` on a single local device, for work (such as scoring) that needs no mesh.

    Arrays already on one device stay where they are; replicated or sharded
    ones are copied once, rather than re-sent with every later call.
    """
    leaves = jax.tree.leaves(tree)
    if all(isinstance(a, jax.Array) and len(a.sharding.device_set) == 1 for a in leaves):
        return tree
    return jax.device_put(local_copy(tree), jax.local_devices()[0])
