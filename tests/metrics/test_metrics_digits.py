"""Tests of the digits classifier-feature metrics."""

from __future__ import annotations

import numpy as np
import pytest

from blackout_jax.metrics.digits_features import (
    DIGITS_NUM_TEST,
    digits_sample_metrics,
    digits_train_test_split,
    fitted_digits_extractor,
)


@pytest.fixture(scope="module")
def extractor():
    return fitted_digits_extractor()


@pytest.fixture(scope="module")
def digits_split():
    return digits_train_test_split()


def test_split_is_fixed_and_disjoint(digits_split):
    train_images, train_labels, test_images, test_labels = digits_split
    assert train_images.shape == (1797 - DIGITS_NUM_TEST, 8, 8, 1)
    assert test_images.shape == (DIGITS_NUM_TEST, 8, 8, 1)
    assert train_labels.shape == (train_images.shape[0],)
    assert train_images.min() >= 0 and train_images.max() <= 16
    again = digits_train_test_split()
    np.testing.assert_array_equal(again[2], test_images)
    np.testing.assert_array_equal(again[3], test_labels)
    # Every label appears in both splits.
    assert set(np.unique(train_labels)) == set(np.unique(test_labels)) == set(range(10))


def test_split_is_the_training_data_split(digits_split):
    from blackout_jax.data.digits import load_digits_labelled_split

    (train_counts, _), (test_counts, _) = load_digits_labelled_split()
    np.testing.assert_array_equal(digits_split[0], train_counts)
    np.testing.assert_array_equal(digits_split[2], test_counts)


def test_classifier_is_accurate_on_the_test_split(extractor):
    # Measured: 0.990 on the default split (seed 0); the bound leaves a margin.
    assert extractor.test_accuracy > 0.95


def test_extractor_is_cached(extractor):
    assert fitted_digits_extractor() is extractor


def test_floor_is_small_and_real_digits_reach_it(extractor, digits_split):
    _, _, test_images, _ = digits_split
    metrics = digits_sample_metrics(test_images, extractor=extractor)
    assert metrics["frechet_floor_num_examples"] == DIGITS_NUM_TEST
    # Held-out real digits are exactly the floor set.
    assert metrics["frechet_distance"] == pytest.approx(metrics["frechet_floor"], rel=1e-9)
    assert 0.0 < metrics["frechet_floor"] < 10.0
    assert metrics["num_samples"] == DIGITS_NUM_TEST


def test_noise_and_constant_images_are_far_above_the_floor(extractor):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 17, size=(300, 8, 8, 1))
    constant = np.full((300, 8, 8, 1), 8)
    noise_metrics = digits_sample_metrics(noise, extractor=extractor)
    constant_metrics = digits_sample_metrics(constant, extractor=extractor)
    floor = noise_metrics["frechet_floor"]
    assert noise_metrics["frechet_distance"] > 20 * floor
    assert constant_metrics["frechet_distance"] > 20 * floor
    # A constant image is one class.
    assert max(constant_metrics["class_distribution"]) == pytest.approx(1.0)


def test_class_distribution_sums_to_one_and_is_balanced_for_real_digits(extractor, digits_split):
    _, _, test_images, test_labels = digits_split
    metrics = digits_sample_metrics(test_images[:120], extractor=extractor, seed=3)
    distribution = np.asarray(metrics["class_distribution"])
    assert distribution.shape == (10,)
    assert distribution.sum() == pytest.approx(1.0)
    true_distribution = np.bincount(test_labels[:120], minlength=10) / 120
    np.testing.assert_allclose(distribution, true_distribution, atol=0.05)
    # Fewer samples than the test split: the floor uses as many test digits as samples.
    assert metrics["frechet_floor_num_examples"] == 120


def test_metrics_accept_other_layouts_and_reject_bad_counts(extractor, digits_split):
    _, _, test_images, _ = digits_split
    flat = digits_sample_metrics(test_images.reshape(-1, 64), extractor=extractor)
    square = digits_sample_metrics(test_images[..., 0], extractor=extractor)
    assert flat["frechet_distance"] == pytest.approx(square["frechet_distance"])
    with pytest.raises(ValueError, match=r"counts in \[0, 16\]"):
        digits_sample_metrics(test_images + 1, extractor=extractor)
    with pytest.raises(ValueError, match="64 counts"):
        digits_sample_metrics(np.zeros((4, 7, 7, 1)), extractor=extractor)
