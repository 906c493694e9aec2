"""Many samples in chunks: sharded over every device, resumable after an interruption.

``generate_samples`` draws ``num_samples`` examples in chunks of ``chunk_size``. Chunk ``i`` uses
the key ``fold_in(key, i)``, so the result depends only on the key, the chunk size and the model,
not on the number of devices or hosts, nor on whether the run was interrupted. With a
``chunk_dir`` every finished chunk is written there (``chunk_00000.npy``, ...; by the primary
host, atomically), and chunks already on disk are read back instead of being drawn again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from blackout_jax import sampling

Array = jax.Array


def _chunk_path(chunk_dir: Path, index: int) -> Path:
    return chunk_dir / f"chunk_{index:05d}.npy"


def _write_atomically(path: Path, array: np.ndarray) -> None:
    partial = path.with_suffix(".partial.npy")
    np.save(partial, array, allow_pickle=False)
    os.replace(partial, path)


def generate_samples(
    key: Array,
    predict_fn: Callable[[Array, Array], Array],
    *,
    num_samples: int,
    example_shape: tuple[int, ...],
    times: Array,
    max_count: int,
    method: str = "binomial_bridge",
    start: str = "prior",
    chunk_size: int,
    chunk_dir: str | os.PathLike[str] | None = None,
    sharding: jax.sharding.Sharding | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Draw ``num_samples`` int32 samples of ``example_shape`` with :func:`blackout_jax.sample`.

    Args:
      key: PRNG key; chunk ``i`` is drawn with ``fold_in(key, i)``.
      predict_fn: the model, as for :func:`blackout_jax.sample`.
      num_samples: how many samples (``>= 1``); the last chunk is drawn whole and cut.
      example_shape: shape of one example, e.g. ``(H, W, C)``.
      times, max_count, method, start: as for :func:`blackout_jax.sample`.
      chunk_size: samples per chunk; a multiple of the device count when ``sharding`` splits
        the batch.
      chunk_dir: where finished chunks are kept; chunks found there are reused (resume).
      sharding: sharding of each chunk's batch (e.g. ``NamedSharding(mesh, P("data"))``).
      progress: a progress bar over the chunks on stderr (primary host only).

    Returns:
      ``(num_samples, *example_shape)`` int32 array on every host.
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(
            f"num_samples and chunk_size must be >= 1, got {num_samples} and {chunk_size}"
        )
    num_chunks = -(-num_samples // chunk_size)
    directory = Path(chunk_dir) if chunk_dir is not None else None
    if directory is not None and jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    indices = range(num_chunks)
    if progress and jax.process_index() == 0:
        from tqdm import tqdm

        indices = tqdm(indices, desc="sample chunks", unit="chunk")
    chunks = []
    for index in indices:
        path = _chunk_path(directory, index) if directory is not None else None
        if path is not None and path.exists():
            chunk = np.load(path, allow_pickle=False)
            if chunk.shape != (chunk_size, *example_shape):
                raise ValueError(
                    f"{path} holds shape {chunk.shape}, expected {(chunk_size, *example_shape)}: "
                    "it was written with another chunk size or model; remove the folder"
                )
        else:
            drawn = sampling.sample(
                jax.random.fold_in(key, index),
                predict_fn,
                (chunk_size, *example_shape),
                times,
                max_count=max_count,
                method=method,
                start=start,
                sharding=sharding,
            )
            chunk = np.asarray(multihost_utils.process_allgather(drawn, tiled=True))
            if path is not None and jax.process_index() == 0:
                _write_atomically(path, chunk)
        chunks.append(chunk)
    return np.concatenate(chunks)[:num_samples].astype(np.int32)
