"""AnnData ``.h5ad`` files (read and written through the optional ``anndata`` package) and the
writer of generated count vectors.

``anndata`` is imported only when an ``.h5ad`` file is read or written; without it those calls
fail with a message naming the extra to install (``pip install -e ".[cells]"``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from blackout_jax.data import count_checks, count_files

CELLS_EXTRA = 'pip install -e ".[cells]"'
WRITE_SUFFIXES = (".npz", count_files.H5AD_SUFFIX)


def import_anndata(purpose: str) -> Any:
    """The ``anndata`` module, or an ``ImportError`` saying how to install it.

    Args:
      purpose: what needs it, e.g. ``"reading counts.h5ad"``, for the message.
    """
    try:
        import anndata
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the optional package anndata, which is not installed; install "
            f"it with {CELLS_EXTRA} (or pip install 'anndata>=0.10')"
        ) from error
    return anndata


def _chosen_matrix(adata: Any, array_key: str, path: str) -> tuple[Any, str]:
    if array_key in ("", "X"):
        if adata.X is None:
            raise ValueError(f"{path}: X is empty; name a layer with data.array_key")
        return adata.X, f"{path}[X]"
    if array_key not in adata.layers:
        raise ValueError(
            f"data.array_key = {array_key!r} is not a layer of {path}; it has layers "
            f"{sorted(adata.layers.keys())} and X ('' or 'X')"
        )
    return adata.layers[array_key], f"{path}[layers[{array_key!r}]]"


def read_h5ad(
    path: str | os.PathLike[str], *, array_key: str = "", label_key: str = ""
) -> count_files.CountMatrix:
    """An AnnData file: ``X`` (``array_key`` '' or 'X') or ``layers[array_key]`` as counts
    (cells x features), ``var_names`` as feature names, ``obs_names`` as cell names, and the
    ``obs`` column ``label_key`` (when given) as raw class labels.

    Raises:
      ImportError: anndata is not installed (naming the extra to install).
      ValueError: an unreadable file, a missing layer or obs column, or a bad count (naming
        the file, the cell and the feature).
    """
    path = str(path)
    anndata = import_anndata(f"reading {path}")
    try:
        adata = anndata.read_h5ad(path)
    except Exception as error:  # anndata raises many kinds for a damaged file
        raise ValueError(f"{path}: not a readable .h5ad file: {error}") from error
    matrix, source = _chosen_matrix(adata, array_key, path)
    feature_names = tuple(str(name) for name in adata.var_names)
    cell_names = tuple(str(name) for name in adata.obs_names)
    names = count_files.CellFeatureNames(source, cell_names, feature_names)
    if scipy.sparse.issparse(matrix):
        coo = scipy.sparse.coo_matrix(matrix)
        counts = count_files.coo_counts(coo.row, coo.col, coo.data, shape=coo.shape, names=names)
    else:
        counts = count_checks.check_count_values(
            np.asarray(matrix), source=source, locate=lambda i: names.where(i[0], i[1])
        )
        if counts.ndim != 2:
            raise ValueError(f"{source} must be a matrix of cells x features")
    labels = None
    if label_key:
        if label_key not in adata.obs.columns:
            raise ValueError(
                f"data.label_key = {label_key!r} is not an obs column of {path}; its columns "
                f"are {list(adata.obs.columns)}"
            )
        labels = np.asarray(adata.obs[label_key].to_numpy())
    return count_files.CountMatrix(
        counts,
        source,
        feature_names,
        cell_names=cell_names,
        labels=labels,
        labels_source=f"{path}[obs[{label_key!r}]]",
    )


def write_count_matrix(
    path: str | os.PathLike[str], counts: np.ndarray, feature_names: Sequence[str]
) -> Path:
    """Writes count vectors (e.g. generated cells) with their feature names.

    ``.npz``: arrays ``counts`` (int32 (N, D)) and ``feature_names`` (D strings), which
    ``data.path`` reads back as count vectors with those names. ``.h5ad``: an AnnData with
    ``X`` = counts (int32) and ``var_names`` = feature names (needs anndata). The file is
    written under a temporary name and then renamed, so it is never seen half written.

    Args:
      path: the file to write; its suffix picks the format.
      counts: (N, D) whole non-negative counts.
      feature_names: D names.

    Returns:
      The path written.

    Raises:
      ValueError: another suffix, counts that are not (N, D) counts, or D names missing.
      ImportError: ``.h5ad`` without anndata installed.
    """
    path = Path(path)
    suffix = count_files.file_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"{path}: count vectors are written as {list(WRITE_SUFFIXES)} files")
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must have shape (N, D), got {counts.shape}")
    counts = count_checks.check_count_values(counts, source="counts")
    names = [str(name) for name in feature_names]
    if len(names) != counts.shape[1]:
        raise ValueError(
            f"feature_names has {len(names)} names, but counts has {counts.shape[1]} features"
        )
    anndata = import_anndata(f"writing {path}") if suffix == count_files.H5AD_SUFFIX else None
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=suffix, prefix=".tmp-", dir=path.parent)
    os.close(handle)
    try:
        if anndata is None:
            np.savez(temporary, counts=counts, feature_names=np.asarray(names, dtype=str))
        else:
            adata = anndata.AnnData(X=counts)
            adata.var_names = names
            adata.write_h5ad(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
