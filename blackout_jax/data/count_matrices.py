"""Count vectors (cells x features) from one or several files, as a :class:`CountDataset`.

``data.path`` names one file (or Matrix Market folder), or several separated by commas that
share one feature space; their cells are concatenated in the order given. Formats:
:mod:`blackout_jax.data.count_files` (10x HDF5, scipy sparse and dense ``.npy``/``.npz``),
:mod:`blackout_jax.data.count_text_files` (Matrix Market, CSV/TSV) and
:mod:`blackout_jax.data.anndata_files` (``.h5ad``).

The held-out split is :func:`blackout_jax.data.pipeline.fixed_split` with
``COUNTS_SPLIT_SEED``, as for images. ``data.num_features > 0`` then keeps the features of
largest training-split mean (or variance, ``data.feature_selection``) of the raw counts, in
their original order; the held-out cells are never looked at. The largest count is declared
(``data.max_count``, checked on the kept features) or inferred from the kept features of all
cells. Sparse input stays sparse (:class:`blackout_jax.data.sparse_source.SparseSource`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from blackout_jax.data import (
    anndata_files,
    arrays,
    count_checks,
    count_files,
    count_text_files,
)
from blackout_jax.data.count_files import CountMatrix
from blackout_jax.data.pipeline import (
    COUNTS_SPLIT_SEED,
    ArraySource,
    CountDataset,
    FeatureSet,
    fixed_split,
)
from blackout_jax.data.sparse_source import SparseSource, select_features

PATH_SEPARATOR = ","


def split_paths(path: str) -> list[str]:
    """The files of ``data.path``: comma-separated, surrounding spaces ignored.

    Raises:
      ValueError: an empty entry (``"a.h5,,b.h5"``) or no path at all.
    """
    paths = [part.strip() for part in str(path).split(PATH_SEPARATOR)]
    if not any(paths) or not all(paths):
        raise ValueError(
            f"data.path must name one file or several separated by commas, got {path!r}"
        )
    return paths


def is_count_matrix_input(paths: list[str], array_key: str = "") -> bool:
    """Whether ``paths`` hold count vectors: several files, or one in a count-matrix format
    (:func:`blackout_jax.data.count_files.is_count_matrix_path`)."""
    return len(paths) > 1 or count_files.is_count_matrix_path(paths[0], array_key)


def read_count_file(
    path: str | os.PathLike[str],
    *,
    array_key: str = "",
    label_key: str = "",
    num_classes: int = 0,
) -> CountMatrix:
    """Reads and checks one count-matrix file, picking the reader by suffix.

    Args:
      path: the file, or a Matrix Market folder.
      array_key: the array of an ``.npz`` or the layer of an ``.h5ad`` (``''``: the first
        array, or ``X``); must be empty for the other formats.
      label_key: the ``obs`` column of an ``.h5ad`` holding class labels.
      num_classes: ``> 0`` reads class labels too (``.h5ad`` obs column, or the ``labels``
        array of a dense ``.npz``).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ImportError: an ``.h5ad`` file without anndata installed.
      ValueError: an unknown format, a misplaced key, missing labels, or bad data.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data.path: {str(path)!r} does not exist")
    suffix = count_files.file_suffix(path)
    is_h5ad = suffix == count_files.H5AD_SUFFIX
    is_array = suffix in arrays.ARRAY_SUFFIXES and not count_files.is_sparse_npz(path)
    if label_key and not is_h5ad:
        raise ValueError(
            f"data.label_key = {label_key!r} names an obs column of an .h5ad file, but "
            f"{str(path)!r} is not one; leave it empty (class labels of an .npz are its "
            f"{arrays.LABELS_KEY!r} array)"
        )
    if array_key and not (is_h5ad or is_array):
        raise ValueError(
            f"data.array_key = {array_key!r} names an array of an .npz or a layer of an .h5ad "
            f"file, but {str(path)!r} is neither; leave data.array_key empty"
        )
    if is_h5ad:
        matrix = anndata_files.read_h5ad(
            path, array_key=array_key, label_key=label_key if num_classes else ""
        )
    elif path.is_dir() or suffix in count_files.MATRIX_MARKET_SUFFIXES:
        matrix = count_text_files.read_matrix_market(path)
    elif suffix in count_files.TENX_SUFFIXES:
        matrix = count_files.read_tenx_h5(path)
    elif suffix in count_files.DELIMITERS:
        matrix = count_text_files.read_delimited(path)
    elif suffix == ".npz" and not is_array:
        matrix = count_files.read_sparse_npz(path)
    elif is_array:
        matrix = count_files.read_dense_vectors(path, array_key)
        if num_classes:
            labels = arrays.load_labels(path, num_classes=num_classes, num_examples=matrix.shape[0])
            labels_source = f"{path}[{arrays.LABELS_KEY!r}]"
            matrix = dataclasses.replace(matrix, labels=labels, labels_source=labels_source)
    else:
        raise ValueError(
            f"data.path: {str(path)!r} is not a count-matrix file; use 10x HDF5 (.h5), Matrix "
            "Market (.mtx, .mtx.gz or its folder), .csv/.tsv(.gz), .h5ad, a scipy sparse .npz "
            "or a dense (N, D) .npy/.npz"
        )
    if num_classes and matrix.labels is None:
        hint = (
            "set data.label_key to its obs column holding them"
            if is_h5ad
            else "use an .h5ad with data.label_key, or a dense .npz with an array "
            f"{arrays.LABELS_KEY!r}"
        )
        raise ValueError(
            f"data.path: {str(path)!r} gives no class labels, but conditional training "
            f"(model.num_classes = {num_classes}) needs one per cell; {hint}"
        )
    return matrix


