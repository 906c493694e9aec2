"""Tests of blackout_jax.metrics.count_fidelity: closed forms, invariances and the PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from blackout_jax.metrics.count_fidelity import (
    LOG_OFFSET,
    CountPCA,
    count_sample_fidelity,
    gene_statistics,
    plot_count_fidelity,
)


def _cells(num_cells: int, means: np.ndarray, seed: int, size: float = 1.5) -> np.ndarray:
    """NB cells with per-gene means ``means`` and a common size, with a per-cell depth factor."""
    rng = np.random.default_rng(seed)
    depth = rng.lognormal(0.0, 0.3, size=(num_cells, 1))
    rates = rng.gamma(size, means[None, :] * depth / size)
    return rng.poisson(rates)


@pytest.fixture(scope="module")
def gene_means() -> np.ndarray:
    return np.exp(np.random.default_rng(0).normal(-0.5, 1.5, size=60))


def test_gene_statistics_closed_forms():
    counts = np.array([[0, 2, 5], [0, 0, 1], [0, 4, 3]])
    statistics = gene_statistics(counts)
    np.testing.assert_allclose(statistics["mean"], [0.0, 2.0, 3.0])
    np.testing.assert_allclose(statistics["variance"], [0.0, 8.0 / 3.0, 8.0 / 3.0])
    np.testing.assert_allclose(statistics["zero_fraction"], [1.0, 1.0 / 3.0, 0.0])
    np.testing.assert_allclose(statistics["library_size"], [7.0, 1.0, 7.0])


def test_count_pca_with_all_axes_reconstructs_the_log_normalised_cells(gene_means):
    reference = _cells(200, gene_means[:8], seed=1)
    reference[0] = 0  # an empty cell stays at zero after normalisation
    pca = CountPCA.fit(reference, num_components=8)
    median = np.median(reference.sum(axis=1))
    assert pca.library_size == median
    totals = reference.sum(axis=1, keepdims=True)
    expected = np.log1p(reference * median / np.where(totals > 0, totals, 1.0))
    features = pca.transform(reference)
    np.testing.assert_allclose(features @ pca.components + pca.center, expected, atol=1e-10)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(8), atol=1e-10)
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-10)
    variances = features.var(axis=0)
    assert np.all(np.diff(variances) <= 1e-12)


def test_identical_sets_give_unit_correlations_and_zero_distance(gene_means):
    real = _cells(400, gene_means, seed=2)
    result = count_sample_fidelity(real, real, seed=0, num_components=10)
    assert result["log_mean_correlation"] == pytest.approx(1.0)
    assert result["log_variance_correlation"] == pytest.approx(1.0)
    assert result["zero_fraction_correlation"] == pytest.approx(1.0)
    assert result["library_size_w1"] == 0.0
    assert abs(result["frechet_pca"]) < 1e-6 * result["frechet_pca_floor"]
    assert 0.0 < result["frechet_pca_floor"] < np.inf
    assert result["frechet_pca_floor_num_cells"] == 200
    assert result["frechet_pca_num_components"] == 10


def test_shifted_means_lower_the_correlation_and_raise_the_distance(gene_means):
    real = _cells(1000, gene_means, seed=3)
    faithful = _cells(400, gene_means, seed=4)
    shift = np.exp(np.random.default_rng(5).normal(0.0, 1.0, size=gene_means.shape))
    shifted = _cells(400, gene_means * shift, seed=4)
    good = count_sample_fidelity(faithful, real, seed=0, num_components=10)
    bad = count_sample_fidelity(shifted, real, seed=0, num_components=10)
    assert good["log_mean_correlation"] > 0.99
    assert bad["log_mean_correlation"] < good["log_mean_correlation"] - 0.05
    assert bad["frechet_pca"] > 5 * good["frechet_pca"]
    assert good["frechet_pca_ratio"] < 2.0 < bad["frechet_pca_ratio"]
    # The floor is taken from the real cells alone, so both share it.
    assert good["frechet_pca_floor"] == bad["frechet_pca_floor"]


def test_scaling_every_count_moves_library_sizes_but_not_the_normalised_distance(gene_means):
    real = _cells(300, gene_means, seed=6)
    result = count_sample_fidelity(3 * real, real, seed=0, num_components=10)
    library = real.sum(axis=1)
    # log1p is increasing, so W1 is the mean gap between matched order statistics.
    expected_w1 = np.mean(np.log1p(3.0 * library) - np.log1p(library))
    assert result["library_size_w1"] == pytest.approx(expected_w1, rel=1e-10)
    assert abs(result["frechet_pca"]) < 1e-6 * result["frechet_pca_floor"]
    log_means = np.log(3 * real.mean(axis=0) + LOG_OFFSET), np.log(real.mean(axis=0) + LOG_OFFSET)
    assert result["log_mean_correlation"] == pytest.approx(np.corrcoef(*log_means)[0, 1])


def test_floor_is_deterministic_for_a_seed_and_shrinks_with_more_cells(gene_means):
    real = _cells(1200, gene_means, seed=7)
    small = count_sample_fidelity(real[:100], real, seed=1, num_components=10)
    again = count_sample_fidelity(real[:100], real, seed=1, num_components=10)
    large = count_sample_fidelity(real[:600], real, seed=1, num_components=10)
    assert small["frechet_pca_floor"] == again["frechet_pca_floor"]
    assert small["frechet_pca_floor_num_cells"] == 100
    assert large["frechet_pca_floor_num_cells"] == 600
    assert large["frechet_pca_floor"] < small["frechet_pca_floor"]


def test_mismatched_genes_are_refused(gene_means):
    real = _cells(20, gene_means, seed=8)
    with pytest.raises(ValueError, match="same genes"):
        count_sample_fidelity(real[:, :10], real, seed=0)
    with pytest.raises(ValueError, match="same genes"):
        plot_count_fidelity(real[:, :10], real, "unused.png")


def test_plot_writes_a_png(tmp_path, gene_means):
    real = _cells(200, gene_means, seed=9)
    generated = _cells(150, gene_means * 1.5, seed=10)
    path = tmp_path / "fidelity.png"
    plot_count_fidelity(generated, real, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (1200, 340)
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # something was drawn
