"""Parameter arrays held as one contiguous vector per dtype.

The optimiser, the EMA and the non-finite guard do the same elementwise work on every
parameter array. On the network's pytree (216 arrays for digits, 570 for CIFAR-10) that is one
small kernel per array and per operation, several times the network's own kernels; on one
vector per dtype it is a handful of kernels whatever the number of arrays.
:class:`FlatLayout` records where each array lives in those vectors:

* ``ravel(tree) -> {dtype name: (P_dtype,) vector}``: the leaves of each dtype, flattened
  and concatenated in ``jax.tree.leaves`` order;
* ``unravel(vectors) -> tree``: slices and reshapes back to the network's pytree.

The training step keeps parameters, optimiser moments and the EMA as vectors and unravels the
parameters for the network; the gradient is taken with respect to the *unravelled* tree and
ravelled once (one concatenation), because differentiating through the slices would pad each
array's gradient to the vector's full length.

Parameters are replicated today, so the vectors are too. A model with sharded parameters
would flatten per shard: each device concatenates its own blocks of every array, so the
vector is sharded along its only axis in equal blocks, the optimiser's elementwise work stays
local, and only the global norm of the gradient clipping needs a sum over devices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where one leaf lives: vector ``dtype``, elements ``start .. start + size``."""

    dtype: str
    start: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class FlatLayout:
    """The positions of a pytree's leaves in one vector per dtype (hashable; static under jit).

    Build it with :meth:`of` from the tree (or its ``jax.ShapeDtypeStruct`` leaves).
    """

    treedef: Any
    slots: tuple[_Slot, ...]

    @classmethod
    def of(cls, tree: Any) -> FlatLayout:
        """The layout of ``tree``: leaves of each dtype in ``jax.tree.leaves`` order."""
        leaves, treedef = jax.tree.flatten(tree)
        ends: dict[str, int] = {}
        slots = []
        for leaf in leaves:
            dtype = np.dtype(leaf.dtype).name
            slot = _Slot(dtype, ends.get(dtype, 0), tuple(int(d) for d in leaf.shape))
            ends[dtype] = slot.start + slot.size
            slots.append(slot)
        return cls(treedef, tuple(slots))

    @property
    def sizes(self) -> dict[str, int]:
        """``{dtype name: P_dtype}``, the length of each vector."""
        sizes: dict[str, int] = {}
        for slot in self.slots:
            sizes[slot.dtype] = slot.start + slot.size
        return sizes

    def abstract(self, sharding: jax.sharding.Sharding | None = None) -> dict[str, Any]:
        """``{dtype name: jax.ShapeDtypeStruct((P_dtype,))}`` (a restore target)."""
        return {
            dtype: jax.ShapeDtypeStruct((size,), np.dtype(dtype), sharding=sharding)
            for dtype, size in self.sizes.items()
        }

    def abstract_tree(self, sharding: jax.sharding.Sharding | None = None) -> Any:
        """The pytree of :meth:`ravel`'s input with ``jax.ShapeDtypeStruct`` leaves."""
        return self.treedef.unflatten(
            [
                jax.ShapeDtypeStruct(s.shape, np.dtype(s.dtype), sharding=sharding)
                for s in self.slots
            ]
        )

    def ravel(self, tree: Any) -> dict[str, jax.Array]:
        """``{dtype name: vector}``: the leaves of ``tree`` (this layout's structure),
        flattened and concatenated per dtype."""
        leaves = self.treedef.flatten_up_to(tree)
        parts: dict[str, list[jax.Array]] = {dtype: [] for dtype in self.sizes}
        for slot, leaf in zip(self.slots, leaves, strict=True):
            parts[slot.dtype].append(jnp.ravel(jnp.asarray(leaf, slot.dtype)))
        return {dtype: jnp.concatenate(arrays) for dtype, arrays in parts.items()}

    def unravel(self, vectors: dict[str, jax.Array]) -> Any:
        """The pytree of :meth:`ravel`'s input back from its vectors."""
        for dtype, size in self.sizes.items():
            if vectors[dtype].shape != (size,):
                raise ValueError(
                    f"the {dtype} parameter vector has shape {vectors[dtype].shape}; this "
                    f"network's layout needs ({size},)"
                )
        leaves = [
            vectors[slot.dtype][slot.start : slot.start + slot.size].reshape(slot.shape)
            for slot in self.slots
        ]
        return self.treedef.unflatten(leaves)