def _first_difference(first: tuple[str, ...], other: tuple[str, ...]) -> int | None:
    for index, (a, b) in enumerate(zip(first, other, strict=True)):
        if a != b:
            return index
    return None


def check_same_features(matrices: list[CountMatrix]) -> None:
    """All files must share one feature space: the same D, and the same names and ids (where
    both files have them) in the same order.

    Raises:
      ValueError: naming both files and the first differing feature (index and names).
    """
    first = matrices[0]
    for other in matrices[1:]:
        if other.shape[1] != first.shape[1]:
            raise ValueError(
                f"data.path: {other.source} has {other.shape[1]} features but {first.source} "
                f"has {first.shape[1]}; the files must share one feature space"
            )
        for what in ("feature_names", "feature_ids"):
            ours, theirs = getattr(first, what), getattr(other, what)
            if ours is None or theirs is None:
                continue
            index = _first_difference(ours, theirs)
            if index is not None:
                raise ValueError(
                    f"data.path: feature {index} is {ours[index]!r} in {first.source} but "
                    f"{theirs[index]!r} in {other.source} ({what.replace('_', ' ')} differ); "
                    "the files must share one feature space in one order"
                )


def stack_counts(matrices: list[CountMatrix]) -> np.ndarray | scipy.sparse.csr_matrix:
    """The cells of all files, in order: dense when every file is dense, CSR otherwise."""
    if all(isinstance(m.counts, np.ndarray) for m in matrices):
        return np.concatenate([m.counts for m in matrices])
    parts = [scipy.sparse.csr_matrix(m.counts) for m in matrices]
    return scipy.sparse.vstack(parts, format="csr", dtype=np.int32)


