"""The synthetic cells: a fixed matrix drawn from a known negative-binomial mixture."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from blackout_jax.data import load_dataset, synthetic_cells
from blackout_jax.run.config import DataConfig


def test_the_dataset_is_fixed_vectors_with_their_types_as_labels():
    config = DataConfig(name="synthetic_cells", max_count=synthetic_cells.MAX_COUNT, num_test=200)
    dataset = load_dataset(config, seed=0, num_classes=synthetic_cells.NUM_TYPES)
    assert dataset.shape.example_shape == (synthetic_cells.NUM_GENES,)
    assert (dataset.num_train, dataset.num_test) == (1000, 200)
    counts, types = synthetic_cells.load_counts()
    assert counts.max() == synthetic_cells.MAX_COUNT and counts.dtype == np.int32
    test_counts, test_labels = dataset.test_examples(None), dataset.test_labels(None)
    rows = [np.flatnonzero((counts == row).all(axis=1))[0] for row in test_counts[:20]]
    np.testing.assert_array_equal(types[rows], test_labels[:20])
    with pytest.raises(ValueError, match="max_count"):
        load_dataset(DataConfig(name="synthetic_cells", max_count=100), seed=0)


def test_the_cells_follow_their_law():
    counts, types = synthetic_cells.load_counts()
    means, shapes = synthetic_cells.parameters()
    for kind in range(synthetic_cells.NUM_TYPES):
        cells = counts[types == kind]
        # the per-gene means of ~400 cells sit within 5 standard errors of the law's means
        variance = means[kind] + means[kind] ** 2 / shapes
        error = np.abs(cells.mean(axis=0) - means[kind]) / np.sqrt(variance / len(cells))
        assert error.max() < 5.0


def test_log_prob_is_the_mixture_of_negative_binomials():
    counts = synthetic_cells.load_counts()[0][:5]
    means, shapes = synthetic_cells.parameters()
    expected = []
    for cell in counts:
        per_type = [
            np.prod(stats.nbinom.pmf(cell, shapes, shapes / (shapes + mean))) for mean in means
        ]
        expected.append(np.log(np.mean(per_type)))
    np.testing.assert_allclose(synthetic_cells.log_prob(counts), expected, rtol=1e-9)
