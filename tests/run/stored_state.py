"""Reading a checkpoint's train state as stored, whatever the devices that wrote it."""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from blackout_jax.run import checkpointing


def read_state(store: checkpointing.CheckpointStore, step: int) -> Any:
    """The ``state`` item of checkpoint ``step`` (nested dicts of arrays) on the first device;
    shapes and dtypes come from the checkpoint's metadata."""
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    stored = store._manager.item_metadata(step)["state"]
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), stored
    )
    restored = store._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
    return restored["state"]
