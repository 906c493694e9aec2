"""Distances between sets of features: Fréchet distance, kernel distance and Inception score.

Everything here is NumPy/SciPy in float64 and knows nothing about where the features come from
(the Inception network for images, a small classifier for digits, or a test stub).

- Fréchet distance of two Gaussians N(mu1, S1), N(mu2, S2):
  ``FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``.
- Kernel distance (KID): the unbiased estimate of the squared maximum mean discrepancy with the
  polynomial kernel ``k(x, y) = (x . y / d + 1)^3``, averaged over random subsets.
- Inception score: ``IS = exp(E_x[KL(p(y|x) || p(y))])``, with ``p(y)`` the mean prediction.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

__all__ = [
    "frechet_distance",
    "gaussian_statistics",
    "inception_score",
    "kernel_inception_distance",
]

# Largest imaginary part of tr((S1 S2)^{1/2}) that is still treated as rounding noise.
_IMAGINARY_TOLERANCE = 1e-3
# Largest relative residual ||X X - A||_F / ||A||_F of the matrix square root accepted as is.
_SQRTM_RESIDUAL_TOLERANCE = 1e-6


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a set of feature vectors.

    Args:
      features: (n, d) array, one feature vector per row; n >= 2.

    Returns:
      ``(mu, sigma)``: mean (d,) and unbiased covariance (d, d) (divisor n - 1), both float64.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must have shape (n, d); got shape {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(
            f"features needs at least 2 rows for a covariance; got {features.shape[0]}"
        )
    mu = features.mean(axis=0)
    sigma = np.cov(features, rowvar=False)
    return mu, np.atleast_2d(sigma)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """tr((sigma1 sigma2)^{1/2}), adding ``eps * I`` to both factors if the product is singular."""
    product = sigma1 @ sigma2
    with warnings.catch_warnings():
        # Singular products (e.g. features that never vary) are expected; the residual check
        # below decides whether the root is usable.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        sqrt_product = linalg.sqrtm(product)
    product_norm = max(np.linalg.norm(product), np.finfo(np.float64).tiny)
    finite = np.all(np.isfinite(sqrt_product))
    residual = (
        np.linalg.norm(sqrt_product @ sqrt_product - product) / product_norm if finite else np.inf
    )
    if not finite or residual > _SQRTM_RESIDUAL_TOLERANCE:
        offset = eps * np.eye(sigma1.shape[0])
        sqrt_product = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.all(np.isfinite(sqrt_product)):
            raise ValueError(
                "the matrix square root of sigma1 @ sigma2 is not finite even after adding "
                f"eps * I (eps={eps}); the covariances are not positive semi-definite"
            )
    trace = np.trace(sqrt_product)
    if np.iscomplexobj(trace):
        if abs(trace.imag) > _IMAGINARY_TOLERANCE * max(1.0, abs(trace.real)):
            raise ValueError(
                "the matrix square root of sigma1 @ sigma2 has a large imaginary trace "
                f"({trace.imag:.3g}); the covariances are not positive semi-definite"
            )
        trace = trace.real
    return float(trace)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    eps: float = 1e-6,
) -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mu1, sigma1) and N(mu2, sigma2).

    ``FD = ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``.

    The matrix square root is computed with ``scipy.linalg.sqrtm`` in float64. When the product
    is (near-)singular, so that the root is not finite or not accurate, ``eps * I`` is added to
    both covariances and the root is taken again. Tiny imaginary parts from rounding are dropped;
    a large one raises ValueError.

    Args:
      mu1, mu2: means, shape (d,).
      sigma1, sigma2: covariances, shape (d, d), symmetric positive semi-definite.
      eps: diagonal offset used only when the plain square root fails.

    Returns:
      The distance as a Python float (>= 0 up to rounding).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,):
        raise ValueError(f"mu1 and mu2 must both have shape (d,); got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"sigma1 and sigma2 must both have shape ({dim}, {dim}); "
            f"got {sigma1.shape} and {sigma2.shape}"
        )
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    trace_sqrt = _trace_sqrt_product(sigma1, sigma2, eps)
    return mean_term + float(np.trace(sigma1) + np.trace(sigma2)) - 2.0 * trace_sqrt


def _polynomial_kernel(features_x: np.ndarray, features_y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3 for all pairs of rows; shape (n_x, n_y)."""
    dim = features_x.shape[1]
    return (features_x @ features_y.T / dim + 1.0) ** 3


