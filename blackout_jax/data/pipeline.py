"""The training stream: seeded epochs, host-count independent global batches, resumable state.

**The stream.** Epoch ``e`` is a permutation ``perm_e`` of the ``N`` training indices drawn from
``(seed, e)`` alone. The stream is the concatenation ``perm_0, perm_1, ...``: stream position
``g`` holds training example ``perm_{g // N}[g % N]``. Nothing is dropped: a batch that reaches
the end of an epoch continues into the next one. Global batch ``k`` (of size ``B``) is the
slice of positions ``[k B, (k + 1) B)``.

**Hosts.** With ``P`` processes each reads ``b = B / P`` rows: process ``p`` gets rows
``[p b, (p + 1) b)`` of every global batch, and reads only those examples. Global batches
therefore do not depend on ``P``, and neither do the random left-right flips: whether stream
position ``g`` is flipped is a hash of ``(seed, g)``.

**Labels.** A conditional stream (``with_labels``) yields ``(counts, labels)`` pairs, the
labels (``np.int32`` (b,)) of the same examples read from the same source; the positions, the
host split and the flips are those of the unconditional stream, which yields counts alone.

**State.** The iterator's state is its position in the stream, a JSON-serialisable dict
(``examples_consumed``, ``batches_consumed`` and what the stream depends on); ``set_state``
continues exactly where the saved iterator stopped, whatever the process count.

**Reading.** Batches are built by a ``grain.MapDataset`` (element ``i`` = this process's slice
of the ``i``-th global batch from the resume point) and read ahead by grain's thread pool
(``prefetch`` batches in flight).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from blackout_jax.data import count_checks
from blackout_jax.data.sparse_source import source_moments

_UINT64_MASK = (1 << 64) - 1
_PERMUTATION_STREAM = 0x5045524D  # separates the epoch permutations from other seeded draws
_FLIP_STREAM = 0x464C4950
_STATE_VERSION = 1
Batch = np.ndarray | tuple[np.ndarray, np.ndarray]
"""Counts, or ``(counts, labels)`` for a conditional stream."""
# Read threads for sources that do I/O and decoding (TFDS); in-memory arrays use one.
MAX_READ_THREADS = 16
# The held-out split of own counts is fixed by the data, not by the run's seed.
COUNTS_SPLIT_SEED = 0


class ExampleSource(Protocol):
    """Random access to examples: ``len(source)`` and ``source.read(indices)``.

    ``read`` returns ``np.int32`` counts of shape (len(indices), H, W, C), or (len(indices), D)
    for count vectors (cells x genes). ``read_threads`` is
    how many threads may usefully read at once (1 for in-memory arrays). A source with class
    labels also has ``read_labelled(indices) -> (counts, labels)``, the labels ``np.int32``
    (len(indices),), each record read once.
    """

    read_threads: int

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """An in-memory ``np.int32`` array (N, H, W, C) or (N, D) as an :class:`ExampleSource`, with
    optional
    ``np.int32`` (N,) class labels."""

    counts: np.ndarray
    read_threads: int = 1
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self.counts[np.asarray(indices, np.int64)]

    def read_labelled(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.labels is None:
            raise ValueError("this source has no class labels")
        indices = np.asarray(indices, np.int64)
        return self.counts[indices], self.labels[indices]


def _seed64(seed: int) -> int:
    return int(seed) & _UINT64_MASK


def fixed_split(
    num_examples: int, num_test: int, *, source: str, split_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A held-out split that depends only on ``(num_examples, num_test, split_seed)``.

    Returns:
      ``(train_indices, test_indices)`` (int64): the last ``num_test`` entries of a permutation
      of ``range(num_examples)`` drawn with ``split_seed`` are the test split, the rest (in
      permutation order) the training split.

    Raises:
      ValueError: ``num_test >= num_examples`` (naming ``source``) or ``num_test < 0``.
    """
    count_checks.check_num_test(num_test, num_examples, source=source)
    order = np.random.default_rng(split_seed).permutation(num_examples)
    return order[: num_examples - num_test], order[num_examples - num_test :]


