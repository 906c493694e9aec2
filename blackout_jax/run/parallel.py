"""Devices, meshes and global arrays for data-parallel training (one host or many).

Training runs one ``jax.jit``-compiled program over a 1-D :class:`jax.sharding.Mesh` of every
device in the job (axis ``"data"``). The batch is split over the devices
(``NamedSharding(mesh, P("data"))``); parameters, optimiser state and EMA are replicated
(``NamedSharding(mesh, P())``). Several hosts join through :func:`initialize_distributed`; each
host then feeds its own slice of every global batch (:func:`global_batch`) and the compiled
program sees one global array.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# Environment variables set by launchers that start one process per host (or per device).
_CLUSTER_SIZE_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _launched_as_cluster() -> bool:
    """Whether the environment describes a multi-process job that JAX can detect by itself."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for name in _CLUSTER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join a multi-process job through ``jax.distributed.initialize``; a no-op on one host.

    The call must come before any other JAX computation. With explicit arguments (a job
    started by hand, e.g. two processes on localhost) they are passed on; otherwise JAX's own
    cluster detection runs when the environment describes a multi-process job (Slurm, Open MPI,
    a multi-host TPU slice, or ``JAX_COORDINATOR_ADDRESS``). A single process does nothing.

    Returns:
      ``True`` when ``jax.distributed.initialize`` was called.

    Raises:
      ValueError: ``num_processes < 1`` or ``process_id`` outside ``0..num_processes-1``.
    """
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in 0..{num_processes - 1}, got {process_id}")
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if explicit:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        return True
    if _launched_as_cluster():
        jax.distributed.initialize()
        return True
    return False


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process), axis ``"data"``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the ``"data"`` axis, the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding_for(size: int) -> NamedSharding:
    """A batch of ``size`` split over every device when it divides evenly, else replicated."""
    mesh = create_mesh()
    if size % jax.device_count() == 0:
        return batch_sharding(mesh)
    return replicated_sharding(mesh)


def global_batch(local_batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """One global array from this process's rows of a global batch.

    Process ``p`` of ``P`` holds rows ``[p b, (p + 1) b)`` of the global batch (``b`` rows,
    global batch ``P b``), as the data iterators yield them; the global array has shape
    ``(P b, ...)`` and is split over the mesh by ``sharding``.
    """
    local_batch = np.asarray(local_batch)
    global_shape = (local_batch.shape[0] * jax.process_count(),) + local_batch.shape[1:]
    return jax.make_array_from_process_local_data(sharding, local_batch, global_shape)


def shared_array(data: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from ``data`` that every process holds in full (e.g. held-out examples)."""
    data = np.asarray(data)
    return jax.make_array_from_process_local_data(sharding, data, data.shape)


def to_host(tree: Any) -> Any:
    """Fetch a pytree of (possibly multi-process) arrays as NumPy arrays, the same on every host.

    Arrays that span devices of other processes are gathered with
    ``multihost_utils.process_allgather``; this is a collective, so every process must call it.
    """

    def fetch(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)


def any_process(flag: bool) -> bool:
    """``True`` on every process when ``flag`` is true on at least one (a collective)."""
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
    return bool(np.any(flags))


PRIMARY_TEXT_BYTES = 4096
"""The longest text :func:`primary_text` passes on (UTF-8 bytes; longer is cut)."""


def primary_text(text: str) -> str:
    """Process 0's ``text`` on every process (a collective; ``text`` as given on one process).

    For an outcome that process 0 alone finds (an output folder it cannot write, a run folder
    another trainer holds) and every process must act on alike: the same error line, at the
    same point, instead of one process leaving while the others wait for it in a collective.
    ``""`` = nothing found. At most :data:`PRIMARY_TEXT_BYTES` bytes of UTF-8 pass.
    """
    if jax.process_count() == 1:
        return text
    encoded = text.encode("utf-8")[:PRIMARY_TEXT_BYTES]
    buffer = np.zeros(PRIMARY_TEXT_BYTES + 1, np.int32)
    buffer[0] = len(encoded)
    buffer[1 : 1 + len(encoded)] = np.frombuffer(encoded, np.uint8)
    agreed = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    length = int(agreed[0])
    return bytes(agreed[1 : 1 + length].astype(np.uint8)).decode("utf-8", errors="replace")


def is_primary() -> bool:
    """Whether this is process 0, the one that writes logs, metrics and images."""
    return jax.process_index() == 0
