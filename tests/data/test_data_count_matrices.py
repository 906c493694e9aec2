"""Count vectors (cells x genes) through load_dataset: every format reads back the matrix it
was written from, sparse stays sparse, several files concatenate, and feature selection looks
at the training split only."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import scipy.sparse

from blackout_jax.data import (
    COUNTS_SPLIT_SEED,
    SparseSource,
    anndata_files,
    count_files,
    fixed_split,
    load_dataset,
    write_count_matrix,
)
from blackout_jax.run.config import DataConfig
from tests.data.count_matrix_files import (
    barcodes,
    gene_ids,
    gene_names,
    sparse_counts,
    write_mtx_folder,
    write_table,
    write_tenx_h5,
)


def vectors_config(path, **overrides) -> DataConfig:
    fields = {"name": "counts", "path": str(path), "max_count": 0, "num_test": 6, "prefetch": 0}
    return DataConfig(**(fields | overrides))


def all_rows(dataset) -> np.ndarray:
    """Every cell of a dataset in file order, undoing the fixed split."""
    num = dataset.num_train + dataset.num_test
    train, test = fixed_split(num, dataset.num_test, source="x", split_seed=COUNTS_SPLIT_SEED)
    rows = np.empty((num, *dataset.image_shape), np.int32)
    rows[train] = dataset.train_source.read(np.arange(dataset.num_train))
    rows[test] = dataset.test_examples()
    return rows


def write_format(kind: str, tmp_path, counts: np.ndarray):
    """Writes ``counts`` in format ``kind``; returns the path for ``data.path``."""
    if kind == "tenx_h5":
        return write_tenx_h5(tmp_path / "m.h5", counts)
    if kind == "mtx_folder":
        return write_mtx_folder(tmp_path / "mtx", counts)
    if kind == "mtx_gz_file":
        return write_mtx_folder(tmp_path / "mtx", counts, gz=True) / "matrix.mtx.gz"
    if kind == "mtx_cells_by_genes_genes_tsv":
        return write_mtx_folder(
            tmp_path / "mtx", counts, cells_by_genes=True, features_file="genes.tsv"
        )
    if kind == "csv":
        return write_table(tmp_path / "m.csv", counts)
    if kind == "tsv_gz":
        return write_table(tmp_path / "m.tsv.gz", counts, delimiter="\t")
    if kind.startswith("scipy_"):
        matrix = scipy.sparse.csr_matrix(counts).asformat(kind.removeprefix("scipy_"))
        scipy.sparse.save_npz(tmp_path / "m.npz", matrix)
        return tmp_path / "m.npz"
    if kind == "dense_npy":
        np.save(tmp_path / "m.npy", counts.astype(np.float32))
        return tmp_path / "m.npy"
    if kind == "dense_npz_named":
        np.savez(tmp_path / "m.npz", feature_names=np.array(gene_names(counts.shape[1])), x=counts)
        return tmp_path / "m.npz"
    raise AssertionError(kind)


FORMATS = [
    "tenx_h5",
    "mtx_folder",
    "mtx_gz_file",
    "mtx_cells_by_genes_genes_tsv",
    "csv",
    "tsv_gz",
    "scipy_csr",
    "scipy_csc",
    "scipy_coo",
    "dense_npy",
    "dense_npz_named",
]
NAMED = {"tenx_h5", "mtx_folder", "mtx_gz_file", "mtx_cells_by_genes_genes_tsv", "csv"}
NAMED |= {"tsv_gz", "dense_npz_named"}


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_reads_back_the_matrix_it_was_written_from(tmp_path, kind):
    counts = sparse_counts()
    path = write_format(kind, tmp_path, counts)
    dataset = load_dataset(vectors_config(path), seed=0)
    assert dataset.image_shape == (12,) and dataset.shape.example_shape == (12,)
    assert (dataset.num_train, dataset.num_test) == (24, 6)
    np.testing.assert_array_equal(all_rows(dataset), counts)
    assert dataset.max_count == counts.max() and dataset.max_count_inferred
    assert dataset.feature_names == (tuple(gene_names(12)) if kind in NAMED else None)
    described = dataset.describe()
    assert described["num_features"] == 12 and described["num_source_features"] == 12
    assert described["feature_selection"] == "all" and described["files"] == [str(path)]
    sparse = not kind.startswith("dense")
    assert isinstance(dataset.train_source, SparseSource) == sparse


def test_ten_x_ids_and_records_follow_the_kept_features(tmp_path):
    path = write_tenx_h5(tmp_path / "m.h5", sparse_counts())
    dataset = load_dataset(vectors_config(path, num_features=3), seed=0)
    records = dataset.features()
    assert [r["index"] for r in records] == [0, 1, 2]
    for record in records:
        assert record["name"] == gene_names(12)[record["source_index"]]
        assert record["id"] == gene_ids(12)[record["source_index"]]


def test_sparse_source_reads_dense_int32_rows_and_labels():
    counts = sparse_counts(seed=3)
    source = SparseSource(scipy.sparse.csr_matrix(counts), labels=np.arange(30, dtype=np.int32))
    rows = np.array([4, 0, 4, 29])
    batch = source.read(rows)
    assert batch.dtype == np.int32 and batch.shape == (4, 12)
    np.testing.assert_array_equal(batch, counts[rows])
    batch, labels = source.read_labelled(rows)
    np.testing.assert_array_equal(labels, rows)
    with pytest.raises(ValueError, match="no class labels"):
        SparseSource(scipy.sparse.csr_matrix(counts)).read_labelled(rows)


def test_training_stream_and_resume_work_on_sparse_counts(tmp_path):
    counts = sparse_counts()
    dataset = load_dataset(vectors_config(write_tenx_h5(tmp_path / "m.h5", counts)), seed=5)
    with dataset.train_iterator(global_batch_size=8, process_index=0, process_count=1) as it:
        first, second = next(it), next(it)
        state = it.get_state()
        third = next(it)
    assert first.shape == (8, 12) and first.dtype == np.int32
    train_rows = dataset.train_source.read(np.arange(dataset.num_train))
    # Every batch row is a training cell; the first epoch visits each cell once.
    epoch = np.concatenate([first, second, third])[: dataset.num_train]
    assert sorted(map(bytes, epoch)) == sorted(map(bytes, train_rows))
    with dataset.train_iterator(global_batch_size=8, process_index=0, process_count=1) as again:
        again.set_state(state)
        np.testing.assert_array_equal(next(again), third)
    with dataset.train_iterator(global_batch_size=8, process_index=1, process_count=2) as half:
        np.testing.assert_array_equal(next(half), first[4:])


def test_several_files_concatenate_their_cells_in_order(tmp_path):
    first, second = sparse_counts(20, seed=1), sparse_counts(16, seed=2)
    a = write_tenx_h5(tmp_path / "a.h5", first)
    b = write_mtx_folder(tmp_path / "b", second, gz=True)
    dataset = load_dataset(vectors_config(f"{a}, {b}", num_test=9), seed=0)
    np.testing.assert_array_equal(all_rows(dataset), np.concatenate([first, second]))
    assert dataset.describe()["files"] == [str(a), str(b)]
    assert str(a) in dataset.origin and "matrix.mtx.gz" in dataset.origin


def test_files_of_different_gene_spaces_are_refused_naming_both_and_the_feature(tmp_path):
    names = gene_names(12)
    names[7] = "OTHER"
    a = write_tenx_h5(tmp_path / "a.h5", sparse_counts())
    b = write_tenx_h5(tmp_path / "b.h5", sparse_counts(), names=names)
    message = rf"feature 7 is 'GENE7' in {re.escape(str(a))} but 'OTHER' in {re.escape(str(b))}"
    with pytest.raises(ValueError, match=message):
        load_dataset(vectors_config(f"{a},{b}"), seed=0)
    c = write_tenx_h5(tmp_path / "c.h5", sparse_counts(num_genes=11))
    with pytest.raises(ValueError, match=r"c\.h5 has 11 features but .*a\.h5 has 12"):
        load_dataset(vectors_config(f"{a},{c}"), seed=0)
    with pytest.raises(ValueError, match="one file or several separated by commas"):
        load_dataset(vectors_config(f"{a},,{c}"), seed=0)


@pytest.mark.parametrize("selection", ["mean", "variance"])
def test_selection_keeps_the_top_training_features_in_their_order(tmp_path, selection):
    counts = sparse_counts(40, 15, seed=4)
    dataset = load_dataset(
        vectors_config(
            write_tenx_h5(tmp_path / "m.h5", counts),
            num_test=10,
            num_features=5,
            feature_selection=selection,
        ),
        seed=0,
    )
    train, _ = fixed_split(40, 10, source="x", split_seed=COUNTS_SPLIT_SEED)
    statistic = counts[train].astype(float)
    score = statistic.mean(0) if selection == "mean" else statistic.var(0)
    expected = np.sort(np.argsort(-score, kind="stable")[:5])
    assert [r["source_index"] for r in dataset.features()] == expected.tolist()
    assert dataset.feature_names == tuple(gene_names(15)[j] for j in expected)
    np.testing.assert_array_equal(all_rows(dataset), counts[:, expected])
    assert dataset.describe()["feature_selection"] == selection
    mean, variance = dataset.feature_moments()
    np.testing.assert_allclose(mean, counts[train][:, expected].mean(0))
    np.testing.assert_allclose(variance, counts[train][:, expected].astype(float).var(0))
    assert mean.dtype == variance.dtype == np.float64


def test_selection_never_looks_at_held_out_cells(tmp_path):
    counts = sparse_counts(40, 15, seed=4)
    _, test = fixed_split(40, 10, source="x", split_seed=COUNTS_SPLIT_SEED)
    changed = counts.copy()
    changed[test, 14] = 10_000  # a huge held-out gene must not be picked
    picked = []
    for matrix in (counts, changed):
        path = write_tenx_h5(tmp_path / f"m{len(picked)}.h5", matrix)
        dataset = load_dataset(vectors_config(path, num_test=10, num_features=4), seed=0)
        picked.append([r["source_index"] for r in dataset.features()])
    assert picked[0] == picked[1] and 14 not in picked[0]


def test_selection_bounds(tmp_path):
    path = write_tenx_h5(tmp_path / "m.h5", sparse_counts())
    with pytest.raises(ValueError, match="num_features = 13 is more than the 12 features"):
        load_dataset(vectors_config(path, num_features=13), seed=0)
    assert load_dataset(vectors_config(path, num_features=12), seed=0).features()[-1] == {
        "index": 11,
        "source_index": 11,
        "name": "GENE11",
        "id": gene_ids(12)[11],
    }


def test_declared_max_count_is_checked_on_the_kept_features_naming_cell_and_gene(tmp_path):
    counts = sparse_counts()
    counts[3, 1] = 500
    path = write_tenx_h5(tmp_path / "m.h5", counts)
    message = r"m\.h5: cell 3 'CELL0003-1', feature 1 'GENE1' = 500: counts must be <= the"
    with pytest.raises(ValueError, match=message):
        load_dataset(vectors_config(path, max_count=100), seed=0)
    dataset = load_dataset(vectors_config(path, max_count=600), seed=0)
    assert dataset.max_count == 600 and not dataset.max_count_inferred


def test_dense_vectors_and_images_keep_their_own_routes(tmp_path):
    np.save(tmp_path / "v.npy", sparse_counts())
    assert load_dataset(vectors_config(tmp_path / "v.npy"), seed=0).image_shape == (12,)
    np.save(tmp_path / "i.npy", np.ones((10, 4, 4, 1)))
    images = load_dataset(vectors_config(tmp_path / "i.npy", num_test=2), seed=0)
    assert images.image_shape == (4, 4, 1) and images.feature_set is None
    with pytest.raises(ValueError, match="holds images, not count vectors"):
        images.features()
    mean, variance = images.feature_moments()
    assert mean.shape == (4, 4, 1) and np.all(variance == 0)
    with pytest.raises(ValueError, match="num_features = 3 .* holds images"):
        load_dataset(vectors_config(tmp_path / "i.npy", num_test=2, num_features=3), seed=0)
    with pytest.raises(ValueError, match="data.num_features = 3 .*'digits' holds images"):
        load_dataset(DataConfig(prefetch=0, num_features=3), seed=0)


def test_dense_npz_labels_follow_their_cells(tmp_path):
    counts = sparse_counts()
    labels = np.arange(30) % 3
    np.savez(tmp_path / "m.npz", counts=counts, labels=labels)
    dataset = load_dataset(vectors_config(tmp_path / "m.npz"), seed=0, num_classes=3)
    rows, got = dataset.train_source.read_labelled(np.arange(dataset.num_train))
    for row, label in zip(rows, got, strict=True):
        assert label == labels[np.flatnonzero((counts == row).all(1))[0]]
    assert dataset.test_labels().shape == (6,)
    with pytest.raises(ValueError, match="gives no class labels, but conditional training"):
        load_dataset(
            vectors_config(write_tenx_h5(tmp_path / "m.h5", counts)), seed=0, num_classes=3
        )


def test_keys_that_do_not_apply_are_refused(tmp_path):
    path = write_tenx_h5(tmp_path / "m.h5", sparse_counts())
    with pytest.raises(ValueError, match="data.label_key = 'cell_type' names an obs column"):
        load_dataset(vectors_config(path, label_key="cell_type"), seed=0)
    with pytest.raises(ValueError, match="data.array_key = 'x' names an array"):
        load_dataset(vectors_config(path, array_key="x"), seed=0)


def test_written_npz_reads_back_with_its_feature_names(tmp_path):
    counts = sparse_counts(9, 5)
    names = ["CD3E", "MS4A1", "LYZ", "NKG7", "GNLY"]
    written = write_count_matrix(tmp_path / "out" / "cells.npz", counts, names)
    assert written == tmp_path / "out" / "cells.npz"
    assert sorted(p.name for p in written.parent.iterdir()) == ["cells.npz"]
    dataset = load_dataset(vectors_config(written, num_test=2), seed=0)
    assert dataset.feature_names == tuple(names)
    np.testing.assert_array_equal(all_rows(dataset), counts)
    with pytest.raises(ValueError, match="feature_names has 4 names, but counts has 5"):
        write_count_matrix(tmp_path / "x.npz", counts, names[:4])
    negative = counts.copy()
    negative[1, 2] = -1
    with pytest.raises(ValueError, match=r"counts\[1, 2\] = -1: counts must be non-negative"):
        write_count_matrix(tmp_path / "x.npz", negative, names)
    with pytest.raises(ValueError, match="written as"):
        write_count_matrix(tmp_path / "x.csv", counts, names)
    assert not (tmp_path / "x.npz").exists()


def test_missing_anndata_names_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "anndata", None)  # import anndata now raises ImportError
    (tmp_path / "m.h5ad").write_bytes(b"")
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[cells]"')):
        load_dataset(vectors_config(tmp_path / "m.h5ad"), seed=0)
    with pytest.raises(ImportError, match=r"writing .*m2\.h5ad needs the optional package"):
        write_count_matrix(tmp_path / "m2.h5ad", sparse_counts(), gene_names(12))
    assert not (tmp_path / "m2.h5ad").exists()


def test_h5ad_layers_obs_labels_and_round_trip(tmp_path):
    anndata = pytest.importorskip("anndata")
    counts = sparse_counts()
    adata = anndata.AnnData(X=np.log1p(counts).astype(np.float32))
    adata.layers["counts"] = scipy.sparse.csr_matrix(counts)
    adata.var_names = gene_names(12)
    adata.obs_names = barcodes(30)
    adata.obs["cell_type"] = np.array(["T", "B", "NK"])[np.arange(30) % 3]
    adata.write_h5ad(tmp_path / "m.h5ad")
    path = tmp_path / "m.h5ad"
    with pytest.raises(ValueError, match=r"m\.h5ad\[X\]: cell 0 'CELL0000-1', feature .* whole"):
        load_dataset(vectors_config(path), seed=0)
    config = vectors_config(path, array_key="counts", label_key="cell_type")
    dataset = load_dataset(config, seed=0, num_classes=3)
    np.testing.assert_array_equal(all_rows(dataset), counts)
    assert dataset.class_names == ("B", "NK", "T")
    assert dataset.describe()["class_names"] == ["B", "NK", "T"]
    with pytest.raises(ValueError, match="'nope' is not a layer"):
        load_dataset(vectors_config(path, array_key="nope"), seed=0)
    with pytest.raises(ValueError, match="more than model.num_classes = 2"):
        load_dataset(config, seed=0, num_classes=2)
    written = write_count_matrix(tmp_path / "gen.h5ad", counts, gene_names(12))
    back = anndata.read_h5ad(written)
    assert list(back.var_names) == gene_names(12)
    np.testing.assert_array_equal(np.asarray(back.X), counts)


def test_is_count_matrix_path_tells_vectors_from_images(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((3, 4)))
    np.save(tmp_path / "i.npy", np.zeros((3, 4, 4)))
    np.savez(tmp_path / "i.npz", labels=np.zeros(3), x=np.zeros((3, 4, 4, 1)))
    assert count_files.is_count_matrix_path(tmp_path / "v.npy")
    assert not count_files.is_count_matrix_path(tmp_path / "i.npy")
    assert not count_files.is_count_matrix_path(tmp_path / "i.npz")
    assert count_files.is_count_matrix_path(tmp_path / "anything.h5ad")
    assert anndata_files.CELLS_EXTRA == 'pip install -e ".[cells]"'


def test_config_fields_of_count_vectors_are_checked_by_the_config():
    from blackout_jax.run import config as config_lib

    values = config_lib.default_dict()
    values["data"] |= {"name": "counts", "path": "a.h5,b.h5", "num_features": 2000}
    typed = config_lib.parse(values)
    assert (typed.data.num_features, typed.data.feature_selection) == (2000, "mean")
    assert typed.data.label_key == ""
    for field, value in (("feature_selection", "median"), ("num_features", -1)):
        bad = config_lib.default_dict()
        bad["data"][field] = value
        with pytest.raises(ValueError, match=f"config field data.{field} must be"):
            config_lib.parse(bad)


class _Column:
    def __init__(self, values):
        self._values = values

    def to_numpy(self):
        return np.asarray(self._values, dtype=object)


class _Frame(dict):
    """The part of a pandas DataFrame that the reader uses: ``columns`` and ``frame[column]``."""

    @property
    def columns(self):
        return list(self)


class _StubAnnData:
    """The part of anndata.AnnData that the reader and writer use."""

    written: dict = {}

    def __init__(self, X=None, layers=None, var_names=(), obs_names=(), obs=None):
        self.X, self.layers = X, dict(layers or {})
        self.var_names, self.obs_names, self.obs = list(var_names), list(obs_names), obs

    def write_h5ad(self, path):
        _StubAnnData.written[str(path).rsplit("/", 1)[-1]] = self
        with open(path, "wb") as file:
            file.write(b"stub")


def test_h5ad_reader_logic_with_a_stub_of_anndata(tmp_path, monkeypatch):
    """The reader's use of X, layers, var_names, obs_names and obs through a stand-in module
    (runs where anndata is not installed; the test above uses the real package)."""
    import types

    counts = sparse_counts()
    stored = _StubAnnData(
        X=np.log1p(counts),
        layers={"counts": scipy.sparse.csr_matrix(counts)},
        var_names=gene_names(12),
        obs_names=barcodes(30),
        obs=_Frame(cell_type=_Column(np.array(["T", "B", "NK"])[np.arange(30) % 3])),
    )
    stub = types.ModuleType("anndata")
    stub.read_h5ad = lambda path: stored
    stub.AnnData = _StubAnnData
    monkeypatch.setitem(sys.modules, "anndata", stub)
    path = tmp_path / "m.h5ad"
    path.write_bytes(b"stub")
    with pytest.raises(ValueError, match=r"m\.h5ad\[X\]: cell 0 'CELL0000-1', feature .* whole"):
        load_dataset(vectors_config(path), seed=0)
    config = vectors_config(path, array_key="counts", label_key="cell_type")
    dataset = load_dataset(config, seed=0, num_classes=3)
    np.testing.assert_array_equal(all_rows(dataset), counts)
    assert dataset.feature_names == tuple(gene_names(12))
    assert dataset.class_names == ("B", "NK", "T")
    codes = {"B": 0, "NK": 1, "T": 2}
    expected = np.array([codes[n] for n in np.array(["T", "B", "NK"])[np.arange(30) % 3]])
    _, test = fixed_split(30, 6, source="x", split_seed=COUNTS_SPLIT_SEED)
    np.testing.assert_array_equal(dataset.test_labels(), expected[test])
    with pytest.raises(ValueError, match="'nope' is not a layer .* has layers \\['counts'\\]"):
        load_dataset(vectors_config(path, array_key="nope"), seed=0)
    with pytest.raises(ValueError, match="'kind' is not an obs column .* \\['cell_type'\\]"):
        load_dataset(
            vectors_config(path, array_key="counts", label_key="kind"), seed=0, num_classes=3
        )
    with pytest.raises(ValueError, match="set data.label_key to its obs column"):
        load_dataset(vectors_config(path, array_key="counts"), seed=0, num_classes=3)
    with pytest.raises(ValueError, match="holds 3 classes .* more than model.num_classes = 2"):
        load_dataset(config, seed=0, num_classes=2)
    write_count_matrix(tmp_path / "gen.h5ad", counts, gene_names(12))
    (written,) = _StubAnnData.written.values()
    assert written.var_names == gene_names(12)
    np.testing.assert_array_equal(written.X, counts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.h5ad", "m.h5ad"]
