"""Digests of a checkpoint's arrays: silent corruption on disk becomes a damaged checkpoint.

A flipped bit in a checkpoint's compressed array file can decode without error into other
values. :func:`digests` records two checksums per array at save time (in the checkpoint's
metadata), computed on the device; :func:`verify_digests` compares them after a restore.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


class DamagedCheckpointError(ValueError):
    """A checkpoint's arrays decoded to other values than were saved (a digest differs)."""


def path_name(path: tuple[Any, ...]) -> str:
    """``params.float32``: a pytree path as orbax names the array it stores."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
    return ".".join(parts)


@jax.jit
def _checksums(tree: Any) -> Any:
    """Two uint32 sums per leaf over its bytes read as unsigned words ``w_i``:
    ``sum w_i`` and ``sum (2 i + 1) w_i`` (mod 2**32); any change of one word changes both."""

    def sums(leaf: jax.Array) -> jax.Array:
        leaf = jnp.ravel(leaf)
        if leaf.dtype == jnp.bool_:
            leaf = leaf.astype(jnp.uint8)
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[leaf.dtype.itemsize]
        words = jax.lax.bitcast_convert_type(leaf, unsigned).astype(jnp.uint32)
        odd = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1
        return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * odd, dtype=jnp.uint32)])

    return jax.tree.map(sums, tree)


def digests(tree: Any) -> dict[str, str]:
    """``{array name: 16 hex digits}``: checksums of every array of ``tree``, computed on the
    device (integer sums: the same on any number of devices); waits for the device."""
    sums = jax.tree_util.tree_leaves_with_path(jax.device_get(_checksums(tree)))
    return {path_name(path): "".join(f"{int(v):08x}" for v in value) for path, value in sums}


def verify_digests(tree: Any, metadata: dict[str, Any], step: int, prefix: str = "") -> None:
    """Raise :class:`DamagedCheckpointError` when an array of ``tree`` (restored from checkpoint
    ``step``; named ``prefix`` + its path) differs from the digest saved with it. Checkpoints
    saved without digests pass."""
    saved = metadata.get("digests")
    if not isinstance(saved, dict):
        return
    for name, digest in digests(tree).items():
        name = f"{prefix}.{name}" if prefix else name
        if name in saved and saved[name] != digest:
            raise DamagedCheckpointError(
                f"array {name} of checkpoint {step} does not match the digest saved with it"
            )