def _unbiased_mmd_squared(features_x: np.ndarray, features_y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size sets (m rows each) under the polynomial kernel.

    ``MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2``.
    """
    size = features_x.shape[0]
    kernel_xx = _polynomial_kernel(features_x, features_x)
    kernel_yy = _polynomial_kernel(features_y, features_y)
    kernel_xy = _polynomial_kernel(features_x, features_y)
    off_diagonal_xx = kernel_xx.sum() - np.trace(kernel_xx)
    off_diagonal_yy = kernel_yy.sum() - np.trace(kernel_yy)
    return float(
        (off_diagonal_xx + off_diagonal_yy) / (size * (size - 1))
        - 2.0 * kernel_xy.sum() / (size * size)
    )


def kernel_inception_distance(
    features_a: np.ndarray,
    features_b: np.ndarray,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel distance (KID) between two feature sets: mean and std of the unbiased MMD^2.

    For each of ``num_subsets`` rounds, ``subset_size`` rows are drawn without replacement from
    each set (NumPy ``default_rng(seed)``) and the unbiased MMD^2 with the polynomial kernel
    ``k(x, y) = (x . y / d + 1)^3`` is computed. When a set has fewer rows than ``subset_size``
    the subset size shrinks to the smaller set size.

    Args:
      features_a: (n_a, d) features. features_b: (n_b, d) features.
      num_subsets: number of random subsets (>= 1).
      subset_size: rows per subset (>= 2).
      seed: seed of the subset draws.

    Returns:
      ``(mean, std)`` over the subsets, as Python floats. The estimate is unbiased, so for two
      sets from the same distribution the mean is near 0 and may be slightly negative.
    """
    features_a = np.asarray(features_a, dtype=np.float64)
    features_b = np.asarray(features_b, dtype=np.float64)
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            "features_a and features_b must have shapes (n_a, d) and (n_b, d); "
            f"got {features_a.shape} and {features_b.shape}"
        )
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1; got {num_subsets}")
    size = min(subset_size, features_a.shape[0], features_b.shape[0])
    if size < 2:
        raise ValueError(
            f"subset_size and both feature sets need at least 2 rows; got subset_size="
            f"{subset_size}, n_a={features_a.shape[0]}, n_b={features_b.shape[0]}"
        )
    rng = np.random.default_rng(seed)
    estimates = np.empty(num_subsets, dtype=np.float64)
    for index in range(num_subsets):
        rows_a = rng.choice(features_a.shape[0], size=size, replace=False)
        rows_b = rng.choice(features_b.shape[0], size=size, replace=False)
        estimates[index] = _unbiased_mmd_squared(features_a[rows_a], features_b[rows_b])
    return float(estimates.mean()), float(estimates.std())


def inception_score(
    class_probabilities: np.ndarray, *, num_splits: int = 10
) -> tuple[float, float]:
    """Inception score ``exp(E_x[KL(p(y|x) || p(y))])``, mean and std over splits.

    The rows are cut, in order, into ``num_splits`` contiguous splits of (nearly) equal size; in
    each split ``p(y)`` is the mean of its rows and the score is
    ``exp(mean_x sum_y p(y|x) (log p(y|x) - log p(y)))`` (0 log 0 = 0).

    Args:
      class_probabilities: (n, num_classes) rows of class probabilities (each row sums to 1).
      num_splits: number of splits, 1 <= num_splits <= n.

    Returns:
      ``(mean, std)`` of the per-split scores. Ranges from 1 (every prediction equal) to
      num_classes (confident predictions spread evenly over all classes).
    """
    probabilities = np.asarray(class_probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(
            f"class_probabilities must have shape (n, num_classes); got {probabilities.shape}"
        )
    if np.any(probabilities < 0) or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("class_probabilities must be non-negative rows that sum to 1")
    num_rows = probabilities.shape[0]
    if not 1 <= num_splits <= num_rows:
        raise ValueError(f"num_splits must be in [1, {num_rows}]; got {num_splits}")
    scores = []
    for split in np.array_split(probabilities, num_splits, axis=0):
        marginal = split.mean(axis=0, keepdims=True)
        # p(y|x) > 0 implies p(y) > 0; terms with p(y|x) = 0 contribute 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = np.where(split > 0, np.log(split) - np.log(marginal), 0.0)
        kl_per_row = np.sum(split * log_ratio, axis=1)
        scores.append(np.exp(kl_per_row.mean()))
    scores_array = np.asarray(scores)
    return float(scores_array.mean()), float(scores_array.std())