def class_labels(
    matrices: list[CountMatrix], num_classes: int
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Class labels of all cells as int32 (N,) in ``[0, num_classes)``, and the class names.

    Integer labels are used as they are (``class_names`` ``None``); string labels (an obs
    column of cell types) are numbered in sorted order over all files.

    Raises:
      ValueError: a label out of range, or more distinct string labels than ``num_classes``.
    """
    raw = [np.asarray(m.labels) for m in matrices]
    source = ", ".join(m.labels_source for m in matrices)
    num_cells = sum(len(r) for r in raw)
    if all(r.dtype.kind in "iuf" for r in raw):
        labels = count_checks.check_labels(
            np.concatenate(raw), source=source, num_classes=num_classes, num_examples=num_cells
        )
        return labels, None
    strings = np.concatenate([r.astype(str) for r in raw])
    names = np.unique(strings)
    if len(names) > num_classes:
        raise ValueError(
            f"{source} holds {len(names)} classes {names.tolist()[:20]}, more than "
            f"model.num_classes = {num_classes}"
        )
    codes = np.searchsorted(names, strings).astype(np.int32)
    return codes, tuple(str(name) for name in names)


def _kept_names(
    matrices: list[CountMatrix], what: str, indices: np.ndarray
) -> tuple[str, ...] | None:
    """The kept features' ``what`` (``feature_names`` or ``feature_ids``) from the first file
    that has them."""
    values = next((getattr(m, what) for m in matrices if getattr(m, what) is not None), None)
    return None if values is None else tuple(values[int(i)] for i in indices)


def check_declared_max_count(
    counts: np.ndarray | scipy.sparse.csr_matrix,
    max_count: int,
    *,
    matrices: list[CountMatrix],
    source_indices: np.ndarray,
) -> None:
    """Every kept count must be ``<= max_count``.

    Raises:
      ValueError: naming the file, the cell, the feature (its index and name in the file) and
        the value of the first count above ``max_count``.
    """
    offsets = np.cumsum([0] + [m.shape[0] for m in matrices])

    def where(row: int, column: int) -> str:
        file = int(np.searchsorted(offsets, row, side="right")) - 1
        matrix = matrices[file]
        names = count_files.CellFeatureNames(matrix.source, matrix.cell_names, matrix.feature_names)
        return names.where(row - int(offsets[file]), int(source_indices[column]))

    problem = f"counts must be <= the declared max count {max_count}"
    hint = " (raise data.max_count, or set it to 0 to infer it from the data)"
    if scipy.sparse.issparse(counts):
        entries = counts.tocoo()
        count_checks.raise_first(
            entries.data,
            entries.data > max_count,
            lambda index: where(int(entries.row[index[0]]), int(entries.col[index[0]])),
            problem,
            hint,
        )
    else:
        count_checks.raise_first(
            counts, counts > max_count, lambda index: where(*index), problem, hint
        )


def _largest(counts: np.ndarray | scipy.sparse.csr_matrix) -> int:
    if scipy.sparse.issparse(counts):
        return int(counts.data.max()) if counts.nnz else 0
    return int(counts.max())


def _source(counts, labels: np.ndarray | None, rows: np.ndarray) -> ArraySource | SparseSource:
    labels = None if labels is None else labels[rows]
    if scipy.sparse.issparse(counts):
        return SparseSource(counts[rows], labels=labels)
    return ArraySource(np.ascontiguousarray(counts[rows]), labels=labels)


def load_count_vectors(
    data_config: Any, paths: list[str], *, num_classes: int = 0, **dataset_fields: Any
) -> CountDataset:
    """Reads, checks, splits and selects the count vectors of ``paths`` (see the module doc).

    Args:
      data_config: the ``data`` section: ``array_key``, ``label_key``, ``max_count``,
        ``num_test``, ``num_features``, ``feature_selection`` are read.
      paths: the files (:func:`split_paths`).
      num_classes: ``model.num_classes``; ``> 0`` reads class labels.
      dataset_fields: further :class:`CountDataset` fields (``seed``, ``prefetch``).

    Returns:
      A :class:`CountDataset` with ``image_shape`` (D,) and a :class:`FeatureSet`.
    """
    count_checks.check_declared_max_count(data_config.max_count)
    matrices = [
        read_count_file(
            path,
            array_key=data_config.array_key,
            label_key=data_config.label_key,
            num_classes=num_classes,
        )
        for path in paths
    ]
    check_same_features(matrices)
    counts = stack_counts(matrices)
    labels, class_names = class_labels(matrices, num_classes) if num_classes else (None, None)
    origin = ", ".join(m.source for m in matrices)
    train_rows, test_rows = fixed_split(
        counts.shape[0], data_config.num_test, source=origin, split_seed=COUNTS_SPLIT_SEED
    )
    kept = select_features(
        counts,
        train_rows,
        num_features=data_config.num_features,
        selection=data_config.feature_selection,
    )
    source_indices = np.arange(counts.shape[1], dtype=np.int64) if kept is None else kept
    if kept is not None:
        counts = counts[:, kept]
    declared = int(data_config.max_count)
    if declared:
        check_declared_max_count(counts, declared, matrices=matrices, source_indices=source_indices)
    feature_set = FeatureSet(
        files=tuple(str(path) for path in paths),
        num_source_features=matrices[0].shape[1],
        source_indices=source_indices,
        names=_kept_names(matrices, "feature_names", source_indices),
        ids=_kept_names(matrices, "feature_ids", source_indices),
        selection="" if kept is None else data_config.feature_selection,
    )
    return CountDataset(
        name="counts",
        image_shape=(int(counts.shape[1]),),
        max_count=declared or max(1, _largest(counts)),
        max_count_inferred=not declared,
        train_source=_source(counts, labels, train_rows),
        test_source=_source(counts, labels, test_rows),
        origin=origin,
        num_classes=num_classes,
        feature_set=feature_set,
        class_names=class_names,
        **dataset_fields,
    )
