"""Baselines for imputing hidden counts and for un-thinning thinned counts, with their errors.

Imputation: a share of the non-zero entries of a count matrix is hidden (set to zero in the
observed matrix, their positions known), as in the single-cell imputation benchmarks (e.g.
scVI, Lopez et al., Nature Methods 15, 1053-1058 (2018), which zero out 10% of the non-zero
entries), and each baseline proposes values for the hidden entries:

- zero fill;
- the per-gene training mean;
- the per-gene negative binomial posterior mean: a hidden entry carries no observation of its
  own and genes are independent under the per-gene model, so this is the NB mean ``mu_d``
  (equal to the training mean up to the mean floor of
  :class:`~blackout_jax.metrics.count_baselines.PerGeneNegativeBinomial`);
- the NB-mixture posterior mean ``sum_k p(k | observed entries) mu_kd``, where the component
  posterior uses only the cell's visible entries.

Un-thinning: ``y ~ Binomial(n, q)`` is observed and n is estimated by ``y / q`` or by the
posterior mean under a per-gene negative binomial prior on n. Writing the prior as
``n | lambda ~ Poisson(lambda)``, ``lambda ~ Gamma(r, theta)`` (shape r, scale
``theta = mu / r``): ``y | lambda ~ Poisson(q lambda)`` and ``n - y`` is independent of y given
lambda with mean ``(1 - q) lambda``; the posterior is ``lambda | y ~ Gamma(r + y,
theta / (1 + theta q))``, so

    ``E[n | y] = y + (1 - q) (r + y) theta / (1 + theta q)``,

which for ``r = inf`` (Poisson prior) is ``y + (1 - q) mu``.

Errors (:func:`count_errors`) are mean absolute error and root mean squared error, on the raw
counts and in log1p space, over the entries of a mask (or over all entries).
"""

from __future__ import annotations

import numpy as np

from blackout_jax.metrics.count_baselines import PerGeneNegativeBinomial
from blackout_jax.metrics.count_likelihood import count_matrix
from blackout_jax.metrics.count_mixture import NegativeBinomialMixture

__all__ = [
    "count_errors",
    "impute_gene_mean",
    "impute_mixture_posterior_mean",
    "impute_nb_posterior_mean",
    "impute_zero",
    "mask_nonzero_entries",
    "thin_counts",
    "unthin_nb_posterior_mean",
    "unthin_rescale",
]


