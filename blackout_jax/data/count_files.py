"""Readers of count matrices (cells x features) in the formats single-cell tools write.

Each reader returns a :class:`CountMatrix`: int32 counts of shape (N cells, D features), sparse
(``scipy.sparse.csr_matrix``) or dense, with the feature names (and ids) and cell names the file
holds. Formats (:func:`blackout_jax.data.count_matrices.read_count_file` picks one by suffix):

* 10x Cell Ranger HDF5 (``.h5``): ``matrix/{data, indices, indptr, shape, barcodes}`` and
  ``matrix/features/{name, id}``, a CSC matrix of features x cells; its columns are the CSR rows
  of cells x features, so it is read entry block by entry block and never made dense.
* Matrix Market (``.mtx``/``.mtx.gz`` or its folder) and ``.csv``/``.tsv`` tables:
  :mod:`blackout_jax.data.count_text_files`.
* ``scipy.sparse.save_npz`` files (``.npz`` with ``format``, ``shape`` and csr/csc/coo arrays).
* dense ``.npy``/``.npz`` arrays (N, D); an ``.npz`` may name its features in an array
  ``feature_names``.

Every entry is checked before a reader returns: finite, whole, ``0 <= x <= 2**31 - 1``, indices
in range, no (cell, feature) stored twice, and no size in a header larger than what the file
holds. Failures are ``ValueError`` naming the file, the cell (index and name) and the feature
(index and name) where known, and the value.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse

from blackout_jax.data import arrays, count_checks

TENX_SUFFIXES = (".h5", ".hdf5")
MATRIX_MARKET_SUFFIXES = (".mtx", ".mtx.gz")
DELIMITERS = {".csv": ",", ".csv.gz": ",", ".tsv": "\t", ".tsv.gz": "\t"}
H5AD_SUFFIX = ".h5ad"
FEATURE_NAMES_KEY = "feature_names"
_SPARSE_NPZ_KEYS = {"format", "shape", "data"}
# Entries read from a 10x HDF5 file at a time (about 32 MB of data and indices).
TENX_BLOCK_ENTRIES = 1 << 22


@dataclasses.dataclass(frozen=True)
class CountMatrix:
    """Validated counts of one file, cells x features.

    Attributes:
      counts: int32 (N, D): a ``scipy.sparse.csr_matrix`` or a dense ``np.ndarray``.
      source: the file (with the array or layer read) as named in messages.
      feature_names: D names, or ``None`` when the file names none.
      feature_ids: D ids (10x ``features/id``, the first column of ``features.tsv``) or ``None``.
      cell_names: N names (barcodes, the first column of a CSV) or ``None``.
      labels: N raw class labels (integers, or strings of an ``.h5ad`` obs column) or ``None``.
      labels_source: where the labels came from, for messages.
    """

    counts: np.ndarray | scipy.sparse.csr_matrix
    source: str
    feature_names: tuple[str, ...] | None
    feature_ids: tuple[str, ...] | None = None
    cell_names: tuple[str, ...] | None = None
    labels: np.ndarray | None = None
    labels_source: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.counts.shape[0]), int(self.counts.shape[1])


def file_suffix(path: str | os.PathLike[str]) -> str:
    """The lower-case suffix, with a ``.gz`` that follows another suffix (``.mtx.gz``)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


@dataclasses.dataclass(frozen=True)
class CellFeatureNames:
    """Names a (cell, feature) position of a file in messages."""

    source: str
    cell_names: Sequence[str] | None = None
    feature_names: Sequence[str] | None = None

    def cell(self, row: int) -> str:
        named = self.cell_names is not None and 0 <= row < len(self.cell_names)
        return f"cell {row} {self.cell_names[row]!r}" if named else f"cell {row}"

    def feature(self, column: int) -> str:
        names = self.feature_names
        named = names is not None and 0 <= column < len(names)
        return f"feature {column} {names[column]!r}" if named else f"feature {column}"

    def where(self, row: int, column: int) -> str:
        return f"{self.source}: {self.cell(row)}, {self.feature(column)}"


