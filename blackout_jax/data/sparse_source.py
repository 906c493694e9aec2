"""Count vectors kept sparse until a batch is read, and their per-feature moments.

A cells x genes matrix of single-cell counts is mostly zeros (98-99% for 10x data), so it is
held as a CSR matrix (memory O(nnz)) and only the rows of a batch are made dense:
:class:`SparseSource` is an :class:`blackout_jax.data.pipeline.ExampleSource` whose ``read``
returns ``np.int32`` (len(indices), D).

:func:`source_moments` gives the per-feature mean and variance of a source's examples, and
:func:`select_features` the features of largest mean (or variance) over a set of rows.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse

FEATURE_SELECTIONS = ("mean", "variance")
# Rows per dense block when a source offers nothing but ``read``.
_MOMENT_BLOCK_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class SparseSource:
    """A CSR matrix of counts (N, D) as an :class:`ExampleSource` of dense int32 rows.

    Attributes:
      matrix: ``scipy.sparse.csr_matrix`` (N, D) of int32 counts.
      labels: optional ``np.int32`` (N,) class labels.
      read_threads: 1 (in memory).
    """

    matrix: scipy.sparse.csr_matrix
    labels: np.ndarray | None = None
    read_threads: int = 1

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` as dense ``np.int32`` (len(indices), D)."""
        rows = self.matrix[np.asarray(indices, np.int64)]
        return np.asarray(rows.toarray(), dtype=np.int32)

    def read_labelled(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.labels is None:
            raise ValueError("this source has no class labels")
        indices = np.asarray(indices, np.int64)
        return self.read(indices), self.labels[indices]


def column_moments(matrix: np.ndarray | scipy.sparse.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population variance of a dense or sparse (N, D) matrix, in float64.

    ``mean_j = (1/N) sum_i x_ij`` and ``var_j = (1/N) sum_i x_ij**2 - mean_j**2`` (clipped at 0
    against rounding). A sparse matrix is never made dense.

    Returns:
      ``(mean, variance)``, each float64 (D,).
    """
    num_rows = matrix.shape[0]
    if num_rows == 0:
        raise ValueError("column moments need at least one row")
    if scipy.sparse.issparse(matrix):
        values = scipy.sparse.csr_matrix(matrix, dtype=np.float64)
        total = np.asarray(values.sum(axis=0)).ravel()
        squares = np.asarray(values.multiply(values).sum(axis=0)).ravel()
    else:
        values = np.asarray(matrix, np.float64).reshape(num_rows, -1)
        total = values.sum(axis=0)
        squares = np.square(values).sum(axis=0)
    mean = total / num_rows
    variance = np.maximum(squares / num_rows - np.square(mean), 0.0)
    return mean, variance


def source_moments(source: object) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population variance over all examples of an ExampleSource.

    A :class:`SparseSource` is read without densifying it, an in-memory ``ArraySource``
    directly, any other source in blocks of rows through ``read``.

    Returns:
      ``(mean, variance)``, each float64 of the shape of one example ((D,) or (H, W, C)).
    """
    matrix = getattr(source, "matrix", None)
    if matrix is None:
        matrix = getattr(source, "counts", None)
    if matrix is not None:
        example_shape = (matrix.shape[1],) if scipy.sparse.issparse(matrix) else matrix.shape[1:]
        mean, variance = column_moments(matrix)
        return mean.reshape(example_shape), variance.reshape(example_shape)
    num = len(source)
    total = squares = None
    for start in range(0, num, _MOMENT_BLOCK_ROWS):
        block = np.asarray(
            source.read(np.arange(start, min(num, start + _MOMENT_BLOCK_ROWS))), np.float64
        )
        block_total, block_squares = block.sum(axis=0), np.square(block).sum(axis=0)
        total = block_total if total is None else total + block_total
        squares = block_squares if squares is None else squares + block_squares
    mean = total / num
    return mean, np.maximum(squares / num - np.square(mean), 0.0)


def select_features(
    matrix: np.ndarray | scipy.sparse.spmatrix,
    rows: np.ndarray,
    *,
    num_features: int,
    selection: str,
) -> np.ndarray | None:
    """The ``num_features`` columns of largest mean (or variance) over ``rows`` of ``matrix``.

    Only the given rows (the training split) are looked at. Ties go to the earlier column.

    Args:
      matrix: counts (N, D), dense or sparse.
      rows: int64 row indices the statistic is computed over.
      num_features: how many columns to keep; 0 (or D) keeps all.
      selection: ``"mean"`` or ``"variance"`` (population variance) of the raw counts.

    Returns:
      The kept column indices in increasing (original) order, int64 (num_features,), or
      ``None`` when every column is kept.

    Raises:
      ValueError: an unknown ``selection``, or ``num_features`` negative or above D.
    """
    if selection not in FEATURE_SELECTIONS:
        raise ValueError(
            f"data.feature_selection must be one of {list(FEATURE_SELECTIONS)}, got {selection!r}"
        )
    if num_features < 0:
        raise ValueError(f"data.num_features must be >= 0 (0 = all), got {num_features}")
    num_columns = matrix.shape[1]
    if num_features > num_columns:
        raise ValueError(
            f"data.num_features = {num_features} is more than the {num_columns} features of "
            "the data; lower it (0 keeps all)"
        )
    if num_features in (0, num_columns):
        return None
    mean, variance = column_moments(matrix[np.asarray(rows, np.int64)])
    score = mean if selection == "mean" else variance
    ranked = np.argsort(-score, kind="stable")[:num_features]
    return np.sort(ranked).astype(np.int64)
