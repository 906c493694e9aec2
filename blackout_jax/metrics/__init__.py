"""Sample-quality metrics.

- ``frechet``: Fréchet distance, kernel distance (KID) and Inception score from features (NumPy).
- ``digits_features``: a classifier-feature Fréchet distance (with its real-vs-real floor) and the
  class distribution for sklearn's 8x8 digits.
- ``inception``: FID/IS/KID with the standard Inception network (optional ``fid`` extra, local
  weights file, cached training-set statistics).

See docs/metrics.md for the protocol.
"""

from blackout_jax.metrics.digits_features import (
    DigitsFeatureExtractor,
    digits_sample_metrics,
    digits_train_test_split,
    fitted_digits_extractor,
)
from blackout_jax.metrics.frechet import (
    frechet_distance,
    gaussian_statistics,
    inception_score,
    kernel_inception_distance,
)
from blackout_jax.metrics.inception import (
    FeatureExtractor,
    ReferenceStatistics,
    TorchFidelityInception,
    counts_to_uint8_rgb,
    default_inception_weights_path,
    extract_features_and_logits,
    inception_sample_metrics,
    load_or_compute_reference_statistics,
    reference_statistics_path,
)

__all__ = [
    "DigitsFeatureExtractor",
    "FeatureExtractor",
    "ReferenceStatistics",
    "TorchFidelityInception",
    "counts_to_uint8_rgb",
    "default_inception_weights_path",
    "digits_sample_metrics",
    "digits_train_test_split",
    "extract_features_and_logits",
    "fitted_digits_extractor",
    "frechet_distance",
    "gaussian_statistics",
    "inception_sample_metrics",
    "inception_score",
    "kernel_inception_distance",
    "load_or_compute_reference_statistics",
    "reference_statistics_path",
]
