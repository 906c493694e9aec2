"""Count matrices stored as text: 10x-style Matrix Market folders and CSV/TSV tables.

* Matrix Market (``.mtx``/``.mtx.gz``, or the folder holding one), 10x style: ``coordinate``
  entries (1-based) of features x cells, with ``barcodes.tsv(.gz)`` and ``features.tsv(.gz)``
  (or ``genes.tsv(.gz)``) beside it; a matrix of cells x features is recognised by its size.
* ``.csv``/``.tsv`` (optionally ``.gz``): cells x features, a header row of feature names after
  a corner field, and the cell name first on every row.

Both return a checked :class:`blackout_jax.data.count_files.CountMatrix` (CSR); failures name
the file, the cell, the feature and the value (see :mod:`blackout_jax.data.count_files`).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse

from blackout_jax.data.count_files import (
    DELIMITERS,
    MATRIX_MARKET_SUFFIXES,
    CellFeatureNames,
    CountMatrix,
    checked_entries,
    coo_counts,
    file_suffix,
)

BARCODE_FILES = ("barcodes.tsv", "barcodes.tsv.gz")
FEATURE_FILES = ("features.tsv", "features.tsv.gz", "genes.tsv", "genes.tsv.gz")


def open_text(path: str | os.PathLike[str]) -> io.TextIOBase:
    """A text file, decompressed when its name ends in ``.gz``."""
    if str(path).lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _tsv_rows(path: Path) -> list[list[str]]:
    with open_text(path) as file:
        return [line.rstrip("\r\n").split("\t") for line in file if line.strip()]


def _first_existing(folder: Path, candidates: tuple[str, ...], what: str) -> Path:
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"data.path: the Matrix Market folder {str(folder)!r} has no {what} file (looked for "
        f"{', '.join(candidates)})"
    )


def matrix_market_files(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``(matrix, barcodes, features)`` of a 10x Matrix Market folder or its ``.mtx`` file."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if file_suffix(p) in MATRIX_MARKET_SUFFIXES)
        if len(found) != 1:
            raise ValueError(
                f"data.path: folder {str(path)!r} must hold exactly one .mtx or .mtx.gz file, "
                f"found {[p.name for p in found]}"
            )
        matrix, folder = found[0], path
    else:
        matrix, folder = path, path.parent
    barcodes = _first_existing(folder, BARCODE_FILES, "barcodes")
    return matrix, barcodes, _first_existing(folder, FEATURE_FILES, "features")


def _read_mtx_header(file: io.TextIOBase, source: str) -> tuple[int, int, int]:
    """Checks the banner (``%%MatrixMarket matrix coordinate integer|real general``) and
    returns the size line ``(rows, columns, entries)``; leaves ``file`` at the first entry."""
    banner = file.readline().strip().lower().split()
    if len(banner) != 5 or banner[:2] != ["%%matrixmarket", "matrix"]:
        raise ValueError(f"{source}: line 1 must be a '%%MatrixMarket matrix ...' header")
    layout, field, symmetry = banner[2:]
    if layout != "coordinate" or field not in ("integer", "real") or symmetry != "general":
        raise ValueError(
            f"{source}: header says '{layout} {field} {symmetry}'; counts must be stored as "
            "'coordinate integer general' (or 'coordinate real general' holding whole numbers)"
        )
    for line in file:
        if line.strip() and not line.lstrip().startswith("%"):
            fields = line.split()
            if len(fields) == 3 and all(f.isdigit() for f in fields):
                return int(fields[0]), int(fields[1]), int(fields[2])
            raise ValueError(
                f"{source}: the size line must be three whole numbers 'rows columns entries', "
                f"got {line.strip()!r}"
            )
    raise ValueError(f"{source}: has no size line after its header")


def read_matrix_market(path: str | os.PathLike[str]) -> CountMatrix:
    """A 10x-style Matrix Market matrix with its barcodes and features files.

    The ``.mtx`` is features x cells (as Cell Ranger writes it) or cells x features, told apart
    by the lengths of ``barcodes.tsv`` (N) and ``features.tsv`` (D); features x cells wins
    when N = D. Feature names are the second column of ``features.tsv`` (ids the first), or
    the only column.
    """
    matrix_path, barcodes_path, features_path = matrix_market_files(path)
    source = str(matrix_path)
    barcodes = tuple(row[0] for row in _tsv_rows(barcodes_path))
    feature_rows = _tsv_rows(features_path)
    feature_names = tuple(row[1] if len(row) > 1 else row[0] for row in feature_rows)
    feature_ids = None
    if all(len(row) > 1 for row in feature_rows):
        feature_ids = tuple(row[0] for row in feature_rows)
    with open_text(matrix_path) as file:
        num_rows, num_columns, num_entries = _read_mtx_header(file, source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            try:
                entries = np.loadtxt(file, dtype=np.float64, comments="%", ndmin=2)
            except ValueError as error:
                raise ValueError(
                    f"{source}: an entry line is not 'row column value': {error}"
                ) from error
    entries = entries.reshape(-1, 3) if entries.size == 0 else entries
    if entries.shape[1] != 3:
        raise ValueError(
            f"{source}: entry lines must hold 'row column value', got {entries.shape[1]} fields"
        )
    if len(entries) != num_entries:
        raise ValueError(
            f"{source}: the size line claims {num_entries} entries, but the file holds "
            f"{len(entries)}; the file is cut short or damaged"
        )
    num_cells, num_features = len(barcodes), len(feature_names)
    if (num_rows, num_columns) == (num_features, num_cells):
        cell_axis, feature_axis = 1, 0
    elif (num_rows, num_columns) == (num_cells, num_features):
        cell_axis, feature_axis = 0, 1
    else:
        raise ValueError(
            f"{source}: the size line claims {num_rows} x {num_columns}, but {barcodes_path} "
            f"lists {num_cells} cells and {features_path} {num_features} features"
        )
    names = CellFeatureNames(source, barcodes, feature_names)
    counts = coo_counts(
        entries[:, cell_axis],
        entries[:, feature_axis],
        entries[:, 2],
        shape=(num_cells, num_features),
        names=names,
        row_what=f"cell indices (the {'rows' if cell_axis == 0 else 'columns'}, 1-based)",
        column_what=f"feature indices (the {'rows' if feature_axis == 0 else 'columns'}, 1-based)",
        base=1,
    )
    return CountMatrix(counts, source, feature_names, feature_ids, barcodes)


def _parse_row(fields: list[str], *, row: int, names: CellFeatureNames) -> np.ndarray:
    try:
        return np.array(fields, dtype=np.float64)
    except ValueError:
        for column, field in enumerate(fields):
            try:
                float(field)
            except ValueError:
                raise ValueError(
                    f"{names.where(row, column)} = {field!r}: counts must be numbers"
                ) from None
        raise


def read_delimited(path: str | os.PathLike[str]) -> CountMatrix:
    """A ``.csv``/``.tsv`` table of cells x features (header: a corner field, then the feature
    names; each row: the cell name, then D counts) as CSR, row by row."""
    source = str(path)
    delimiter = DELIMITERS[file_suffix(path)]
    with open_text(path) as file:
        reader = csv.reader(file, delimiter=delimiter)
        header = next(reader, None)
        if not header or len(header) < 2:
            raise ValueError(
                f"{source}: the first row must be a corner field and at least one feature name "
                f"(cells x features with cell names in the first column), got {header!r}"
            )
        feature_names = tuple(name.strip() for name in header[1:])
        cells: list[str] = []
        names = CellFeatureNames(source, cells, feature_names)
        values, columns, indptr = [], [], [0]
        for line_number, fields in enumerate(reader, start=2):
            if not fields or not any(f.strip() for f in fields):
                continue
            row = len(cells)
            cells.append(fields[0].strip())
            if len(fields) != len(header):
                raise ValueError(
                    f"{source}: line {line_number} ({names.cell(row)}) has {len(fields) - 1} "
                    f"counts, but the header names {len(feature_names)} features"
                )
            parsed = _parse_row(fields[1:], row=row, names=names)
            row_ids = np.full(len(parsed), row)
            counts = checked_entries(row_ids, np.arange(len(parsed)), parsed, names=names)
            nonzero = np.flatnonzero(counts)
            values.append(counts[nonzero])
            columns.append(nonzero.astype(np.int32))
            indptr.append(indptr[-1] + len(nonzero))
    if not cells:
        raise ValueError(f"{source}: holds a header but no cells")
    matrix = scipy.sparse.csr_matrix(
        (np.concatenate(values), np.concatenate(columns), np.asarray(indptr)),
        shape=(len(cells), len(feature_names)),
    )
    return CountMatrix(matrix, source, feature_names, None, tuple(cells))