def mask_nonzero_entries(
    counts: np.ndarray, fraction: float = 0.1, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hide ``round(fraction * nnz)`` non-zero entries chosen uniformly without replacement.

    Args:
      counts: (N, D) counts.
      fraction: share of the non-zero entries to hide, in [0, 1].
      seed: seed of ``numpy.random.default_rng``.

    Returns:
      ``(observed, mask)``: ``observed`` (N, D) int64 is ``counts`` with the hidden entries set
      to 0; ``mask`` (N, D) bool is True at the hidden entries.
    """
    counts = count_matrix(counts)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1]; got {fraction}")
    nonzero = np.flatnonzero(counts)
    num_hidden = int(round(fraction * nonzero.size))
    hidden = np.random.default_rng(seed).choice(nonzero, size=num_hidden, replace=False)
    mask = np.zeros(counts.size, dtype=bool)
    mask[hidden] = True
    mask = mask.reshape(counts.shape)
    return np.where(mask, 0, counts), mask


def _check_mask(observed: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    observed = count_matrix(observed, "observed")
    mask = np.asarray(mask)
    if mask.shape != observed.shape or mask.dtype != np.bool_:
        raise ValueError(
            f"mask must be a bool array of shape {observed.shape}; got {mask.dtype} {mask.shape}"
        )
    return observed, mask


def _fill(observed: np.ndarray, mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``observed`` as float64 with the masked entries replaced by ``values`` (broadcast)."""
    return np.where(mask, np.broadcast_to(values, observed.shape), observed.astype(np.float64))


def impute_zero(observed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked entries filled with 0, (N, D) float64."""
    observed, mask = _check_mask(observed, mask)
    return _fill(observed, mask, np.zeros(observed.shape[1]))


def impute_gene_mean(observed: np.ndarray, mask: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Masked entries filled with the per-gene mean of ``train`` (M, D), (N, D) float64."""
    observed, mask = _check_mask(observed, mask)
    train = count_matrix(train, "train")
    if train.shape[1] != observed.shape[1]:
        raise ValueError(f"train must have {observed.shape[1]} genes; got shape {train.shape}")
    return _fill(observed, mask, train.mean(axis=0))


def impute_nb_posterior_mean(
    observed: np.ndarray, mask: np.ndarray, model: PerGeneNegativeBinomial
) -> np.ndarray:
    """Masked entries filled with ``E[x_d | visible entries] = mu_d`` under the per-gene NB
    (genes are independent, so the visible entries say nothing about a hidden one)."""
    observed, mask = _check_mask(observed, mask)
    return _fill(observed, mask, model.mean)


def impute_mixture_posterior_mean(
    observed: np.ndarray, mask: np.ndarray, mixture: NegativeBinomialMixture
) -> np.ndarray:
    """Masked entries filled with ``sum_k p(k | visible entries of the cell) mu_kd``.

    The component log-likelihood of a cell counts only its visible entries: the log p(0) of
    every masked entry (observed as 0) is taken back out of the full log-likelihood.
    """
    observed, mask = _check_mask(observed, mask)
    joint = mixture.component_log_likelihoods(observed) + mixture.log_weights[None, :]
    joint -= mask.astype(np.float64) @ mixture.zero_log_probabilities().T
    joint -= joint.max(axis=1, keepdims=True)
    posterior = np.exp(joint)
    posterior /= posterior.sum(axis=1, keepdims=True)
    return _fill(observed, mask, posterior @ mixture.mean)


def thin_counts(counts: np.ndarray, keep_probability: float, *, seed: int = 0) -> np.ndarray:
    """``y ~ Binomial(n, q)`` entrywise with ``q = keep_probability``, (N, D) int64."""
    counts = count_matrix(counts)
    if not 0.0 < keep_probability <= 1.0:
        raise ValueError(f"keep_probability must be in (0, 1]; got {keep_probability}")
    return np.random.default_rng(seed).binomial(counts, keep_probability)


def unthin_rescale(thinned: np.ndarray, keep_probability: float) -> np.ndarray:
    """``y / q``, the unbiased estimate of n from ``y ~ Binomial(n, q)``, (N, D) float64."""
    thinned = count_matrix(thinned, "thinned")
    if not 0.0 < keep_probability <= 1.0:
        raise ValueError(f"keep_probability must be in (0, 1]; got {keep_probability}")
    return thinned / keep_probability


def unthin_nb_posterior_mean(
    thinned: np.ndarray, keep_probability: float, model: PerGeneNegativeBinomial
) -> np.ndarray:
    """``E[n | y] = y + (1 - q) mu (1 + y / r) / (1 + q mu / r)`` per entry, (N, D) float64.

    This is ``y + (1 - q) (r + y) theta / (1 + theta q)`` with ``theta = mu / r`` (module
    docstring); ``r = inf`` gives the Poisson-prior mean ``y + (1 - q) mu``.
    """
    thinned = count_matrix(thinned, "thinned").astype(np.float64)
    if not 0.0 < keep_probability <= 1.0:
        raise ValueError(f"keep_probability must be in (0, 1]; got {keep_probability}")
    if thinned.shape[1] != model.mean.shape[0]:
        raise ValueError(f"thinned must have {model.mean.shape[0]} genes; got {thinned.shape}")
    inverse_size = np.where(np.isfinite(model.size), 1.0 / model.size, 0.0)[None, :]
    mean = model.mean[None, :]
    rest = (1.0 - keep_probability) * mean * (1.0 + thinned * inverse_size)
    return thinned + rest / (1.0 + keep_probability * mean * inverse_size)


def count_errors(
    estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """Errors of ``estimate`` against ``truth`` (both (N, D)) over the masked entries.

    Returns:
      ``mae`` and ``rmse`` of ``estimate - truth``, ``log1p_mae`` and ``log1p_rmse`` of
      ``log1p(estimate) - log1p(truth)`` (estimates clipped at 0 first), and ``num_entries``;
      over the entries where ``mask`` is True, or over all entries when ``mask`` is None.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if estimate.shape != truth.shape:
        raise ValueError(
            f"estimate and truth must have one shape; got {estimate.shape} and {truth.shape}"
        )
    if mask is None:
        mask = np.ones(truth.shape, dtype=bool)
    elif np.shape(mask) != truth.shape:
        raise ValueError(f"mask must have shape {truth.shape}; got {np.shape(mask)}")
    selected, reference = estimate[mask], truth[mask]
    if selected.size == 0:
        raise ValueError("mask selects no entry")
    difference = selected - reference
    log_difference = np.log1p(np.maximum(selected, 0.0)) - np.log1p(reference)
    return {
        "mae": float(np.mean(np.abs(difference))),
        "rmse": float(np.sqrt(np.mean(difference**2))),
        "log1p_mae": float(np.mean(np.abs(log_difference))),
        "log1p_rmse": float(np.sqrt(np.mean(log_difference**2))),
        "num_entries": int(selected.size),
    }
