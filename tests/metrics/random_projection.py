"""A stand-in feature network for the tests of the Inception-metric pipeline (NumPy only)."""

from __future__ import annotations

import numpy as np

from blackout_jax.metrics.inception import check_uint8_rgb


class RandomProjectionExtractor:
    """A stand-in feature network: a fixed random linear map of the pixels (NumPy only).

    For tests of the evaluation pipeline without torch or weights; its numbers are not comparable
    to FID/IS/KID. Images are average-pooled to ``pooled_size`` x ``pooled_size``
    (any input size whose sides are multiples of it), scaled to [0, 1], then projected:
    ``features = tanh(x W1)``, ``logits = features W2``.
    """

    def __init__(
        self,
        *,
        num_features: int = 32,
        num_classes: int = 10,
        pooled_size: int = 4,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        num_inputs = pooled_size * pooled_size * 3
        self.pooled_size = pooled_size
        self.feature_weights = rng.normal(size=(num_inputs, num_features)) / np.sqrt(num_inputs)
        self.logit_weights = rng.normal(size=(num_features, num_classes)) * 3.0
        self.extractor_id = f"random-projection-{num_features}-{num_classes}-{pooled_size}-{seed}"

    def features_and_logits(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (n, H, W, 3) -> (features (n, num_features), logits (n, num_classes))."""
        images = check_uint8_rgb(images)
        num_images, height, width, _ = images.shape
        size = self.pooled_size
        if height % size or width % size:
            raise ValueError(
                f"images height and width must be multiples of pooled_size={size}; "
                f"got {height}x{width}"
            )
        pooled = (
            images.astype(np.float64)
            .reshape(num_images, size, height // size, size, width // size, 3)
            .mean(axis=(2, 4))
            / 255.0
        )
        features = np.tanh(pooled.reshape(num_images, -1) @ self.feature_weights)
        return features, features @ self.logit_weights