def _check_index_array(
    values: np.ndarray,
    size: int,
    *,
    names: CellFeatureNames,
    what: str,
    rows: np.ndarray | None = None,
    offset: int = 0,
    base: int = 0,
) -> np.ndarray:
    """Whole numbers in ``[base, size + base)``, returned 0-based as int64.

    ``what`` names the indices (plural, e.g. ``"feature indices (matrix/indices)"``),
    ``rows`` the cell of each entry (for messages), ``offset`` the number of entries before
    ``values`` in the file, and ``base`` is 1 for the 1-based indices of Matrix Market.
    """
    values = np.asarray(values).reshape(-1)

    def locate(index: tuple[int, ...]) -> str:
        cell = "" if rows is None else f" ({names.cell(int(rows[index[0]]))})"
        return f"{names.source}: entry {offset + index[0]}{cell}"

    if values.dtype.kind not in "iuf":
        raise ValueError(f"{names.source}: {what} must be integers, got dtype {values.dtype}")
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.floor(values))
        count_checks.raise_first(values, bad, locate, f"{what} must be whole numbers")
    bad = (values < base) | (values >= size + base)
    count_checks.raise_first(values, bad, locate, f"{what} must be in [{base}, {size + base})")
    return values.astype(np.int64) - base


def checked_entries(
    rows: np.ndarray, columns: np.ndarray, values: np.ndarray, *, names: CellFeatureNames
) -> np.ndarray:
    """The entry values as int32, each checked and named by its cell and feature."""

    def locate(index: tuple[int, ...]) -> str:
        return names.where(int(rows[index[0]]), int(columns[index[0]]))

    return count_checks.check_entry_values(values, source=names.source, locate=locate)


def _check_no_duplicates(rows: np.ndarray, columns: np.ndarray, *, names: CellFeatureNames) -> None:
    """Refuses a (cell, feature) pair stored twice (formats that would silently add them)."""
    if len(rows) < 2:
        return
    order = np.lexsort((columns, rows))
    same = (rows[order][1:] == rows[order][:-1]) & (columns[order][1:] == columns[order][:-1])
    if same.any():
        first, second = np.sort(order[[int(np.argmax(same)), int(np.argmax(same)) + 1]])
        row, column = int(rows[first]), int(columns[first])
        raise ValueError(
            f"{names.where(row, column)} is stored twice (entries {first} and {second}); "
            "every (cell, feature) pair may appear once"
        )


def coo_counts(
    rows: np.ndarray,
    columns: np.ndarray,
    values: np.ndarray,
    *,
    shape: tuple[int, int],
    names: CellFeatureNames,
    row_what: str = "cell indices",
    column_what: str = "feature indices",
    base: int = 0,
) -> scipy.sparse.csr_matrix:
    """A checked CSR matrix (cells x features) from coordinate entries (``base``-based)."""
    rows = _check_index_array(rows, shape[0], names=names, what=row_what, base=base)
    columns = _check_index_array(
        columns, shape[1], names=names, what=column_what, rows=rows, base=base
    )
    values = checked_entries(rows, columns, values, names=names)
    _check_no_duplicates(rows, columns, names=names)
    return scipy.sparse.csr_matrix((values, (rows, columns)), shape=shape, dtype=np.int32)


def expand_pointers(
    indptr: np.ndarray, num_major: int, num_entries: int, *, source: str, what: str
) -> np.ndarray:
    """The major index (row of a CSR, column of a CSC) of every entry, from a checked ``indptr``.

    Raises:
      ValueError: ``indptr`` is not ``num_major + 1`` non-decreasing integers from 0, or claims
        another number of entries than the ``num_entries`` stored.
    """
    indptr = np.asarray(indptr).reshape(-1)
    if indptr.dtype.kind not in "iu":
        raise ValueError(f"{source}: {what} must hold integers, got dtype {indptr.dtype}")
    if len(indptr) != num_major + 1:
        raise ValueError(
            f"{source}: the shape claims {num_major} {'cells' if 'cell' in what else 'rows'} "
            f"but {what} has {len(indptr)} entries (for {max(len(indptr) - 1, 0)}); the file "
            "is cut short or damaged"
        )
    steps = np.diff(indptr.astype(np.int64))
    if indptr[0] != 0 or (steps < 0).any():
        at = 0 if indptr[0] != 0 else int(np.argmax(steps < 0)) + 1
        raise ValueError(
            f"{source}: {what}[{at}] = {int(indptr[at])}: pointers must start at 0 and never "
            "decrease"
        )
    if int(indptr[-1]) != num_entries:
        raise ValueError(
            f"{source}: {what} claims {int(indptr[-1])} stored entries, but the file holds "
            f"{num_entries}; the file is cut short or damaged"
        )
    return np.repeat(np.arange(num_major, dtype=np.int64), steps)


