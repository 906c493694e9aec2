"""A mixture of per-gene negative binomial components over cells, fitted by EM.

``x ~ sum_k pi_k prod_d NB(x_d; mu_kd, r_kd)`` (likelihood in
:mod:`blackout_jax.metrics.count_likelihood`). EM over cells: responsibilities per cell, M step
by weighted moments, each size update kept only where it does not lower the EM objective, so the
training log-likelihood never decreases; the number of components is chosen on a validation part
of the training split and the mixture is then refitted on the whole split.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import special

from blackout_jax.metrics.count_likelihood import (
    SparseCounts,
    bits_per_entry,
    component_log_likelihoods,
    count_matrix,
    gene_terms,
    mean_floor,
    mixture_log_prob,
    moment_sizes,
    pair_terms,
    sparse_counts,
)

__all__ = [
    "DEFAULT_CANDIDATE_COMPONENTS",
    "NegativeBinomialMixture",
    "fit_nb_mixture",
    "select_mixture_components",
]

# Fraction of the training cells held out to choose the number of mixture components.
VALIDATION_FRACTION = 0.2
DEFAULT_CANDIDATE_COMPONENTS = (1, 2, 3, 5, 8)
# EM stops when the mean training log-likelihood per entry gains less than this (nats).
EM_TOLERANCE = 1e-6
EM_MAX_ITERATIONS = 200
KMEANS_ITERATIONS = 10


@dataclasses.dataclass(frozen=True)
class NegativeBinomialMixture:
    """x ~ sum_k pi_k prod_d NB(x_d; mean_kd, size_kd).

    ``log_weights``: (K,) log pi_k; ``mean``, ``size``: (K, D), size inf = Poisson.
    """

    log_weights: np.ndarray
    mean: np.ndarray
    size: np.ndarray

    @property
    def num_components(self) -> int:
        return int(self.log_weights.shape[0])

    @classmethod
    def fit(
        cls,
        train: np.ndarray,
        *,
        seed: int = 0,
        candidates: tuple[int, ...] = DEFAULT_CANDIDATE_COMPONENTS,
    ) -> NegativeBinomialMixture:
        """K chosen by :func:`select_mixture_components`, then EM on the whole of ``train``."""
        num_components, _ = select_mixture_components(train, seed=seed, candidates=candidates)
        mixture, _ = fit_nb_mixture(train, num_components, seed=seed)
        return mixture

    def log_prob(self, counts: np.ndarray) -> np.ndarray:
        """``log sum_k pi_k prod_d NB(x_d; mean_kd, size_kd)`` per cell, (N,) nats."""
        return mixture_log_prob(counts, self.log_weights, self.mean, self.size)

    def component_log_likelihoods(self, counts: np.ndarray) -> np.ndarray:
        """``log prod_d NB(x_d; mean_kd, size_kd)`` per cell and component, (N, K) nats."""
        data = sparse_counts(count_matrix(counts))
        if data.shape[1] != self.mean.shape[1]:
            raise ValueError(f"counts must have {self.mean.shape[1]} genes; got {data.shape}")
        return component_log_likelihoods(data, self.mean, self.size, pair_terms(data, self.size))

    def zero_log_probabilities(self) -> np.ndarray:
        """``log NB(0; mean_kd, size_kd)`` per component and gene, (K, D) nats."""
        zero, _ = gene_terms(self.mean, self.size)
        return zero

    def responsibilities(self, counts: np.ndarray) -> np.ndarray:
        """Posterior component probabilities ``p(k | x)`` per cell, (N, K)."""
        joint = self.component_log_likelihoods(counts) + self.log_weights[None, :]
        return np.exp(joint - special.logsumexp(joint, axis=1, keepdims=True))


def _kmeans_assignments(data: SparseCounts, num_components: int, seed: int) -> np.ndarray:
    """Hard cluster labels (N,) of log1p counts by k-means++ seeding and Lloyd steps."""
    points = data.matrix.log1p()
    norms = np.asarray(points.multiply(points).sum(axis=1)).ravel()
    rng = np.random.default_rng(seed)
    num_cells = data.shape[0]
    centres = [points[rng.integers(num_cells)].toarray().ravel()]

    def squared_distances(centre_matrix: np.ndarray) -> np.ndarray:
        cross = points @ centre_matrix.T
        return np.maximum(norms[:, None] - 2 * cross + (centre_matrix**2).sum(axis=1)[None], 0)

    for _ in range(1, num_components):
        nearest = squared_distances(np.stack(centres)).min(axis=1)
        total = nearest.sum()
        probabilities = nearest / total if total > 0 else np.full(num_cells, 1.0 / num_cells)
        centres.append(points[rng.choice(num_cells, p=probabilities)].toarray().ravel())
    centre_matrix = np.stack(centres)
    for _ in range(KMEANS_ITERATIONS):
        labels = squared_distances(centre_matrix).argmin(axis=1)
        for component in range(num_components):
            members = labels == component
            if members.any():
                centre_matrix[component] = np.asarray(points[members].mean(axis=0)).ravel()
    return squared_distances(centre_matrix).argmin(axis=1)


def _weighted_moments(data: SparseCounts, weights: np.ndarray):
    """Component weights (K,), weighted means and variances (K, D) of the counts."""
    totals = weights.sum(axis=0)
    safe_totals = np.maximum(totals, np.finfo(np.float64).tiny)[:, None]
    first = (data.matrix.T @ weights).T / safe_totals
    second = (data.squares.T @ weights).T / safe_totals
    return totals, first, np.maximum(second - first**2, 0.0)


def _log_mixture_weights(totals: np.ndarray, num_cells: int) -> np.ndarray:
    """``log pi_k = log(W_k / N)``, with an empty component at the smallest positive weight."""
    return np.log(np.maximum(totals, np.finfo(np.float64).tiny) / num_cells)


def _expected_complete_log_likelihood(
    data: SparseCounts,
    totals: np.ndarray,
    sums: np.ndarray,
    pair_weights: np.ndarray,
    mean: np.ndarray,
    size: np.ndarray,
    current_terms: np.ndarray,
) -> np.ndarray:
    """The NB part of the EM objective per component and gene, (K, D):
    ``Q_kd = W_k log p(0) + S_kd log_odds + sum_pairs w * (lgamma(v + r) - lgamma(r))``
    (without the ``lgamma(y + 1)`` terms, which do not depend on the parameters)."""
    zero, log_odds = gene_terms(mean, size)
    pair_part = (data.gene_pairs @ (pair_weights * current_terms)).T
    return totals[:, None] * zero + sums * log_odds + pair_part


def fit_nb_mixture(
    train: np.ndarray,
    num_components: int,
    *,
    seed: int = 0,
    max_iterations: int = EM_MAX_ITERATIONS,
    tolerance: float = EM_TOLERANCE,
) -> tuple[NegativeBinomialMixture, np.ndarray]:
    """A mixture of ``num_components`` per-gene NB components over cells, fitted by EM.

    Start: hard k-means++ labels of log1p counts (``seed``). E step: responsibilities
    ``w_ik = pi_k p_k(x_i) / sum_j pi_j p_j(x_i)``. M step: ``pi_k = sum_i w_ik / N``, means by
    weighted averages (floored at ``0.5 / N``; the exact maximiser for fixed sizes), and per
    (component, gene) the weighted-moment size ``mu^2 / (v - mu)`` is taken only where it does
    not lower the expected complete log-likelihood, else the previous size is kept. Each step
    therefore cannot lower the training log-likelihood (a generalised EM).

    Args:
      train: (N, D) counts.
      num_components: K >= 1.
      seed: seed of the k-means++ start.
      max_iterations: most EM iterations.
      tolerance: stop once the mean log-likelihood per entry gains less than this (nats).

    Returns:
      ``(mixture, log_likelihoods)``: the fitted mixture and the training log-likelihood
      ``sum_i log p(x_i)`` (nats) at the start of every E step, (iterations,).
    """
    train = count_matrix(train, "train")
    num_cells, num_genes = train.shape
    if not 1 <= num_components <= num_cells:
        raise ValueError(f"num_components must be in [1, {num_cells}]; got {num_components}")
    data = sparse_counts(train)
    floor = mean_floor(num_cells)
    labels = _kmeans_assignments(data, num_components, seed)
    weights = np.eye(num_components)[labels]
    totals, first, variance = _weighted_moments(data, weights)
    mean = np.maximum(first, floor)
    size = moment_sizes(mean, variance)
    current_terms = pair_terms(data, size)
    log_likelihoods = []
    for _ in range(max_iterations):
        log_weights = _log_mixture_weights(totals, num_cells)
        joint = component_log_likelihoods(data, mean, size, current_terms) + log_weights[None, :]
        per_cell = special.logsumexp(joint, axis=1)
        log_likelihoods.append(float(per_cell.sum()))
        if (
            len(log_likelihoods) > 1
            and log_likelihoods[-1] - log_likelihoods[-2] < tolerance * num_cells * num_genes
        ):
            break
        weights = np.exp(joint - per_cell[:, None])
        totals, first, variance = _weighted_moments(data, weights)
        mean = np.maximum(first, floor)
        pair_weights = data.cell_pairs.T @ weights
        sums = first * totals[:, None]
        candidate_size = moment_sizes(mean, variance)
        candidate_terms = pair_terms(data, candidate_size)
        accept = _expected_complete_log_likelihood(
            data, totals, sums, pair_weights, mean, candidate_size, candidate_terms
        ) >= _expected_complete_log_likelihood(
            data, totals, sums, pair_weights, mean, size, current_terms
        )
        size = np.where(accept, candidate_size, size)
        current_terms = np.where(accept[:, data.pair_genes].T, candidate_terms, current_terms)
    mixture = NegativeBinomialMixture(
        log_weights=_log_mixture_weights(totals, num_cells), mean=mean, size=size
    )
    return mixture, np.asarray(log_likelihoods)


def select_mixture_components(
    train: np.ndarray,
    *,
    seed: int = 0,
    candidates: tuple[int, ...] = DEFAULT_CANDIDATE_COMPONENTS,
    validation_fraction: float = VALIDATION_FRACTION,
) -> tuple[int, dict[int, float]]:
    """The number of components with the best validation log-likelihood.

    The training cells are shuffled with ``default_rng(seed)``; the last
    ``round(validation_fraction * N)`` are the validation part, the rest fit one mixture per
    candidate K (:func:`fit_nb_mixture`). Candidates above the fitting size are skipped.

    Returns:
      ``(best_k, validation_bits)``: the chosen K and the validation bits per entry of each K.
    """
    train = count_matrix(train, "train")
    num_validation = int(round(validation_fraction * train.shape[0]))
    if not 1 <= num_validation < train.shape[0]:
        raise ValueError(
            f"validation_fraction={validation_fraction} leaves {num_validation} of "
            f"{train.shape[0]} training cells for validation; need at least one on each side"
        )
    order = np.random.default_rng(seed).permutation(train.shape[0])
    fitting, validation = train[order[:-num_validation]], train[order[-num_validation:]]
    validation_bits = {}
    for num_components in candidates:
        if num_components > fitting.shape[0]:
            continue
        mixture, _ = fit_nb_mixture(fitting, num_components, seed=seed)
        validation_bits[int(num_components)] = bits_per_entry(
            mixture.log_prob(validation), train.shape[1]
        )
    if not validation_bits:
        raise ValueError(f"no candidate in candidates={candidates} fits {fitting.shape[0]} cells")
    best = min(validation_bits, key=validation_bits.get)
    return best, validation_bits
