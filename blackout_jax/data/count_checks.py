"""Checks of count data before training: every failure names the file, the index and the value.

The loaders call these on the whole array before they return, so a bad value stops a run before
anything is written to its run folder. Each failure is a ``ValueError`` whose message names the
data's origin (a file, an ``.npz`` key, a PNG), the index of the first offending element in the
array as stored (for example ``counts.npz['x'][12, 3, 4, 0]``) and its value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Counts travel as int32 through the pipeline and the network.
LARGEST_COUNT = int(np.iinfo(np.int32).max)

Locator = Callable[[tuple[int, ...]], str]


def index_locator(source: str) -> Locator:
    """Formats an element index of the array called ``source``: ``source[i, j, ...]``."""

    def locate(index: tuple[int, ...]) -> str:
        return f"{source}[{', '.join(str(i) for i in index)}]"

    return locate


def _first_index(bad: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))


def raise_first(
    values: np.ndarray, bad: np.ndarray, locate: Locator, problem: str, hint: str = ""
) -> None:
    if bad.any():
        index = _first_index(bad)
        value = values[index].item()
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # a whole number read as float (text files) reads as stored
        count = int(np.count_nonzero(bad))
        others = f" ({count - 1} more such values)" if count > 1 else ""
        raise ValueError(f"{locate(index)} = {value!r}: {problem}{others}{hint}")


def _check_numeric_dtype(values: np.ndarray, source: str) -> None:
    dtype = values.dtype
    if not (
        dtype == np.bool_ or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        raise ValueError(
            f"{source} must hold numbers (integer, float or bool), got dtype {dtype} "
            f"with shape {values.shape}"
        )


def _check_value_range(values: np.ndarray, locate: Locator, max_count: int | None) -> np.ndarray:
    """Finite, whole, ``>= 0`` and ``<= max_count`` (or ``<= 2**31 - 1``); returns int32."""
    if values.dtype == np.bool_:
        values = values.astype(np.int32)
    if np.issubdtype(values.dtype, np.floating):
        raise_first(values, ~np.isfinite(values), locate, "counts must be finite (no NaN or inf)")
        raise_first(
            values,
            values != np.floor(values),
            locate,
            "counts must be whole numbers",
        )
    raise_first(values, values < 0, locate, "counts must be non-negative")
    if max_count is not None:
        raise_first(
            values,
            values > max_count,
            locate,
            f"counts must be <= the declared max count {max_count}",
            " (raise data.max_count, or set it to 0 to infer it from the data)",
        )
    else:
        raise_first(
            values,
            values > LARGEST_COUNT,
            locate,
            f"counts must be <= {LARGEST_COUNT} (they are stored as int32)",
        )
    return values.astype(np.int32)


def check_count_values(
    values: np.ndarray,
    *,
    source: str,
    max_count: int | None = None,
    locate: Locator | None = None,
) -> np.ndarray:
    """Validates an array of counts and returns it as int32: (N, D) vectors or (N, H, W, C).

    Accepted: a numeric (bool, integer or floating) array of shape (N, D) (count vectors, e.g.
    cells x genes), (N, H, W, C) or (N, H, W) (a channel axis of size 1 is added), with at
    least one element, whose values are finite, whole, ``>= 0`` and ``<= max_count`` (when
    given; otherwise ``<= 2**31 - 1``).

    Args:
      values: the array as loaded.
      source: the data's origin for messages, e.g. ``"counts.npz['x']"``.
      max_count: the declared largest count, or ``None`` when it is inferred from the data.
      locate: formats an element index for messages (default ``source[i, j, ...]``).

    Returns:
      ``np.int32`` array (N, D) or (N, H, W, C).

    Raises:
      ValueError: naming ``source``, the first bad index and its value.
    """
    locate = locate or index_locator(source)
    values = np.asarray(values)
    _check_numeric_dtype(values, source)
    if values.ndim not in (2, 3, 4):
        raise ValueError(
            f"{source} must have shape (N, D) (count vectors), (N, H, W, C) or (N, H, W) "
            f"(images), got shape {values.shape} (rank {values.ndim})"
        )
    if values.size == 0:
        raise ValueError(f"{source} is empty: shape {values.shape} has no elements")
    counts = _check_value_range(values, locate, max_count)
    if counts.ndim == 3:
        counts = counts[..., None]
    return counts


def check_entry_values(
    values: np.ndarray, *, source: str, locate: Locator, max_count: int | None = None
) -> np.ndarray:
    """Validates the stored entries of a sparse count matrix (any order) and returns int32.

    Accepted: a one-dimensional numeric array whose values are finite, whole, ``>= 0`` and
    ``<= max_count`` (when given; otherwise ``<= 2**31 - 1``).

    Args:
      values: the entries, shape (nnz,).
      source: the file, for messages about the dtype.
      locate: formats entry ``(k,)`` for messages, e.g. as its file, cell and feature.
      max_count: the declared largest count, or ``None``.

    Raises:
      ValueError: naming the first bad entry (through ``locate``) and its value.
    """
    values = np.asarray(values).reshape(-1)
    _check_numeric_dtype(values, source)
    return _check_value_range(values, locate, max_count)


def infer_max_count(counts: np.ndarray) -> int:
    """The largest count in ``counts``, at least 1 (an all-zero array still needs N >= 1)."""
    return max(1, int(np.max(counts)))


def check_declared_max_count(max_count: int) -> None:
    """``data.max_count`` must be an integer ``>= 0`` (0 means: infer from the data)."""
    if isinstance(max_count, (bool, np.bool_)) or not isinstance(max_count, (int, np.integer)):
        raise ValueError(f"data.max_count must be an integer >= 0, got {max_count!r}")
    if not 0 <= max_count <= LARGEST_COUNT:
        raise ValueError(f"data.max_count must be in 0..{LARGEST_COUNT}, got {max_count}")


def check_num_test(num_test: int, num_examples: int, *, source: str) -> None:
    """The held-out split must leave at least one training example.

    Raises:
      ValueError: ``num_test < 0`` or ``num_test >= num_examples``, naming both and ``source``.
    """
    if isinstance(num_test, (bool, np.bool_)) or not isinstance(num_test, (int, np.integer)):
        raise ValueError(f"data.num_test must be an integer >= 0, got {num_test!r}")
    if num_test < 0:
        raise ValueError(f"data.num_test must be >= 0, got {num_test}")
    if num_test >= num_examples:
        raise ValueError(
            f"data.num_test = {num_test} held-out examples is too many for {source}, which "
            f"has {num_examples} examples; the test split must leave at least one training "
            "example (lower data.num_test)"
        )


def check_labels(
    values: np.ndarray, *, source: str, num_classes: int, num_examples: int
) -> np.ndarray:
    """Validates class labels, one per example, and returns them as int32 of shape (N,).

    Accepted: a one-dimensional integer array, or a floating one holding whole numbers, of
    ``num_examples`` entries, each in ``0..num_classes - 1``.

    Args:
      values: the labels as loaded.
      source: their origin for messages, e.g. ``"counts.npz['labels']"``.
      num_classes: the number of classes (``model.num_classes``), ``>= 1``.
      num_examples: the number of examples the labels belong to.

    Raises:
      ValueError: a wrong shape or dtype, or the first bad label, naming ``source``, the index
        and the value.
    """
    values = np.asarray(values)
    if values.shape != (num_examples,):
        raise ValueError(
            f"{source} has shape {values.shape}; expected one label per example, "
            f"shape ({num_examples},)"
        )
    if values.dtype.kind not in "iuf":
        raise ValueError(f"{source} must hold integers, got dtype {values.dtype}")
    locate = index_locator(source)
    if values.dtype.kind == "f":
        raise_first(values, ~np.isfinite(values), locate, "labels must be finite integers")
        raise_first(values, values != np.floor(values), locate, "labels must be integers")
    requirement = f"labels must be in [0, {num_classes}) (model.num_classes = {num_classes})"
    raise_first(values, (values < 0) | (values >= num_classes), locate, requirement)
    return values.astype(np.int32)
