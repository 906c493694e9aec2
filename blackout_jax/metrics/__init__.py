"""Sample-quality metrics.

- ``frechet``: Fréchet distance, kernel distance (KID) and Inception score from features (NumPy).
- ``digits_features``: a classifier-feature Fréchet distance (with its real-vs-real floor) and the
  class distribution for sklearn's 8x8 digits.
- ``count_likelihood``, ``count_mixture``, ``count_baselines``: per-gene Poisson, negative
  binomial and NB-mixture baselines for count vectors (cells x genes), in bits per entry.
- ``count_fidelity``: per-gene and per-cell comparisons of generated with real count vectors, a
  Fréchet distance in a PCA space of the real cells with its real-vs-real floor, and a PNG.
- ``count_imputation``: masking, imputation and un-thinning baselines and their errors.
- ``inception``: FID/IS/KID with the standard Inception network (optional ``fid`` extra, local
  weights file, cached training-set statistics).

See docs/metrics.md for the protocol.
"""

from blackout_jax.metrics.count_baselines import (
    PerGeneNegativeBinomial,
    PerGenePoisson,
    baseline_bits_per_entry,
)
from blackout_jax.metrics.count_fidelity import (
    CountPCA,
    count_sample_fidelity,
    plot_count_fidelity,
)
from blackout_jax.metrics.count_imputation import (
    count_errors,
    impute_gene_mean,
    impute_mixture_posterior_mean,
    impute_nb_posterior_mean,
    impute_zero,
    mask_nonzero_entries,
    thin_counts,
    unthin_nb_posterior_mean,
    unthin_rescale,
)
from blackout_jax.metrics.count_mixture import (
    NegativeBinomialMixture,
    fit_nb_mixture,
    select_mixture_components,
)
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
    "CountPCA",
    "DigitsFeatureExtractor",
    "FeatureExtractor",
    "NegativeBinomialMixture",
    "PerGeneNegativeBinomial",
    "PerGenePoisson",
    "ReferenceStatistics",
    "TorchFidelityInception",
    "baseline_bits_per_entry",
    "count_errors",
    "count_sample_fidelity",
    "counts_to_uint8_rgb",
    "default_inception_weights_path",
    "digits_sample_metrics",
    "digits_train_test_split",
    "extract_features_and_logits",
    "fit_nb_mixture",
    "fitted_digits_extractor",
    "frechet_distance",
    "gaussian_statistics",
    "impute_gene_mean",
    "impute_mixture_posterior_mean",
    "impute_nb_posterior_mean",
    "impute_zero",
    "inception_sample_metrics",
    "inception_score",
    "kernel_inception_distance",
    "load_or_compute_reference_statistics",
    "mask_nonzero_entries",
    "plot_count_fidelity",
    "reference_statistics_path",
    "select_mixture_components",
    "thin_counts",
    "unthin_nb_posterior_mean",
    "unthin_rescale",
]