def _decode(values: np.ndarray) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel())


def _h5_dataset(group, key: str, source: str):
    if key not in group:
        raise ValueError(
            f"{source}: has no {group.name.strip('/')}/{key}; a 10x Cell Ranger (v3) HDF5 file "
            "holds matrix/{data, indices, indptr, shape, barcodes} and matrix/features/{name, id}"
        )
    return group[key]


def read_tenx_h5(path: str | os.PathLike[str]) -> CountMatrix:
    """A 10x Cell Ranger HDF5 file (``filtered_feature_bc_matrix.h5``) as CSR cells x features.

    ``matrix/shape`` = (D features, N cells); ``indptr`` (N + 1,) points into ``indices``
    (feature of each entry) and ``data`` (its count), cell by cell. The entries are read and
    checked :data:`TENX_BLOCK_ENTRIES` at a time.
    """
    import h5py

    source = str(path)
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{source}: not a readable HDF5 file: {error}") from error
    with file:
        if "matrix" not in file:
            raise ValueError(
                f"{source}: has no group 'matrix' (it holds {sorted(file.keys())}); only the "
                "Cell Ranger v3 layout (matrix/{data, indices, indptr, shape, barcodes, "
                "features}) is read"
            )
        group = file["matrix"]
        shape = np.asarray(_h5_dataset(group, "shape", source)[()]).reshape(-1)
        if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 1).any():
            raise ValueError(f"{source}: matrix/shape must be two positive integers, got {shape}")
        num_features, num_cells = int(shape[0]), int(shape[1])
        features = _h5_dataset(group, "features", source)
        feature_names = _decode(_h5_dataset(features, "name", source)[()])
        feature_ids = _decode(features["id"][()]) if "id" in features else None
        barcodes = _decode(_h5_dataset(group, "barcodes", source)[()])
        for what, held, claimed in (
            ("matrix/features/name", len(feature_names), num_features),
            ("matrix/barcodes", len(barcodes), num_cells),
        ) + ((("matrix/features/id", len(feature_ids), num_features),) if feature_ids else ()):
            if held != claimed:
                raise ValueError(
                    f"{source}: matrix/shape claims {claimed} {what.split('/')[1]}, but {what} "
                    f"holds {held}; the file is cut short or damaged"
                )
        data, indices = _h5_dataset(group, "data", source), _h5_dataset(group, "indices", source)
        if data.shape != indices.shape or len(data.shape) != 1:
            raise ValueError(
                f"{source}: matrix/data {data.shape} and matrix/indices {indices.shape} must be "
                "one-dimensional and of one length"
            )
        names = CellFeatureNames(source, barcodes, feature_names)
        rows = expand_pointers(
            _h5_dataset(group, "indptr", source)[()],
            num_cells,
            int(data.shape[0]),
            source=source,
            what="matrix/indptr (per cell)",
        )
        values, columns = [], []
        for start in range(0, len(rows), TENX_BLOCK_ENTRIES):
            stop = min(len(rows), start + TENX_BLOCK_ENTRIES)
            block_rows = rows[start:stop]
            block_columns = _check_index_array(
                indices[start:stop],
                num_features,
                names=names,
                what="feature indices (matrix/indices)",
                rows=block_rows,
                offset=start,
            )
            checked = checked_entries(block_rows, block_columns, data[start:stop], names=names)
            columns.append(block_columns.astype(np.int32))
            values.append(checked)
    columns = np.concatenate(columns) if columns else np.zeros(0, np.int32)
    _check_no_duplicates(rows, columns, names=names)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=num_cells))])
    matrix = scipy.sparse.csr_matrix(
        (np.concatenate(values) if values else np.zeros(0, np.int32), columns, indptr),
        shape=(num_cells, num_features),
    )
    matrix.sort_indices()
    return CountMatrix(matrix, source, feature_names, feature_ids, barcodes)


