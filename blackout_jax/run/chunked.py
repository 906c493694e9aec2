"""The one chunked sampler driver: work in chunks, sharded over every device, resumable.

:func:`run_in_chunks` is the one driver behind every batch of sampler calls of the run layer
(the training-time sample grids, ``--mode=sample``, ``--mode=evaluate``'s samples and bound,
``--mode=impute`` and ``--mode=unthin``); :func:`generate_samples` draws samples through it.
Chunk ``i`` of ``chunk_size`` examples is computed from the key ``fold_in(key, i)`` and rows
``[i chunk_size, (i + 1) chunk_size)`` of the inputs (the last chunk padded to full size, so one
compilation serves all chunks, and cut after), so the result depends only on the key, the chunk
size and the model, not on the number of devices or hosts, nor on whether the run was
interrupted. With a ``chunk_dir`` every finished chunk is written there (``chunk_00000.npy``,
...; by the primary host, with :func:`blackout_jax.run.reporting.write_atomically`) and chunks
already on disk are read back instead of being computed again. The folder must be keyed by
everything the chunks depend on (the key, the model, the settings): a chunk found there is
taken as the one the same call would draw. A chunk that cannot be read, or (with
``value_range``) holds a value that is not an integer in that range, is named in one
``warning:`` line and computed again.

Class labels travel through the chunks as an input; the model comes as a :class:`PredictFor`,
which gives each chunk its predict function from that chunk's labels (or ``None``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils

from blackout_jax import sampling
from blackout_jax.run import parallel, reporting, safety
from blackout_jax.run.progress import ProgressReporter, sampler_progress

Array = jax.Array
ChunkFn = Callable[..., Array]


class PredictFor(Protocol):
    """``predict_for(labels=y) -> predict_fn(counts (B, ...), t (B,)) -> yhat (B, ...)``.

    The predict function for a batch whose examples have the class labels ``y`` ``(B,)``, or,
    with ``labels=None``, no labels (an unconditional model, or a conditional one's null
    label). ``functools.partial(blackout_jax.models.make_predict_fn, graphdef, *states,
    guidance_scale=w)`` is one; a model without labels is ``lambda labels: predict_fn``.
    """

    def __call__(self, *, labels: Array | None) -> Callable[[Array, Array], Array]: ...


def _chunk_path(chunk_dir: Path, index: int) -> Path:
    return chunk_dir / f"chunk_{index:05d}.npy"


def _warn_redrawn(path: Path, problem: str) -> None:
    print(f"warning: {path} {problem}; drawing that chunk again", file=sys.stderr, flush=True)


def _read_chunk(path: Path, value_range: tuple[int, int] | None) -> np.ndarray | None:
    """A finished chunk, or ``None`` (with a warning naming it) when the file is damaged or
    holds a value that is not an integer in ``value_range``: the chunk is then computed again,
    with the same key, so the result does not change."""
    try:
        chunk = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        _warn_redrawn(path, f"cannot be read ({type(error).__name__}: {error})")
        return None
    if value_range is None:
        return chunk
    low, high = value_range
    if chunk.dtype.kind not in "biuf":
        _warn_redrawn(path, f"holds {chunk.dtype} values, not counts in {low}..{high}")
        return None
    with np.errstate(invalid="ignore"):
        bad = ~((chunk >= low) & (chunk <= high) & (chunk == np.round(chunk)))
    if bad.any():
        index = np.unravel_index(int(np.argmax(bad)), chunk.shape)
        value = chunk[index].item()
        _warn_redrawn(
            path,
            f"holds {value!r} at {tuple(int(i) for i in index)} ({int(bad.sum())} values "
            f"in all) that is not a count in {low}..{high}",
        )
        return None
    return chunk


def _padded_rows(array: np.ndarray, start: int, size: int) -> np.ndarray:
    rows = array[start : start + size]
    if len(rows) == size:
        return rows
    padding = np.zeros((size - len(rows), *array.shape[1:]), array.dtype)
    return np.concatenate([rows, padding])


def run_in_chunks(
    key: Array,
    compute_chunk: ChunkFn,
    *,
    num_examples: int,
    chunk_size: int,
    inputs: Sequence[np.ndarray] = (),
    chunk_dir: str | os.PathLike[str] | None = None,
    sharding: jax.sharding.Sharding | None = None,
    progress: bool = False,
    description: str = "chunks",
    value_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """``compute_chunk(fold_in(key, i), *chunk_inputs)`` for every chunk ``i``, concatenated.

    Args:
      key: PRNG key; chunk ``i`` is computed with ``fold_in(key, i)``.
      compute_chunk: returns the chunk's ``(chunk_size, ...)`` result; it receives the key and,
        for each array of ``inputs``, that chunk's rows (padded with zeros to ``chunk_size``,
        placed on ``sharding``).
      num_examples: how many rows the result has (``>= 1``); the last chunk is cut.
      chunk_size: rows per chunk; a multiple of the device count when ``sharding`` splits them.
      inputs: per-example arrays with ``num_examples`` rows each (e.g. observed counts).
      chunk_dir: where finished chunks are kept; chunks found there are reused (resume).
      sharding: sharding of each chunk's inputs (e.g. ``NamedSharding(mesh, P("data"))``).
      progress: a progress bar over the chunks on stderr (primary host only).
      description: the bar's label.
      value_range: ``(low, high)``: a chunk read back from ``chunk_dir`` must hold integers in
        ``low..high`` (e.g. counts in ``0..max_count``); one that does not is drawn again.

    Returns:
      ``(num_examples, ...)`` NumPy array, the same on every host.

    Raises:
      ValueError: ``num_examples`` or ``chunk_size`` < 1, inputs of the wrong length, or a chunk
        on disk of another shape (naming the file).
    """
    if num_examples < 1 or chunk_size < 1:
        raise ValueError(
            f"num_examples and chunk_size must be >= 1, got {num_examples} and {chunk_size}"
        )
    for position, array in enumerate(inputs):
        if len(array) != num_examples:
            raise ValueError(
                f"inputs[{position}] has {len(array)} rows, expected num_examples={num_examples}"
            )
    num_chunks = -(-num_examples // chunk_size)
    directory = Path(chunk_dir) if chunk_dir is not None else None
    if directory is not None and jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    indices: Sequence[int] = range(num_chunks)
    if progress and jax.process_index() == 0:
        indices = ProgressReporter(num_chunks, unit="chunk", description=description).track(indices)
    chunks: list[np.ndarray] = []
    for index in indices:
        path = _chunk_path(directory, index) if directory is not None else None
        chunk = _read_chunk(path, value_range) if path is not None and path.exists() else None
        if chunk is not None:
            wanted = chunks[0].shape if chunks else (chunk_size, *chunk.shape[1:])
            if chunk.shape != wanted:
                raise ValueError(
                    f"{path} holds shape {chunk.shape}, expected {wanted}: it was written "
                    "with another chunk size or model; remove the folder"
                )
        else:
            start = index * chunk_size
            chunk_inputs = [_padded_rows(np.asarray(a), start, chunk_size) for a in inputs]
            if sharding is not None:
                chunk_inputs = [parallel.shared_array(a, sharding) for a in chunk_inputs]
            result = compute_chunk(jax.random.fold_in(key, index), *chunk_inputs)
            chunk = np.asarray(multihost_utils.process_allgather(result, tiled=True))
            if path is not None and jax.process_index() == 0:
                reporting.write_atomically(
                    path, lambda file, chunk=chunk: np.save(file, chunk, allow_pickle=False)
                )
        chunks.append(chunk)
        safety.stop_if_interrupted(parallel.any_process)  # every process at the same chunk
    return np.concatenate(chunks)[:num_examples]


def generate_samples(
    key: Array,
    predict_for: PredictFor,
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
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """Draw ``num_samples`` int32 samples of ``example_shape`` with :func:`blackout_jax.sample`.

    Chunk ``i`` is ``sample(fold_in(key, i), predict_for(labels=y_i), (chunk_size,
    *example_shape), times, max_count=..., method=..., start=...)``, ``y_i`` the chunk's rows
    ``[i chunk_size, (i + 1) chunk_size)`` of ``labels`` ``(num_samples,)`` (padded with label
    0), or ``None`` without labels; see :func:`run_in_chunks` for resuming and sharding. With
    ``progress`` the primary host shows the chunks and, within each chunk, the sampler's steps.

    Returns:
      ``(num_samples, *example_shape)`` int32 array on every host.
    """

    def draw(chunk_key: Array, chunk_labels: Array | None = None) -> Array:
        return sampling.sample(
            chunk_key,
            predict_for(labels=chunk_labels),
            (chunk_size, *example_shape),
            times,
            max_count=max_count,
            method=method,
            start=start,
            sharding=sharding,
            progress=sampler_progress(progress and jax.process_index() == 0),
        )

    samples = run_in_chunks(
        key,
        draw,
        num_examples=num_samples,
        chunk_size=chunk_size,
        inputs=() if labels is None else (np.asarray(labels, np.int32),),
        chunk_dir=chunk_dir,
        sharding=None if labels is None else sharding,
        progress=progress,
        description="sample chunks",
        value_range=(0, max_count),
    )
    return samples.astype(np.int32)
