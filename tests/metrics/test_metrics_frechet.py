"""Tests of blackout_jax.metrics.frechet against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from blackout_jax.metrics.frechet import (
    frechet_distance,
    gaussian_statistics,
    inception_score,
    kernel_inception_distance,
)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, -1.0, 0.0])
    variances1, variances2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(variances1) - np.sqrt(variances2)) ** 2)
    distance = frechet_distance(mu1, np.diag(variances1), mu2, np.diag(variances2))
    assert distance == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_commuting_full_covariances_matches_closed_form():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: tr((S1 S2)^1/2) = sum sqrt(a b).
    rotation = stats.special_ortho_group.rvs(4, random_state=3)
    eigenvalues1, eigenvalues2 = np.array([0.5, 1.0, 2.0, 3.0]), np.array([2.0, 0.1, 2.0, 5.0])
    sigma1 = rotation @ np.diag(eigenvalues1) @ rotation.T
    sigma2 = rotation @ np.diag(eigenvalues2) @ rotation.T
    mu1, mu2 = np.zeros(4), np.full(4, 0.5)
    expected = 4 * 0.25 + np.sum((np.sqrt(eigenvalues1) - np.sqrt(eigenvalues2)) ** 2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_identical_gaussians_is_zero_and_symmetric():
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(5, 5))
    sigma = factor @ factor.T
    mu = rng.normal(size=5)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    other_sigma = np.eye(5) * 2.0
    forward = frechet_distance(mu, sigma, mu + 1.0, other_sigma)
    backward = frechet_distance(mu + 1.0, other_sigma, mu, sigma)
    assert forward == pytest.approx(backward, rel=1e-9)
    assert forward > 5.0  # at least the mean term ||1||^2 = 5


def test_frechet_distance_handles_singular_covariances():
    # Rank-deficient covariances (e.g. features that never vary): finite and exact.
    sigma1 = np.diag([1.0, 0.0, 4.0])
    sigma2 = np.diag([0.0, 0.0, 1.0])
    distance = frechet_distance(np.zeros(3), sigma1, np.zeros(3), sigma2)
    assert distance == pytest.approx(1.0 + 0.0 + 1.0, abs=1e-5)
    zero = np.zeros((3, 3))
    assert frechet_distance(np.zeros(3), zero, np.ones(3), zero) == pytest.approx(3.0)


def test_frechet_distance_rejects_indefinite_covariances_and_bad_shapes():
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(np.zeros(2), np.diag([1.0, -4.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="sigma1 and sigma2"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


def test_gaussian_statistics_from_samples_approach_the_true_ones():
    rng = np.random.default_rng(1)
    features = rng.normal(loc=[1.0, -2.0], scale=[1.0, 3.0], size=(20000, 2))
    mu, sigma = gaussian_statistics(features)
    np.testing.assert_allclose(mu, [1.0, -2.0], atol=0.06)
    np.testing.assert_allclose(sigma, np.diag([1.0, 9.0]), atol=0.2)
    assert mu.dtype == np.float64 and sigma.shape == (2, 2)
    with pytest.raises(ValueError, match="at least 2 rows"):
        gaussian_statistics(features[:1])


def test_kernel_inception_distance_of_identical_distributions_is_near_zero():
    rng = np.random.default_rng(2)
    features_a = rng.normal(size=(400, 8))
    features_b = rng.normal(size=(400, 8))
    mean, std = kernel_inception_distance(
        features_a, features_b, num_subsets=10, subset_size=200, seed=0
    )
    shifted_mean, _ = kernel_inception_distance(
        features_a, features_b + 1.0, num_subsets=10, subset_size=200, seed=0
    )
    assert abs(mean) < 0.02
    assert std >= 0.0
    assert shifted_mean > 0.5
    assert shifted_mean > 20 * abs(mean)


def test_kernel_inception_distance_of_identical_sets_is_exactly_unbiased_value():
    # For X = Y (same rows in the same order), the unbiased MMD^2 equals
    # -2 tr(K) / m^2 + 2 (sum K - tr K) (1/(m(m-1)) - 1/m^2); check against a direct evaluation.
    rng = np.random.default_rng(3)
    features = rng.normal(size=(6, 3))
    kernel = (features @ features.T / 3 + 1.0) ** 3
    size = 6
    off_diagonal = kernel.sum() - np.trace(kernel)
    expected = 2 * off_diagonal / (size * (size - 1)) - 2 * kernel.sum() / size**2
    mean, std = kernel_inception_distance(features, features, num_subsets=1, subset_size=6)
    # Both subsets are permutations of all rows, which leaves each sum unchanged.
    assert mean == pytest.approx(expected, rel=1e-12)
    assert std == 0.0


def test_kernel_inception_distance_is_reproducible_for_a_seed():
    rng = np.random.default_rng(4)
    features_a, features_b = rng.normal(size=(50, 4)), rng.normal(size=(60, 4)) + 0.3
    first = kernel_inception_distance(features_a, features_b, num_subsets=5, subset_size=20, seed=7)
    again = kernel_inception_distance(features_a, features_b, num_subsets=5, subset_size=20, seed=7)
    other = kernel_inception_distance(features_a, features_b, num_subsets=5, subset_size=20, seed=8)
    assert first == again
    assert first != other


def test_inception_score_of_uniform_predictions_is_one():
    probabilities = np.full((100, 10), 0.1)
    mean, std = inception_score(probabilities, num_splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_num_classes():
    probabilities = np.eye(10)[np.tile(np.arange(10), 20)]
    mean, std = inception_score(probabilities, num_splits=4)
    assert mean == pytest.approx(10.0, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_of_confident_single_class_is_one():
    probabilities = np.eye(10)[np.zeros(50, dtype=int)]
    mean, _ = inception_score(probabilities, num_splits=1)
    assert mean == pytest.approx(1.0)


def test_inception_score_matches_direct_kl_formula():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(30, 4)) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    marginal = probabilities.mean(axis=0)
    expected = np.exp(np.mean(np.sum(probabilities * np.log(probabilities / marginal), axis=1)))
    mean, _ = inception_score(probabilities, num_splits=1)
    assert mean == pytest.approx(expected, rel=1e-12)
    assert 1.0 < mean < 4.0


def test_inception_score_rejects_bad_inputs():
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(np.full((4, 3), 0.5), num_splits=1)
    with pytest.raises(ValueError, match="num_splits"):
        inception_score(np.full((4, 2), 0.5), num_splits=5)
