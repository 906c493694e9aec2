"""FID, Inception score and KID of image samples with the standard Inception network.

The network is the Inception-v3 graph of the original FID/IS code (TensorFlow weights
``inception-2015-12-05``) as ported to PyTorch by torch-fidelity; it is an optional extra
(``pip install 'blackout_jax[fid]'``) and is imported only when the real extractor is built. The
weights are read from a local file and never downloaded; see docs/metrics.md.

The metrics themselves are computed in NumPy (``blackout_jax.metrics.frechet``) from the
extractor's outputs, so any object with the ``FeatureExtractor`` interface can stand in for the
network (tests use a fixed random projection and need neither torch nor weights):

- FID: Fréchet distance between Gaussian statistics of the 2048-d pool features of the samples
  and of the training set;
- IS: ``exp(E[KL(p(y|x) || p(y))])`` over 10 splits, from the softmax of the 1008 logits;
- KID: unbiased polynomial-kernel MMD^2 over 100 subsets of 1000.

Reference statistics of the training set (mean, covariance and the features themselves, which KID
needs) are computed once and cached in an ``.npz`` file keyed by dataset name and extractor id.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from blackout_jax.metrics.frechet import (
    frechet_distance,
    gaussian_statistics,
    inception_score,
    kernel_inception_distance,
)

__all__ = [
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILENAME",
    "INCEPTION_WEIGHTS_URL",
    "FeatureExtractor",
    "ReferenceStatistics",
    "TorchFidelityInception",
    "counts_to_uint8_rgb",
    "default_inception_weights_path",
    "extract_features_and_logits",
    "inception_sample_metrics",
    "load_or_compute_reference_statistics",
    "reference_statistics_path",
]

INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    + INCEPTION_WEIGHTS_FILENAME
)
INCEPTION_WEIGHTS_ENV = "BLACKOUT_JAX_INCEPTION_WEIGHTS"
_DEFAULT_WEIGHTS_DIRECTORY = Path("~/.cache/blackout_jax")


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the metrics need from a feature network.

    ``extractor_id`` names the network and its weights (it keys the reference-statistics cache).
    ``features_and_logits(images)`` takes uint8 RGB images (n, H, W, 3), resizes them as the
    network needs, and returns ``(features (n, d), logits (n, num_classes))`` as float arrays.
    """

    extractor_id: str

    def features_and_logits(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def default_inception_weights_path() -> Path:
    """Where the Inception weights are looked for when no path is given.

    ``$BLACKOUT_JAX_INCEPTION_WEIGHTS`` if set, else
    ``~/.cache/blackout_jax/weights-inception-2015-12-05-6726825d.pth``.
    """
    from_environment = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if from_environment:
        return Path(from_environment).expanduser()
    return (_DEFAULT_WEIGHTS_DIRECTORY / INCEPTION_WEIGHTS_FILENAME).expanduser()


def _missing_weights_message(path: Path) -> str:
    return (
        f"Inception weights not found at {path}. Metrics never download files. On a machine with "
        f"internet, fetch {INCEPTION_WEIGHTS_URL} (e.g. `curl -L -o {INCEPTION_WEIGHTS_FILENAME} "
        f"{INCEPTION_WEIGHTS_URL}`) and copy it to {path}, or pass its location as the weights "
        f"path (config field or ${INCEPTION_WEIGHTS_ENV}). See docs/metrics.md."
    )


class TorchFidelityInception:
    """The FID Inception-v3 network of torch-fidelity, loaded from a local weights file.

    Features are the 2048-d average-pool activations (FID, KID); logits are the 1008 class scores
    without the final bias, the convention of the original Inception-score code (IS). Images are
    resized to 299x299 inside the network (TensorFlow-compatible bilinear resize).

    Args:
      weights_path: the ``.pth`` file; default ``default_inception_weights_path()``.
      device: torch device string; default ``"cuda"`` when available, else ``"cpu"``.
      batch_size: images per forward pass.

    Raises:
      FileNotFoundError: the weights file is missing (the message names the path and the URL).
      ImportError: torch or torch-fidelity is not installed (install the ``fid`` extra).
    """

    extractor_id = "inception-v3-compat-2015-12-05"

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        batch_size: int = 100,
    ) -> None:
        path = (
            Path(weights_path).expanduser()
            if weights_path is not None
            else default_inception_weights_path()
        )
        if not path.is_file():
            raise FileNotFoundError(_missing_weights_message(path))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        try:
            import torch
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as error:
            raise ImportError(
                "FID/IS/KID need torch and torch-fidelity: pip install 'blackout_jax[fid]' "
                "(see docs/metrics.md)"
            ) from error
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.weights_path = path
        # An explicit weights path means torch-fidelity loads the file and never downloads.
        network = FeatureExtractorInceptionV3(
            "inception-v3-compat",
            ["2048", "logits_unbiased"],
            feature_extractor_weights_path=str(path),
        )
        self._network = network.to(self.device).eval()

    def features_and_logits(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (n, H, W, 3) -> (pool features float32 (n, 2048), logits (n, 1008))."""
        images = check_uint8_rgb(images)
        torch = self._torch
        features, logits = [], []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.batch_size):
                batch = np.ascontiguousarray(
                    images[start : start + self.batch_size].transpose(0, 3, 1, 2)
                )
                batch_features, batch_logits = self._network(
                    torch.from_numpy(batch).to(self.device)
                )
                features.append(batch_features.cpu().numpy().astype(np.float32))
                logits.append(batch_logits.cpu().numpy().astype(np.float32))
        return np.concatenate(features), np.concatenate(logits)


def check_uint8_rgb(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images must be uint8 of shape (n, H, W, 3); got {images.dtype} {images.shape}"
        )
    return images


def counts_to_uint8_rgb(counts: np.ndarray, max_count: int) -> np.ndarray:
    """Integer counts (n, H, W, C), C in {1, 3}, in [0, max_count] -> uint8 RGB (n, H, W, 3).

    Values map by ``counts * 255 // max_count`` (identity for 8-bit images, max_count = 255);
    one channel is repeated to three.
    """
    counts = np.asarray(counts)
    if counts.ndim != 4 or counts.shape[-1] not in (1, 3):
        raise ValueError(
            f"counts must have shape (n, H, W, C) with C in (1, 3); got {counts.shape}"
        )
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1; got {max_count}")
    if counts.size and (counts.min() < 0 or counts.max() > max_count):
        raise ValueError(
            f"counts must lie in [0, max_count={max_count}]; "
            f"got values in [{counts.min()}, {counts.max()}]"
        )
    if not np.issubdtype(counts.dtype, np.integer):
        rounded = np.rint(counts)
        if not np.array_equal(rounded, counts):
            raise ValueError("counts must hold whole numbers")
        counts = rounded
    scaled = (counts.astype(np.int64) * 255 // max_count).astype(np.uint8)
    if scaled.shape[-1] == 1:
        scaled = np.repeat(scaled, 3, axis=-1)
    return scaled


def _batches(images: np.ndarray | Iterable[np.ndarray], batch_size: int) -> Iterable[np.ndarray]:
    if isinstance(images, np.ndarray):
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
    else:
        yield from images


def extract_features_and_logits(
    extractor: FeatureExtractor,
    counts: np.ndarray | Iterable[np.ndarray],
    *,
    max_count: int,
    batch_size: int = 500,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``extractor`` over count images, batch by batch.

    Args:
      extractor: any ``FeatureExtractor``.
      counts: one array (n, H, W, C) of counts, or an iterable of such batches.
      max_count: the largest count (255 for 8-bit images).
      batch_size: images per call when ``counts`` is one array.

    Returns:
      ``(features float32 (n, d), logits float32 (n, num_classes))``.
    """
    features, logits = [], []
    for batch in _batches(counts, batch_size):
        batch_features, batch_logits = extractor.features_and_logits(
            counts_to_uint8_rgb(batch, max_count)
        )
        features.append(np.asarray(batch_features, dtype=np.float32))
        logits.append(np.asarray(batch_logits, dtype=np.float32))
    if not features:
        raise ValueError("counts holds no images")
    return np.concatenate(features), np.concatenate(logits)


@dataclasses.dataclass(frozen=True)
class ReferenceStatistics:
    """Inception statistics of a reference set (the training set).

    Attributes:
      mean: float64 (d,); covariance: float64 (d, d); features: float32 (n, d) (for KID).
      dataset_name, extractor_id, max_count: what they were computed from.
    """

    mean: np.ndarray
    covariance: np.ndarray
    features: np.ndarray
    dataset_name: str
    extractor_id: str
    max_count: int

    @property
    def num_examples(self) -> int:
        return int(self.features.shape[0])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unnamed"


def reference_statistics_path(
    cache_dir: str | os.PathLike[str], dataset_name: str, extractor_id: str
) -> Path:
    """``cache_dir/reference_<dataset>__<extractor>.npz`` (names made file-safe)."""
    return Path(cache_dir) / f"reference_{_slug(dataset_name)}__{_slug(extractor_id)}.npz"


def _save_reference(path: Path, reference: ReferenceStatistics) -> None:
    """Write the cache atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(
                handle,
                mean=reference.mean,
                covariance=reference.covariance,
                features=reference.features,
                dataset_name=np.asarray(reference.dataset_name),
                extractor_id=np.asarray(reference.extractor_id),
                max_count=np.asarray(reference.max_count),
            )
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _load_reference(path: Path) -> ReferenceStatistics:
    with np.load(path) as stored:
        return ReferenceStatistics(
            mean=stored["mean"],
            covariance=stored["covariance"],
            features=stored["features"],
            dataset_name=str(stored["dataset_name"]),
            extractor_id=str(stored["extractor_id"]),
            max_count=int(stored["max_count"]),
        )


def load_or_compute_reference_statistics(
    cache_dir: str | os.PathLike[str],
    dataset_name: str,
    extractor: FeatureExtractor,
    training_images: np.ndarray | Callable[[], np.ndarray | Iterable[np.ndarray]],
    *,
    max_count: int,
    batch_size: int = 500,
) -> ReferenceStatistics:
    """Reference statistics of the training set, computed once and cached.

    If ``reference_statistics_path(cache_dir, dataset_name, extractor.extractor_id)`` exists it is
    loaded (the training images are then never touched); otherwise the features of all training
    images are extracted, their mean and covariance computed, and everything written there.

    Args:
      cache_dir: folder of the cache file (created if needed).
      dataset_name: name of the training set, part of the cache key.
      extractor: the feature network.
      training_images: counts (n, H, W, C), or a function returning them or an iterable of
        batches (called only when the cache is missing).
      max_count: the largest count of the data (255 for 8-bit images).
      batch_size: images per extractor call when the images come as one array.

    Raises:
      ValueError: the cached file was computed with a different max_count or extractor.
    """
    path = reference_statistics_path(cache_dir, dataset_name, extractor.extractor_id)
    if path.is_file():
        reference = _load_reference(path)
        if reference.max_count != max_count or reference.extractor_id != extractor.extractor_id:
            raise ValueError(
                f"cached reference statistics {path} were computed with max_count="
                f"{reference.max_count} and extractor {reference.extractor_id!r}, not max_count="
                f"{max_count} and {extractor.extractor_id!r}; delete the file to recompute"
            )
        return reference
    images = training_images() if callable(training_images) else training_images
    features, _ = extract_features_and_logits(
        extractor, images, max_count=max_count, batch_size=batch_size
    )
    mean, covariance = gaussian_statistics(features)
    reference = ReferenceStatistics(
        mean=mean,
        covariance=covariance,
        features=features,
        dataset_name=dataset_name,
        extractor_id=extractor.extractor_id,
        max_count=max_count,
    )
    _save_reference(path, reference)
    return reference


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def inception_sample_metrics(
    samples: np.ndarray | Iterable[np.ndarray],
    reference: ReferenceStatistics,
    extractor: FeatureExtractor,
    *,
    max_count: int,
    is_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, float | int]:
    """FID, IS and KID of generated count images against reference statistics.

    Args:
      samples: counts (n, H, W, C) in [0, max_count], or an iterable of such batches.
      reference: training-set statistics from ``load_or_compute_reference_statistics`` with the
        same extractor.
      extractor: the feature network.
      max_count: the largest count (255 for 8-bit images).
      is_splits: splits of the Inception score (10 is the standard); reduced to n if n is smaller.
      kid_subsets, kid_subset_size: KID subsets (standard 100 of 1000; the size shrinks to the
        smaller set when needed).
      seed: seed of the KID subsets.
      batch_size: images per extractor call when the samples come as one array.

    Returns:
      A JSON-ready dict: ``fid``, ``inception_score_mean``, ``inception_score_std``,
      ``kid_mean``, ``kid_std`` (floats), ``num_samples``, ``num_reference`` (ints).
    """
    if reference.extractor_id != extractor.extractor_id:
        raise ValueError(
            f"reference statistics come from extractor {reference.extractor_id!r}, "
            f"not {extractor.extractor_id!r}"
        )
    if reference.max_count != max_count:
        raise ValueError(
            f"reference statistics use max_count={reference.max_count}; got max_count={max_count}"
        )
    features, logits = extract_features_and_logits(
        extractor, samples, max_count=max_count, batch_size=batch_size
    )
    num_samples = features.shape[0]
    mean, covariance = gaussian_statistics(features)
    fid = frechet_distance(mean, covariance, reference.mean, reference.covariance)
    score_mean, score_std = inception_score(
        _softmax(logits), num_splits=min(is_splits, num_samples)
    )
    kid_mean, kid_std = kernel_inception_distance(
        features,
        reference.features,
        num_subsets=kid_subsets,
        subset_size=kid_subset_size,
        seed=seed,
    )
    return {
        "fid": float(fid),
        "inception_score_mean": score_mean,
        "inception_score_std": score_std,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "num_samples": int(num_samples),
        "num_reference": reference.num_examples,
    }
