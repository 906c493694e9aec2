"""Tests of the Inception-metric pipeline with a stand-in feature network (no torch, no weights)."""

from __future__ import annotations

import numpy as np
import pytest

from blackout_jax.metrics import inception
from blackout_jax.metrics.frechet import gaussian_statistics
from blackout_jax.metrics.inception import (
    INCEPTION_WEIGHTS_FILENAME,
    INCEPTION_WEIGHTS_URL,
    FeatureExtractor,
    TorchFidelityInception,
    counts_to_uint8_rgb,
    default_inception_weights_path,
    extract_features_and_logits,
    inception_sample_metrics,
    load_or_compute_reference_statistics,
    reference_statistics_path,
)
from tests.metrics.random_projection import RandomProjectionExtractor

MAX_COUNT = 16


class CountingExtractor:
    """A random-projection stand-in that records how many images it has seen."""

    def __init__(self, seed: int = 0) -> None:
        self._projection = RandomProjectionExtractor(num_features=16, num_classes=10, seed=seed)
        self.extractor_id = "counting-" + self._projection.extractor_id
        self.images_seen = 0

    def features_and_logits(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.images_seen += images.shape[0]
        return self._projection.features_and_logits(images)


def _blob_images(rng: np.random.Generator, num_images: int, center_shift: float) -> np.ndarray:
    """Counts (n, 8, 8, 1) in [0, 16]: noisy bright squares whose position depends on the shift."""
    images = rng.integers(0, 4, size=(num_images, 8, 8, 1))
    offset = int(round(center_shift))
    images[:, offset : offset + 4, offset : offset + 4, :] += rng.integers(
        8, 13, size=(num_images, 4, 4, 1)
    )
    return np.clip(images, 0, MAX_COUNT)


def test_counts_to_uint8_rgb_scales_and_repeats_channels():
    counts = np.array([0, 1, 8, 16]).reshape(1, 2, 2, 1)
    images = counts_to_uint8_rgb(counts, MAX_COUNT)
    assert images.dtype == np.uint8 and images.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(images[0, :, :, 0].ravel(), [0, 15, 127, 255])
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    eight_bit = np.arange(256).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    np.testing.assert_array_equal(counts_to_uint8_rgb(eight_bit, 255), eight_bit)
    with pytest.raises(ValueError, match=r"\[0, max_count=16\]"):
        counts_to_uint8_rgb(counts + 1, MAX_COUNT)
    with pytest.raises(ValueError, match="C in"):
        counts_to_uint8_rgb(np.zeros((1, 2, 2, 2), int), MAX_COUNT)


def test_stand_in_satisfies_the_extractor_interface():
    extractor = RandomProjectionExtractor()
    assert isinstance(extractor, FeatureExtractor)
    features, logits = extract_features_and_logits(
        extractor, np.zeros((5, 8, 8, 1), int), max_count=MAX_COUNT, batch_size=2
    )
    assert features.shape == (5, 32) and logits.shape == (5, 10)
    assert features.dtype == np.float32


def test_reference_statistics_are_computed_once_and_reused(tmp_path):
    rng = np.random.default_rng(0)
    training = _blob_images(rng, 64, center_shift=2)
    extractor = CountingExtractor()
    calls = []

    def training_images():
        calls.append(1)
        return training

    first = load_or_compute_reference_statistics(
        tmp_path, "blobs", extractor, training_images, max_count=MAX_COUNT, batch_size=16
    )
    cache_file = reference_statistics_path(tmp_path, "blobs", extractor.extractor_id)
    assert cache_file.is_file()
    assert len(calls) == 1 and extractor.images_seen == 64
    modified = cache_file.stat().st_mtime_ns

    second = load_or_compute_reference_statistics(
        tmp_path, "blobs", extractor, training_images, max_count=MAX_COUNT
    )
    assert len(calls) == 1 and extractor.images_seen == 64  # nothing recomputed
    assert cache_file.stat().st_mtime_ns == modified
    np.testing.assert_array_equal(first.mean, second.mean)
    np.testing.assert_array_equal(first.covariance, second.covariance)
    np.testing.assert_array_equal(first.features, second.features)
    assert second.num_examples == 64 and second.dataset_name == "blobs"

    expected_mean, expected_covariance = gaussian_statistics(
        extractor.features_and_logits(counts_to_uint8_rgb(training, MAX_COUNT))[0]
    )
    np.testing.assert_allclose(second.mean, expected_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(second.covariance, expected_covariance, rtol=1e-5, atol=1e-6)

    # Another dataset name or another extractor gets its own cache file.
    other = CountingExtractor(seed=1)
    load_or_compute_reference_statistics(
        tmp_path, "blobs", other, training_images, max_count=MAX_COUNT
    )
    assert len(calls) == 2
    assert len(list(tmp_path.glob("reference_*.npz"))) == 2
    assert not list(tmp_path.glob("*.tmp"))

    with pytest.raises(ValueError, match="max_count=16"):
        load_or_compute_reference_statistics(
            tmp_path, "blobs", extractor, training_images, max_count=255
        )


def test_reference_statistics_accept_an_iterable_of_batches(tmp_path):
    rng = np.random.default_rng(1)
    training = _blob_images(rng, 30, center_shift=2)
    extractor = RandomProjectionExtractor()
    from_batches = load_or_compute_reference_statistics(
        tmp_path / "a",
        "blobs",
        extractor,
        lambda: (training[start : start + 7] for start in range(0, 30, 7)),
        max_count=MAX_COUNT,
    )
    from_array = load_or_compute_reference_statistics(
        tmp_path / "b", "blobs", extractor, training, max_count=MAX_COUNT
    )
    np.testing.assert_allclose(from_batches.mean, from_array.mean, rtol=1e-12)
    assert from_batches.num_examples == 30


def test_metrics_rank_matching_samples_above_shifted_ones(tmp_path):
    rng = np.random.default_rng(2)
    extractor = RandomProjectionExtractor(num_features=16)
    reference = load_or_compute_reference_statistics(
        tmp_path, "blobs", extractor, _blob_images(rng, 400, 2), max_count=MAX_COUNT
    )
    matching = inception_sample_metrics(
        _blob_images(rng, 200, 2),
        reference,
        extractor,
        max_count=MAX_COUNT,
        kid_subsets=10,
        kid_subset_size=100,
    )
    shifted = inception_sample_metrics(
        _blob_images(rng, 200, 4),
        reference,
        extractor,
        max_count=MAX_COUNT,
        kid_subsets=10,
        kid_subset_size=100,
    )
    assert set(matching) == {
        "fid",
        "inception_score_mean",
        "inception_score_std",
        "kid_mean",
        "kid_std",
        "num_samples",
        "num_reference",
    }
    assert matching["num_samples"] == 200 and matching["num_reference"] == 400
    assert shifted["fid"] > 10 * matching["fid"]
    assert shifted["kid_mean"] > 10 * abs(matching["kid_mean"])
    assert 1.0 <= matching["inception_score_mean"] <= 10.0


def test_metrics_refuse_a_reference_from_another_extractor(tmp_path):
    rng = np.random.default_rng(3)
    reference = load_or_compute_reference_statistics(
        tmp_path, "blobs", RandomProjectionExtractor(seed=0), _blob_images(rng, 20, 2), max_count=16
    )
    with pytest.raises(ValueError, match="reference statistics come from extractor"):
        inception_sample_metrics(
            _blob_images(rng, 20, 2), reference, RandomProjectionExtractor(seed=1), max_count=16
        )


def test_missing_weights_raise_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / INCEPTION_WEIGHTS_FILENAME
    with pytest.raises(FileNotFoundError) as raised:
        TorchFidelityInception(missing)
    message = str(raised.value)
    assert str(missing) in message
    assert INCEPTION_WEIGHTS_URL in message
    assert not missing.parent.exists()  # nothing was created or fetched


def test_default_weights_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(inception.INCEPTION_WEIGHTS_ENV, raising=False)
    default = default_inception_weights_path()
    assert default.name == INCEPTION_WEIGHTS_FILENAME
    assert default.parent.name == "blackout_jax"
    custom = tmp_path / "weights.pth"
    monkeypatch.setenv(inception.INCEPTION_WEIGHTS_ENV, str(custom))
    assert default_inception_weights_path() == custom
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        TorchFidelityInception()
