"""Writers of small count-matrix files in the formats the data layer reads, for the tests.

Each writes a dense cells x genes matrix ``counts`` in one format, by hand (not through the
readers under test), with the layout the real tools produce.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import scipy.sparse


def gene_names(num_genes: int) -> list[str]:
    return [f"GENE{j}" for j in range(num_genes)]


def gene_ids(num_genes: int) -> list[str]:
    return [f"ENSG{j:011d}" for j in range(num_genes)]


def barcodes(num_cells: int, prefix: str = "CELL") -> list[str]:
    return [f"{prefix}{i:04d}-1" for i in range(num_cells)]


def sparse_counts(num_cells=30, num_genes=12, density=0.3, high=20, seed=0) -> np.ndarray:
    """A dense int64 (cells, genes) matrix, mostly zeros, with a few larger genes."""
    rng = np.random.default_rng(seed)
    values = rng.integers(1, high + 1, size=(num_cells, num_genes))
    values *= rng.random((num_cells, num_genes)) < density
    values[:, 1] *= 3  # a gene of large mean
    return values


def write_tenx_h5(
    path: Path,
    counts: np.ndarray,
    *,
    names: list[str] | None = None,
    ids: list[str] | None = None,
    cells: list[str] | None = None,
    shape: tuple[int, int] | None = None,
    data: np.ndarray | None = None,
    indices: np.ndarray | None = None,
    indptr: np.ndarray | None = None,
) -> Path:
    """A 10x Cell Ranger v3 HDF5 file (CSC genes x cells) of ``counts`` (cells x genes); the
    keyword arrays replace the true ones (to write damaged files)."""
    import h5py

    num_cells, num_genes = counts.shape
    csr = scipy.sparse.csr_matrix(counts)  # rows of cells = columns of the CSC genes x cells
    with h5py.File(path, "w") as file:
        group = file.create_group("matrix")
        group["data"] = csr.data.astype(np.int32) if data is None else data
        group["indices"] = csr.indices.astype(np.int64) if indices is None else indices
        group["indptr"] = csr.indptr.astype(np.int64) if indptr is None else indptr
        group["shape"] = np.array((num_genes, num_cells) if shape is None else shape, np.int32)
        group["barcodes"] = np.array(cells or barcodes(num_cells), dtype="S")
        features = group.create_group("features")
        features["name"] = np.array(names or gene_names(num_genes), dtype="S")
        features["id"] = np.array(ids or gene_ids(num_genes), dtype="S")
        features["feature_type"] = np.array([b"Gene Expression"] * num_genes)
        features["genome"] = np.array([b"GRCh38"] * num_genes)
    return path


def _write_text(path: Path, text: str) -> None:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as file:
            file.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def write_mtx_folder(
    folder: Path,
    counts: np.ndarray,
    *,
    gz: bool = False,
    cells_by_genes: bool = False,
    entries: list[tuple[float, float, float]] | None = None,
    size_line: str | None = None,
    field: str = "integer",
    features_file: str = "features.tsv",
) -> Path:
    """A Cell Ranger style Matrix Market folder: ``matrix.mtx``, ``barcodes.tsv``,
    ``features.tsv`` (id, name, type), optionally gzipped; ``entries`` (1-based row, column,
    value) and ``size_line`` replace the true ones."""
    folder.mkdir(parents=True, exist_ok=True)
    num_cells, num_genes = counts.shape
    suffix = ".gz" if gz else ""
    if entries is None:
        cells, genes = np.nonzero(counts)
        entries = [
            (c + 1, g + 1, counts[c, g]) if cells_by_genes else (g + 1, c + 1, counts[c, g])
            for c, g in zip(cells, genes, strict=True)
        ]
    rows, columns = (num_cells, num_genes) if cells_by_genes else (num_genes, num_cells)
    lines = [
        f"%%MatrixMarket matrix coordinate {field} general",
        "% written for a test",
        size_line or f"{rows} {columns} {len(entries)}",
    ] + [f"{int(r)} {int(c)} {v}" for r, c, v in entries]
    _write_text(folder / f"matrix.mtx{suffix}", "\n".join(lines) + "\n")
    _write_text(folder / f"barcodes.tsv{suffix}", "\n".join(barcodes(num_cells)) + "\n")
    features = [
        f"{i}\t{n}\tGene Expression"
        for i, n in zip(gene_ids(num_genes), gene_names(num_genes), strict=True)
    ]
    _write_text(folder / f"{features_file}{suffix}", "\n".join(features) + "\n")
    return folder


def write_table(path: Path, counts: np.ndarray, delimiter: str = ",") -> Path:
    """A cells x genes table: a corner field and gene names, then a cell name and its counts."""
    num_cells, num_genes = counts.shape
    lines = [delimiter.join([""] + gene_names(num_genes))]
    for name, row in zip(barcodes(num_cells), counts, strict=True):
        lines.append(delimiter.join([name] + [str(v) for v in row]))
    _write_text(path, "\n".join(lines) + "\n")
    return path
