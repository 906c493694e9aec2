"""The two real 10x files of ../shared/data/liao2019 (bronchoalveolar lavage cells, Liao et al.
2020) through load_dataset, against an independent read with h5py and scipy as their README
describes. Skipped where the shared data folder is absent (a fresh clone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from blackout_jax.data import COUNTS_SPLIT_SEED, SparseSource, fixed_split, load_dataset
from blackout_jax.run.config import DataConfig

LIAO2019 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "liao2019"
FILES = (
    "GSM4339772_C144_filtered_feature_bc_matrix.h5",
    "GSM4339774_C146_filtered_feature_bc_matrix.h5",
)
NUM_CELLS, NUM_GENES, NUM_TEST, NUM_KEPT = 7827, 33539, 1565, 2000

pytestmark = pytest.mark.skipif(
    not all((LIAO2019 / name).is_file() for name in FILES),
    reason=f"the liao2019 count files are not at {LIAO2019}",
)


def readme_recipe(path: Path) -> tuple[scipy.sparse.csr_matrix, list[str]]:
    """Cells x genes and the gene names, read as the data's README shows."""
    import h5py

    with h5py.File(path, "r") as file:
        group = file["matrix"]
        matrix = scipy.sparse.csc_matrix(
            (group["data"][()], group["indices"][()], group["indptr"][()]),
            shape=group["shape"][()],
        ).T
        return matrix.tocsr(), [name.decode() for name in group["features"]["name"][()]]


def test_both_donors_with_the_top_2000_genes_by_training_mean():
    paths = [LIAO2019 / name for name in FILES]
    config = DataConfig(
        name="counts",
        path=",".join(str(p) for p in paths),
        max_count=0,
        num_test=NUM_TEST,
        num_features=NUM_KEPT,
        feature_selection="mean",
        prefetch=0,
    )
    dataset = load_dataset(config, seed=0)

    (first, names), (second, other_names) = (readme_recipe(p) for p in paths)
    assert names == other_names and len(names) == NUM_GENES
    everything = scipy.sparse.vstack([first, second], format="csr")
    assert everything.shape == (NUM_CELLS, NUM_GENES)
    train, test = fixed_split(NUM_CELLS, NUM_TEST, source="x", split_seed=COUNTS_SPLIT_SEED)
    assert (len(train), len(test)) == (6262, 1565)
    mean = np.asarray(everything[train].mean(axis=0)).ravel()
    kept = np.sort(np.argsort(-mean, kind="stable")[:NUM_KEPT])

    described = dataset.describe()
    assert (dataset.num_train, dataset.num_test) == (6262, 1565)
    assert described["num_source_features"] == NUM_GENES
    assert described["num_features"] == NUM_KEPT and dataset.image_shape == (NUM_KEPT,)
    assert described["files"] == [str(p) for p in paths]
    assert [r["source_index"] for r in dataset.features()] == kept.tolist()
    assert dataset.feature_names == tuple(names[j] for j in kept)

    assert isinstance(dataset.train_source, SparseSource)
    training = dataset.train_source.matrix
    expected = everything[train][:, kept]
    assert (training != expected).nnz == 0
    largest = int(training.max())
    zeros = 1 - training.nnz / np.prod(training.shape)
    print(f"liao2019 training split, {NUM_KEPT} genes: largest count {largest}, {zeros:.1%} zeros")
    assert largest == expected.max() and dataset.max_count == everything[:, kept].max()
    mean_kept, variance_kept = dataset.feature_moments()
    np.testing.assert_allclose(mean_kept, mean[kept], rtol=1e-12)
    dense = expected.toarray().astype(np.float64)
    np.testing.assert_allclose(variance_kept, dense.var(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(dataset.test_examples(3), everything[test[:3]][:, kept].toarray())
