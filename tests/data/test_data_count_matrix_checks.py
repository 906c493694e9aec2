"""Every bad count-matrix file is refused before load_dataset returns, in one message naming
the file, the cell (index and barcode), the feature (index and name) and the value."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse

from blackout_jax.data import count_files, load_dataset
from tests.data.count_matrix_files import (
    gene_names,
    sparse_counts,
    write_mtx_folder,
    write_table,
    write_tenx_h5,
)
from tests.data.test_data_count_matrices import all_rows, vectors_config

LARGE = 2**31


def cell_gene_counts() -> np.ndarray:
    counts = sparse_counts()
    counts[3] = 0
    counts[3, [2, 5, 8]] = 4, 7, 1  # the tests damage cell 3, gene 5
    return counts


def entry_of(counts: np.ndarray, cell: int, gene: int) -> int:
    """The position of (cell, gene) among the stored entries of a 10x file."""
    csr = scipy.sparse.csr_matrix(counts)
    return int(csr.indptr[cell] + np.flatnonzero(csr.indices[csr.indptr[cell] :] == gene)[0])


def load(path, **overrides):
    return load_dataset(vectors_config(path, **overrides), seed=0)


def refused(path, message: str, **overrides) -> None:
    """``path`` is refused with ``message``, and nothing is written next to it."""
    folder = path.parent if path.is_file() else path
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ValueError, match=message):
        load(path, **overrides)
    assert sorted(p.name for p in folder.iterdir()) == before


WHERE = r"cell 3 'CELL0003-1', feature 5 'GENE5'"
BAD_VALUES = {
    "non_integer": (2.5, rf"{WHERE} = 2\.5: counts must be whole numbers"),
    "negative": (-3, rf"{WHERE} = -3: counts must be non-negative"),
    "nan": (np.nan, rf"{WHERE} = nan: counts must be finite"),
    "above_int32": (LARGE, rf"{WHERE} = {LARGE}: counts must be <= 2147483647"),
}


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_ten_x_bad_values(tmp_path, kind):
    value, message = BAD_VALUES[kind]
    counts = cell_gene_counts()
    data = scipy.sparse.csr_matrix(counts).data.astype(np.float64)
    data[entry_of(counts, 3, 5)] = value
    path = write_tenx_h5(tmp_path / "m.h5", counts, data=data)
    refused(path, re.escape(str(path)) + ": " + message)


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_matrix_market_bad_values(tmp_path, kind):
    value, message = BAD_VALUES[kind]
    counts = cell_gene_counts()
    entries = [(g + 1, c + 1, counts[c, g]) for c, g in zip(*np.nonzero(counts), strict=True)]
    entries = [(r, c, value if (r, c) == (6, 4) else v) for r, c, v in entries]
    folder = write_mtx_folder(tmp_path / "mtx", counts, entries=entries, field="real")
    refused(folder, r"matrix\.mtx: " + message)


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_table_bad_values(tmp_path, kind):
    value, message = BAD_VALUES[kind]
    counts = cell_gene_counts().astype(object)
    counts[3, 5] = value
    path = write_table(tmp_path / "m.csv", counts)
    refused(path, r"m\.csv: " + message)


@pytest.mark.parametrize("kind", ["negative", "non_integer"])
def test_dense_and_scipy_bad_values_name_cell_and_feature(tmp_path, kind):
    value, _ = BAD_VALUES[kind]
    counts = cell_gene_counts().astype(np.float64)
    counts[3, 5] = value
    np.savez(tmp_path / "d.npz", x=counts, feature_names=np.array(gene_names(12)))
    refused(tmp_path / "d.npz", r"d\.npz\['x'\]: cell 3, feature 5 'GENE5' = ")
    scipy.sparse.save_npz(tmp_path / "s.npz", scipy.sparse.csr_matrix(counts))
    refused(tmp_path / "s.npz", r"s\.npz: cell 3, feature 5 = ")


def test_table_non_numbers_and_ragged_rows(tmp_path):
    counts = cell_gene_counts().astype(object)
    counts[3, 5] = "abc"
    refused(write_table(tmp_path / "a.csv", counts), rf"a\.csv: {WHERE} = 'abc': .*numbers")
    (tmp_path / "b.tsv").write_text("\tG0\tG1\nC0\t1\t2\nC1\t3\n")
    refused(tmp_path / "b.tsv", r"b\.tsv: line 3 \(cell 1 'C1'\) has 1 counts, but .* 2 features")
    (tmp_path / "c.csv").write_text("cells\n")
    refused(tmp_path / "c.csv", r"c\.csv: the first row must be a corner field")
    (tmp_path / "d.csv").write_text(",G0\n")
    refused(tmp_path / "d.csv", r"d\.csv: holds a header but no cells")


def test_ten_x_headers_claiming_more_than_the_file_holds(tmp_path):
    counts = cell_gene_counts()
    path = write_tenx_h5(tmp_path / "a.h5", counts, shape=(12, 40))
    refused(path, r"a\.h5: matrix/shape claims 40 barcodes, but matrix/barcodes holds 30")
    path = write_tenx_h5(tmp_path / "b.h5", counts, shape=(50, 30))
    refused(path, r"b\.h5: matrix/shape claims 50 features, but matrix/features/name holds 12")
    indptr = scipy.sparse.csr_matrix(counts).indptr.copy()
    indptr[-1] += 5
    path = write_tenx_h5(tmp_path / "c.h5", counts, indptr=indptr)
    stored = scipy.sparse.csr_matrix(counts).nnz
    refused(path, rf"c\.h5: .*indptr.* claims {stored + 5} stored entries, but .* {stored}")
    path = write_tenx_h5(tmp_path / "d.h5", counts, indptr=indptr[:20])
    refused(path, r"d\.h5: the shape claims 30 cells but .*indptr.* has 20 entries")


def test_ten_x_feature_index_out_of_range_and_duplicates(tmp_path):
    counts = cell_gene_counts()
    entry = entry_of(counts, 3, 5)
    indices = scipy.sparse.csr_matrix(counts).indices.astype(np.int64)
    indices[entry] = 12
    path = write_tenx_h5(tmp_path / "a.h5", counts, indices=indices)
    refused(
        path,
        rf"a\.h5: entry {entry} \(cell 3 'CELL0003-1'\) = 12: feature indices \(matrix/indices\) "
        r"must be in \[0, 12\)",
    )
    indices[entry] = 5
    first = int(scipy.sparse.csr_matrix(counts).indptr[3])
    assert entry == first + 1  # cell 3 stores gene 2 before gene 5
    indices[first] = 5  # cell 3 stores gene 5 twice
    path = write_tenx_h5(tmp_path / "b.h5", counts, indices=indices)
    refused(path, rf"b\.h5: {WHERE} is stored twice \(entries {first} and {entry}\)")


def test_ten_x_is_read_in_blocks_with_entries_named_in_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(count_files, "TENX_BLOCK_ENTRIES", 7)
    counts = cell_gene_counts()
    path = write_tenx_h5(tmp_path / "a.h5", counts)
    np.testing.assert_array_equal(all_rows(load(path)), counts)
    entry = entry_of(counts, 3, 5)
    assert entry > 7
    indices = scipy.sparse.csr_matrix(counts).indices.astype(np.int64)
    indices[entry] = 99
    path = write_tenx_h5(tmp_path / "b.h5", counts, indices=indices)
    refused(path, rf"b\.h5: entry {entry} \(cell 3 'CELL0003-1'\) = 99")
    data = scipy.sparse.csr_matrix(counts).data.astype(np.int64)
    data[entry] = -1
    refused(write_tenx_h5(tmp_path / "c.h5", counts, data=data), rf"c\.h5: {WHERE} = -1")


def test_ten_x_layouts_that_are_not_cell_ranger_v3(tmp_path):
    import h5py

    with h5py.File(tmp_path / "v2.h5", "w") as file:
        file.create_group("GRCh38")
    refused(tmp_path / "v2.h5", r"v2\.h5: has no group 'matrix' \(it holds \['GRCh38'\]\)")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    refused(tmp_path / "bad.h5", r"bad\.h5: not a readable HDF5 file")


def test_matrix_market_headers_indices_and_duplicates(tmp_path):
    counts = cell_gene_counts()
    nnz = int(np.count_nonzero(counts))
    folder = write_mtx_folder(tmp_path / "a", counts, size_line=f"12 30 {nnz + 3}")
    refused(folder, rf"matrix\.mtx: the size line claims {nnz + 3} entries, but .* holds {nnz}")
    folder = write_mtx_folder(tmp_path / "b", counts, size_line=f"12 31 {nnz}")
    refused(folder, r"claims 12 x 31, but .*barcodes\.tsv lists 30 cells and .* 12 features")
    entries = [(6, 4, 7), (13, 1, 2)]
    folder = write_mtx_folder(tmp_path / "c", counts, entries=entries)
    refused(folder, r"entry 1 \(cell 0 'CELL0000-1'\) = 13: feature indices \(the rows, 1-based\)")
    folder = write_mtx_folder(tmp_path / "d", counts, entries=[(6, 4, 7), (1, 31, 2)])
    refused(folder, r"entry 1 = 31: cell indices \(the columns, 1-based\) must be in \[1, 31\)")
    folder = write_mtx_folder(tmp_path / "e", counts, entries=[(6, 4, 7), (2, 2, 1), (6, 4, 1)])
    refused(folder, rf"{WHERE} is stored twice \(entries 0 and 2\)")
    folder = write_mtx_folder(tmp_path / "f", counts, field="complex")
    refused(folder, r"header says 'coordinate complex general'")
    (folder / "barcodes.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"no barcodes file \(looked for barcodes\.tsv"):
        load(folder)


def test_scipy_npz_structure(tmp_path):
    counts = cell_gene_counts()
    csr = scipy.sparse.csr_matrix(counts)
    np.savez(
        tmp_path / "a.npz",
        format=np.array("csr"),
        shape=np.array([30, 12]),
        data=csr.data,
        indices=csr.indices,
        indptr=np.concatenate([csr.indptr[:-1], [csr.nnz + 4]]),
    )
    refused(tmp_path / "a.npz", rf"a\.npz: indptr claims {csr.nnz + 4} stored entries")
    coo = scipy.sparse.coo_matrix(counts)
    np.savez(
        tmp_path / "b.npz",
        format=np.array("coo"),
        shape=np.array([30, 12]),
        data=np.append(coo.data, 1),
        row=np.append(coo.row, 3),
        col=np.append(coo.col, 5),
    )
    refused(tmp_path / "b.npz", r"b\.npz: cell 3, feature 5 is stored twice")
    np.savez(
        tmp_path / "c.npz",
        format=np.array("coo"),
        shape=np.array([30, 12]),
        data=coo.data,
        row=coo.row,
        col=np.where(coo.col == coo.col.max(), 12, coo.col),
    )
    refused(tmp_path / "c.npz", r"c\.npz: entry \d+ \(cell \d+\) = 12: feature indices")
    np.savez(tmp_path / "d.npz", format=np.array("dia"), shape=np.array([30, 12]), data=[1])
    refused(tmp_path / "d.npz", r"sparse format 'dia' is not read")