@functools.lru_cache(maxsize=4)
def _cached_permutation(seed64: int, epoch: int, num_examples: int) -> np.ndarray:
    sequence = np.random.SeedSequence([seed64, _PERMUTATION_STREAM, epoch])
    permutation = np.random.default_rng(sequence).permutation(num_examples)
    permutation.setflags(write=False)
    return permutation


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order of the training indices in epoch ``epoch``: a permutation drawn from (seed, epoch).

    Returns:
      Read-only int64 array (num_examples,), a permutation of ``range(num_examples)``.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return _cached_permutation(_seed64(seed), int(epoch), int(num_examples))


def stream_indices(positions: np.ndarray, *, seed: int, num_examples: int) -> np.ndarray:
    """Training-example indices at the given stream positions: ``perm_{g // N}[g % N]``.

    Args:
      positions: int64 stream positions ``g >= 0``, any shape.
      seed: the stream's seed.
      num_examples: ``N``, the number of training examples.

    Returns:
      int64 indices in ``range(N)``, the shape of ``positions``.
    """
    positions = np.asarray(positions, np.int64)
    epochs, offsets = np.divmod(positions, num_examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
        in_epoch = epochs == epoch
        indices[in_epoch] = epoch_permutation(seed, int(epoch), num_examples)[offsets[in_epoch]]
    return indices


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective 64-bit hash (uint64 in, uint64 out)."""
    with np.errstate(over="ignore"):
        values = values + np.uint64(0x9E3779B97F4A7C15)
        values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def flip_decisions(positions: np.ndarray, *, seed: int) -> np.ndarray:
    """Whether the example at each stream position is flipped left-right (probability 1/2).

    A hash of ``(seed, position)``, so the decision belongs to the stream position and not
    to the process that reads it.

    Returns:
      bool array, the shape of ``positions``.
    """
    key = _mix64(np.array([_seed64(seed) ^ _FLIP_STREAM], np.uint64))[0]
    hashed = _mix64(np.asarray(positions, np.int64).astype(np.uint64) ^ key)
    return (hashed >> np.uint64(63)).astype(bool)


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """What a stream depends on (besides the data): batch size, seed, flips and this host."""

    num_examples: int
    global_batch_size: int
    seed: int
    random_flip: bool
    process_index: int
    process_count: int
    with_labels: bool = False

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    def local_positions(self, first_position: int) -> np.ndarray:
        """Stream positions of this process's rows of the global batch starting at ``first``."""
        start = first_position + self.process_index * self.local_batch_size
        return np.arange(start, start + self.local_batch_size, dtype=np.int64)


def read_positions(source: ExampleSource, spec: StreamSpec, positions: np.ndarray) -> Batch:
    """Counts at the given stream positions, flipped where the stream says so.

    Returns:
      ``np.int32`` (len(positions), *example_shape); with ``spec.with_labels`` the pair
      ``(counts, labels)``, labels ``np.int32`` (len(positions),).
    """
    indices = stream_indices(positions, seed=spec.seed, num_examples=spec.num_examples)
    if spec.with_labels:
        batch, labels = source.read_labelled(indices)
    else:
        batch, labels = source.read(indices), None
    batch = np.asarray(batch, dtype=np.int32)
    if spec.random_flip:
        flips = flip_decisions(positions, seed=spec.seed)
        batch = np.where(flips[:, None, None, None], batch[:, :, ::-1, :], batch)
    if labels is None:
        return batch
    return batch, np.asarray(labels, dtype=np.int32)


class TrainIterator(Iterator[Batch]):
    """This process's slices of the global training batches, endlessly, with a resumable state.

    Each ``next()`` returns ``np.int32`` counts (b, *example_shape), b = global_batch_size //
    process_count:
    rows ``[p b, (p + 1) b)`` of the next global batch; with ``with_labels`` the pair
    ``(counts, labels)``, labels ``np.int32`` (b,). Build it with
    :meth:`blackout_jax.data.CountDataset.train_iterator`.
    """

    def __init__(
        self,
        source: ExampleSource,
        *,
        dataset_name: str,
        global_batch_size: int,
        seed: int,
        random_flip: bool = False,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 2,
        with_labels: bool = False,
    ) -> None:
        for name, value, minimum in (
            ("global_batch_size", global_batch_size, 1),
            ("process_count", process_count, 1),
            ("process_index", process_index, 0),
            ("prefetch", prefetch, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
        if process_index >= process_count:
            raise ValueError(
                f"process_index must be in 0..{process_count - 1} for process_count="
                f"{process_count}, got {process_index}"
            )
        if global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size = {global_batch_size} must be divisible by process_count = "
                f"{process_count} (every process reads an equal slice of each global batch)"
            )
        if len(source) < 1:
            raise ValueError(f"dataset {dataset_name!r} has no training examples")
        if with_labels and not hasattr(source, "read_labelled"):
            raise ValueError(f"dataset {dataset_name!r} has no class labels")
        self._source = source
        self._dataset_name = dataset_name
        self._spec = StreamSpec(
            num_examples=len(source),
            global_batch_size=int(global_batch_size),
            seed=int(seed),
            random_flip=bool(random_flip),
            process_index=int(process_index),
            process_count=int(process_count),
            with_labels=bool(with_labels),
        )
        self._prefetch = int(prefetch)
        self._examples_consumed = 0
        self._batches_consumed = 0
        self._batches: Iterator[Batch] | None = None

    @property
    def spec(self) -> StreamSpec:
        return self._spec

    @property
    def local_batch_size(self) -> int:
        return self._spec.local_batch_size

    def global_batch(self, batch_offset: int = 0) -> Batch:
        """The whole global batch ``batch_offset`` batches after the current position (all rows).

        Reads every row, not only this process's; meant for inspection and tests.
        """
        first = self._examples_consumed + batch_offset * self._spec.global_batch_size
        positions = np.arange(first, first + self._spec.global_batch_size, dtype=np.int64)
        return read_positions(self._source, self._spec, positions)

    def _local_batch(self, start_position: int, element: int) -> Batch:
        first = start_position + element * self._spec.global_batch_size
        return read_positions(self._source, self._spec, self._spec.local_positions(first))

    def _start(self) -> Iterator[Batch]:
        import grain

        threads = min(self._prefetch, max(1, int(getattr(self._source, "read_threads", 1))))
        batches = grain.MapDataset.range(0, sys.maxsize).map(
            functools.partial(self._local_batch, self._examples_consumed)
        )
        options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=self._prefetch)
        return iter(batches.to_iter_dataset(options))

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> Batch:
        if self._batches is None:
            self._batches = self._start()
        batch = next(self._batches)
        self._examples_consumed += self._spec.global_batch_size
        self._batches_consumed += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """The position in the stream, JSON-serialisable (plain ints, strings and bools); a
        conditional stream adds ``"labels": True``."""
        state = {
            "version": _STATE_VERSION,
            "dataset": self._dataset_name,
            "num_train": self._spec.num_examples,
            "seed": self._spec.seed,
            "random_flip": self._spec.random_flip,
            "global_batch_size": self._spec.global_batch_size,
            "examples_consumed": self._examples_consumed,
            "batches_consumed": self._batches_consumed,
        }
        if self._spec.with_labels:
            state["labels"] = True
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues the stream at the saved position (any process count).

        A state saved with another ``global_batch_size`` continues at the same stream
        position (``examples_consumed``) with this iterator's batch size.

        Raises:
          ValueError: a malformed state, or one saved for another dataset, training-set size,
            seed or flip setting (that would be a different stream).
        """
        if not isinstance(state, dict) or "examples_consumed" not in state:
            raise ValueError(
                f"data iterator state must be a dict with 'examples_consumed', got {state!r}"
            )
        expected = {
            "dataset": self._dataset_name,
            "num_train": self._spec.num_examples,
            "seed": self._spec.seed,
            "random_flip": self._spec.random_flip,
        }
        saved_labels = bool(state.get("labels", False))
        if saved_labels != self._spec.with_labels:
            raise ValueError(
                f"data iterator state was saved with labels={saved_labels}, but this stream has "
                f"labels={self._spec.with_labels} (model.num_classes differs); resuming it would "
                "not continue the same stream"
            )
        for key, value in expected.items():
            if key in state and state[key] != value:
                raise ValueError(
                    f"data iterator state was saved with {key}={state[key]!r}, but this stream "
                    f"has {key}={value!r}; resuming it would not continue the same stream"
                )
        examples = state["examples_consumed"]
        if isinstance(examples, bool) or not isinstance(examples, (int, np.integer)):
            raise ValueError(f"examples_consumed must be an integer, got {examples!r}")
        if examples < 0:
            raise ValueError(f"examples_consumed must be >= 0, got {examples}")
        self.close()
        self._examples_consumed = int(examples)
        batches = state.get("batches_consumed")
        if state.get("global_batch_size") != self._spec.global_batch_size or batches is None:
            batches = int(examples) // self._spec.global_batch_size
        self._batches_consumed = int(batches)

    def close(self) -> None:
        """Stops the read-ahead threads (the iterator can still continue afterwards)."""
        if self._batches is not None:
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()
            self._batches = None

    def __enter__(self) -> TrainIterator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter shutdown grain may already be torn down.
        with contextlib.suppress(Exception):
            self.close()


@dataclasses.dataclass(frozen=True)
class DataShape:
    """What a network needs to know of the data.

    Attributes:
      example_shape: the shape of one example, ``(H, W, C)``, or ``(D,)`` for count vectors.
      max_count: the largest count ``N``.
      num_classes: class labels in ``[0, num_classes)``; 0 = none.
    """

    example_shape: tuple[int, ...]
    max_count: int
    num_classes: int = 0


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """The features (genes) of a dataset of count vectors, as read and as kept.

    Attributes:
      files: the files read, in order (their cells are concatenated in this order).
      num_source_features: D0, the features in the files.
      source_indices: int64 (D,): the kept features' indices among the D0, increasing.
      names: the kept features' names (D), or ``None`` when the files name none.
      ids: the kept features' ids (D) (e.g. Ensembl ids of 10x files), or ``None``.
      selection: ``""`` when all features are kept, else ``"mean"`` or ``"variance"``: the
        top D by that statistic of the training split's raw counts.
    """

    files: tuple[str, ...]
    num_source_features: int
    source_indices: np.ndarray
    names: tuple[str, ...] | None = None
    ids: tuple[str, ...] | None = None
    selection: str = ""

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-feature lists)."""
        return {
            "num_features": len(self.source_indices),
            "num_source_features": int(self.num_source_features),
            "feature_selection": self.selection or "all",
            "files": list(self.files),
        }

    def records(self) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per kept feature: ``index`` (its position in a count
        vector), ``source_index`` (in the files), and ``name`` and ``id`` when known."""
        records = []
        for index, source_index in enumerate(self.source_indices):
            record: dict[str, Any] = {"index": index, "source_index": int(source_index)}
            if self.names is not None:
                record["name"] = self.names[index]
            if self.ids is not None:
                record["id"] = self.ids[index]
            records.append(record)
        return records


@dataclasses.dataclass
class CountDataset:
    """A validated dataset of integer counts: a training stream and a fixed held-out split.

    Attributes:
      name: the dataset (``data.name``).
      image_shape: the shape of one example: (H, W, C), or (D,) for count vectors.
      max_count: the largest count N (declared, fixed by the dataset, or inferred).
      max_count_inferred: whether ``max_count`` was inferred from the data.
      origin: where the data came from (a path, ``sklearn``, or a TFDS data_dir).
      train_source, test_source: :class:`ExampleSource` of the two splits.
      random_flip: whether training examples are flipped left-right at random.
      seed: the default stream seed.
      prefetch: batches read ahead by :meth:`train_iterator`.
      num_classes: ``> 0``: both sources have class labels in ``[0, num_classes)`` and the
        training stream yields ``(counts, labels)``; 0: unconditional, counts alone.
      feature_set: for count vectors, their features (:class:`FeatureSet`); else ``None``.
      class_names: the names of classes ``0..`` when the labels were strings, else ``None``.
    """

    name: str
    image_shape: tuple[int, ...]
    max_count: int
    train_source: ExampleSource
    test_source: ExampleSource
    origin: str
    max_count_inferred: bool = False
    random_flip: bool = False
    seed: int = 0
    prefetch: int = 2
    num_classes: int = 0
    feature_set: FeatureSet | None = None
    class_names: tuple[str, ...] | None = None
    _test_cache: dict[str, np.ndarray] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def num_train(self) -> int:
        return len(self.train_source)

    @property
    def shape(self) -> DataShape:
        """The :class:`DataShape` of the examples."""
        return DataShape(
            tuple(int(d) for d in self.image_shape), int(self.max_count), int(self.num_classes)
        )

    @property
    def num_test(self) -> int:
        return len(self.test_source)

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        """The D feature names of count vectors, when the files name them."""
        return None if self.feature_set is None else self.feature_set.names

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts for the run folder (shape, max count and how it was set;
        for count vectors also ``num_features``, ``num_source_features``,
        ``feature_selection`` and ``files``)."""
        facts = {
            "name": self.name,
            "image_shape": [int(d) for d in self.image_shape],
            "max_count": int(self.max_count),
            "max_count_inferred": bool(self.max_count_inferred),
            "num_train": self.num_train,
            "num_test": self.num_test,
            "random_flip": bool(self.random_flip),
            "origin": self.origin,
        }
        if self.num_classes:
            facts["num_classes"] = int(self.num_classes)
        if self.class_names is not None:
            facts["class_names"] = list(self.class_names)
        if self.feature_set is not None:
            facts |= self.feature_set.describe()
        return facts

    def features(self) -> list[dict[str, Any]]:
        """The kept features of count vectors, one JSON-serialisable dict each
        (:meth:`FeatureSet.records`: ``index``, ``source_index``, ``name``, ``id``).

        Raises:
          ValueError: the dataset holds images, not count vectors.
        """
        if self.feature_set is None:
            raise ValueError(f"dataset {self.name!r} holds images, not count vectors")
        return self.feature_set.records()

    def feature_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and population variance of the training split's counts.

        ``mean_j = (1/N) sum_i x_ij``, ``var_j = (1/N) sum_i x_ij**2 - mean_j**2`` over the N
        training examples (sparse counts are never made dense).

        Returns:
          ``(mean, variance)``, float64 of shape ``image_shape`` ((D,) for count vectors).
        """
        return source_moments(self.train_source)

    def test_examples(self, num: int | None = None) -> np.ndarray:
        """The first ``min(num, num_test)`` held-out examples (all of them for ``None``).

        The same array on every host and every call (never shuffled, never flipped).

        Returns:
          Read-only ``np.int32`` (n, *image_shape).
        """
        available = self.num_test
        if num is None:
            num = available
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 0:
            raise ValueError(f"num must be None or an integer >= 0, got {num!r}")
        num = min(int(num), available)
        cached = self._test_cache.get("examples")
        if cached is None or cached.shape[0] < num:
            cached = np.asarray(self.test_source.read(np.arange(num)), np.int32)
            cached = cached.reshape((num, *self.image_shape))
            cached.setflags(write=False)
            self._test_cache["examples"] = cached
        return cached[:num]

    def test_labels(self, num: int | None = None) -> np.ndarray:
        """The class labels of :meth:`test_examples` ``(num)``: read-only ``np.int32`` (n,).

        Raises:
          ValueError: the dataset has no labels (``num_classes == 0``).
        """
        if not self.num_classes:
            raise ValueError(f"dataset {self.name!r} was loaded without class labels")
        num = self.test_examples(num).shape[0]
        cached = self._test_cache.get("labels")
        if cached is None or cached.shape[0] < num:
            cached = np.asarray(self.test_source.read_labelled(np.arange(num))[1], np.int32)
            cached.setflags(write=False)
            self._test_cache["labels"] = cached
        return cached[:num]

    def train_iterator(
        self,
        *,
        global_batch_size: int,
        seed: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int | None = None,
    ) -> TrainIterator:
        """The endless training stream; this process's slice of each global batch.

        Args:
          global_batch_size: ``B``, examples per global batch (all processes together).
          seed: the stream's seed (default: the dataset's ``seed``).
          process_index, process_count: this process and how many read (default:
            ``jax.process_index()`` and ``jax.process_count()``).
          prefetch: batches read ahead in threads (default: the dataset's ``prefetch``).

        Returns:
          A :class:`TrainIterator` yielding int32 (B // process_count, *image_shape), paired with
          their labels when ``num_classes > 0``.
        """
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        return TrainIterator(
            self.train_source,
            dataset_name=self.name,
            global_batch_size=global_batch_size,
            seed=self.seed if seed is None else seed,
            random_flip=self.random_flip,
            process_index=process_index,
            process_count=process_count,
            prefetch=self.prefetch if prefetch is None else prefetch,
            with_labels=self.num_classes > 0,
        )