def npz_members(path: str | os.PathLike[str]) -> list[str]:
    """The array names of an ``.npz`` file (``[]`` when it is not a readable archive)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [name.removesuffix(".npy") for name in archive.namelist()]
    except (OSError, zipfile.BadZipFile):
        return []


def is_sparse_npz(path: str | os.PathLike[str]) -> bool:
    """Whether an ``.npz`` file was written by ``scipy.sparse.save_npz``."""
    return set(npz_members(path)) >= _SPARSE_NPZ_KEYS


def read_sparse_npz(path: str | os.PathLike[str]) -> CountMatrix:
    """A ``scipy.sparse.save_npz`` file (csr, csc or coo; rows are cells) as checked CSR."""
    source = str(path)
    members = npz_members(path)

    def member(key: str) -> np.ndarray:
        if key not in members:
            raise ValueError(f"{source}: a scipy sparse matrix file needs an array {key!r}")
        return arrays.read_array_file(path, key)[0]

    fmt = member("format").item()
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    shape = np.asarray(member("shape")).reshape(-1)
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 1).any():
        raise ValueError(f"{source}: 'shape' must be two positive integers, got {shape}")
    shape = (int(shape[0]), int(shape[1]))
    data = np.asarray(member("data")).reshape(-1)
    names = CellFeatureNames(source)
    if fmt == "coo":
        rows, columns = member("row"), member("col")
    elif fmt in ("csr", "csc"):
        num_major = shape[0 if fmt == "csr" else 1]
        major = expand_pointers(
            member("indptr"), num_major, len(data), source=source, what="indptr"
        )
        minor = member("indices")
        rows, columns = (major, minor) if fmt == "csr" else (minor, major)
    else:
        raise ValueError(f"{source}: sparse format {fmt!r} is not read; save csr, csc or coo")
    if not (len(rows) == len(columns) == len(data)):
        raise ValueError(
            f"{source}: the index arrays ({len(rows)}, {len(columns)}) and 'data' "
            f"({len(data)}) must have one length"
        )
    return CountMatrix(coo_counts(rows, columns, data, shape=shape, names=names), source, None)


def read_dense_vectors(path: str | os.PathLike[str], array_key: str = "") -> CountMatrix:
    """A dense ``.npy``/``.npz`` array of count vectors (N, D); an ``.npz`` may name the
    features in an array ``feature_names`` (D strings)."""
    members = npz_members(path) if file_suffix(path) == ".npz" else []
    if not array_key and members:
        data_members = [m for m in members if m not in (FEATURE_NAMES_KEY, arrays.LABELS_KEY)]
        array_key = data_members[0] if data_members else ""
    values, source = arrays.read_array_file(path, array_key)
    if np.ndim(values) != 2:
        raise ValueError(
            f"{source} has shape {np.shape(values)}; count vectors (several files, or files "
            "given with count-matrix options) must have shape (N, D)"
        )
    feature_names = None
    if FEATURE_NAMES_KEY in members:
        stored = arrays.read_array_file(path, FEATURE_NAMES_KEY)[0]
        if stored.shape != (values.shape[1],) or stored.dtype.kind not in "US":
            raise ValueError(
                f"{path}['{FEATURE_NAMES_KEY}'] must hold {values.shape[1]} strings (one per "
                f"feature), got dtype {stored.dtype} with shape {stored.shape}"
            )
        feature_names = _decode(stored)
    names = CellFeatureNames(source, None, feature_names)
    counts = count_checks.check_count_values(
        values, source=source, locate=lambda index: names.where(index[0], index[1])
    )
    return CountMatrix(counts, source, feature_names)


def is_count_matrix_path(path: str | os.PathLike[str], array_key: str = "") -> bool:
    """Whether ``path`` holds count vectors (cells x features) rather than images.

    True for the count-matrix formats (10x HDF5, Matrix Market file or folder, CSV/TSV,
    ``.h5ad``, scipy sparse ``.npz``) and for ``.npy``/``.npz`` arrays whose header says
    rank 2; False for anything else (images, PNG folders, unreadable files).
    """
    path = Path(path)
    suffix = file_suffix(path)
    if path.is_dir():
        return any(file_suffix(p) in MATRIX_MARKET_SUFFIXES for p in path.iterdir())
    if suffix in TENX_SUFFIXES + MATRIX_MARKET_SUFFIXES + (H5AD_SUFFIX,) or suffix in DELIMITERS:
        return True
    if suffix == ".npz":
        if is_sparse_npz(path):
            return True
        members = npz_members(path)
        key = array_key or next(
            (m for m in members if m not in (FEATURE_NAMES_KEY, arrays.LABELS_KEY)), ""
        )
        header = arrays.stored_header(path, key) if key in members else None
    elif suffix == ".npy":
        header = arrays.stored_header(path)
    else:
        return False
    return header is not None and len(header[0]) == 2
