"""Per-gene count baselines for single-cell count vectors, scored in bits per entry.

Three models of a cell x in N^D (one count per gene), fitted on training cells and scored on
held-out cells; every one factorises over genes given its (latent) component:

- ``PerGenePoisson``: x_d ~ Poisson(lambda_d), lambda_d the training mean (maximum likelihood).
- ``PerGeneNegativeBinomial``: x_d ~ NB(mu_d, r_d) by the method of moments,
  ``r_d = mu_d^2 / (v_d - mu_d)`` with v_d the training variance (divisor N); a gene with
  ``v_d <= mu_d`` keeps the Poisson limit ``r_d = inf``.
- ``NegativeBinomialMixture``: x ~ sum_k pi_k prod_d NB(x_d; mu_kd, r_kd), fitted by EM over cells
  (responsibilities per cell, M step by weighted moments), the number of components chosen on a
  validation part of the training split.

The negative binomial with mean mu and size r (variance ``mu + mu^2 / r``) has
``log p(y) = lgamma(y + r) - lgamma(r) - lgamma(y + 1) + r log(r / (r + mu))
+ y log(mu / (r + mu))``, which is ``scipy.stats.nbinom.logpmf(y, r, r / (r + mu))``;
``r = inf`` is the Poisson(mu) pmf.

Floors: a mean is never below ``0.5 / N_train`` (half a count over the training cells), so a gene
or component that saw no count still gives every held-out count a positive probability. A
size above ``MAX_SIZE`` is treated as the Poisson limit (the two pmfs then differ by about
``mu^2 / (2 r)`` nats, and ``lgamma(y + r) - lgamma(r)`` loses precision for huge r).

Bits per entry: ``-sum_{cells, genes} log2 p / (N_test * D)``.

Everything is NumPy/SciPy in float64 on a sparse view of the counts (single-cell counts are
mostly zeros): the log-likelihood of a cell is a sum over genes of a zero term plus, for its
non-zero entries only, ``lgamma(y + r) - lgamma(r) + y log(mu / (r + mu)) - lgamma(y + 1)``;
``lgamma(y + r) - lgamma(r)`` is evaluated once per distinct (gene, value) pair.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import sparse, special

from blackout_jax.likelihood import bits_per_dim

__all__ = [
    "MAX_SIZE",
    "NegativeBinomialMixture",
    "PerGeneNegativeBinomial",
    "PerGenePoisson",
    "baseline_bits_per_entry",
    "count_matrix",
    "fit_nb_mixture",
    "select_mixture_components",
]

# Sizes r above this are the Poisson limit r = inf.
MAX_SIZE = 1e6
# Fraction of the training cells held out to choose the number of mixture components.
VALIDATION_FRACTION = 0.2
DEFAULT_CANDIDATE_COMPONENTS = (1, 2, 3, 5, 8)
# EM stops when the mean training log-likelihood per entry gains less than this (nats).
EM_TOLERANCE = 1e-6
EM_MAX_ITERATIONS = 200
KMEANS_ITERATIONS = 10


def count_matrix(counts: np.ndarray, name: str = "counts") -> np.ndarray:
    """``counts`` as a (N, D) int64 array after checking it is a matrix of non-negative integers."""
    array = np.asarray(counts)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, D) with N, D >= 1; got shape {array.shape}")
    whole_dtype = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_)
    if not whole_dtype:
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} must hold whole numbers; {name}[{index}] = {array[index]}")
    if np.any(array < 0):
        index = tuple(int(i) for i in np.argwhere(array < 0)[0])
        raise ValueError(f"{name} must be non-negative; {name}[{index}] = {array[index]}")
    return array.astype(np.int64)


def mean_floor(num_cells: int) -> float:
    """Smallest mean a fitted gene or component may have: half a count over ``num_cells``."""
    return 0.5 / num_cells


@dataclasses.dataclass(frozen=True)
class _SparseCounts:
    """A (N, D) count matrix as the sparse pieces the likelihoods need.

    ``matrix``: CSR (N, D) float64 counts; ``squares``: the same with squared counts;
    ``pair_genes``, ``pair_values``: (P,) gene and value of each distinct (gene, value) pair among
    the non-zero entries; ``cell_pairs``: CSR (N, P) indicator of which pairs each cell holds;
    ``gene_pairs``: CSR (D, P) indicator of each pair's gene; ``log_factorials``: (N,)
    ``sum_d lgamma(x_d + 1)`` per cell.
    """

    matrix: sparse.csr_matrix
    squares: sparse.csr_matrix
    pair_genes: np.ndarray
    pair_values: np.ndarray
    cell_pairs: sparse.csr_matrix
    gene_pairs: sparse.csr_matrix
    log_factorials: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape


def _sparse_counts(counts: np.ndarray) -> _SparseCounts:
    num_cells, num_genes = counts.shape
    cells, genes = np.nonzero(counts)
    values = counts[cells, genes]
    pair_keys = genes * (int(values.max(initial=0)) + 1) + values
    unique_keys, pair_index = np.unique(pair_keys, return_inverse=True)
    pair_genes = unique_keys // (int(values.max(initial=0)) + 1)
    pair_values = (unique_keys % (int(values.max(initial=0)) + 1)).astype(np.float64)
    num_pairs = unique_keys.shape[0]
    shape = (num_cells, num_genes)
    values = values.astype(np.float64)
    log_factorials = np.bincount(cells, special.gammaln(values + 1.0), minlength=num_cells)
    return _SparseCounts(
        matrix=sparse.csr_matrix((values, (cells, genes)), shape=shape),
        squares=sparse.csr_matrix((values**2, (cells, genes)), shape=shape),
        pair_genes=pair_genes,
        pair_values=pair_values,
        cell_pairs=sparse.csr_matrix(
            (np.ones_like(values), (cells, pair_index)), shape=(num_cells, num_pairs)
        ),
        gene_pairs=sparse.csr_matrix(
            (np.ones(num_pairs), (pair_genes, np.arange(num_pairs))), shape=(num_genes, num_pairs)
        ),
        log_factorials=log_factorials,
    )


def _gene_terms(mean: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero term and log odds of NB(mean, size), elementwise, shapes as ``mean``.

    ``zero = r log(r / (r + mu))`` (``-mu`` for r = inf) is log p(0);
    ``log_odds = log(mu / (r + mu))`` (``log mu`` for r = inf) multiplies y in log p(y).
    """
    finite = np.isfinite(size)
    safe_size = np.where(finite, size, 1.0)
    zero = np.where(finite, -safe_size * np.log1p(mean / safe_size), -mean)
    log_odds = np.where(finite, np.log(mean) - np.log(safe_size + mean), np.log(mean))
    return zero, log_odds


def _pair_terms(data: _SparseCounts, size: np.ndarray) -> np.ndarray:
    """``lgamma(v + r) - lgamma(r)`` for every (gene, value) pair and component, (P, K); 0 where r
    is infinite. ``size``: (K, D)."""
    pair_size = size[:, data.pair_genes].T
    finite = np.isfinite(pair_size)
    safe_size = np.where(finite, pair_size, 1.0)
    values = data.pair_values[:, None]
    terms = special.gammaln(values + safe_size) - special.gammaln(safe_size)
    return np.where(finite, terms, 0.0)


def _component_log_likelihoods(
    data: _SparseCounts, mean: np.ndarray, size: np.ndarray, pair_terms: np.ndarray
) -> np.ndarray:
    """``log prod_d NB(x_id; mu_kd, r_kd)`` for every cell and component, (N, K)."""
    zero, log_odds = _gene_terms(mean, size)
    return (
        zero.sum(axis=1)[None, :]
        + data.matrix @ log_odds.T
        + data.cell_pairs @ pair_terms
        - data.log_factorials[:, None]
    )


def _moment_sizes(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """``r = mu^2 / (v - mu)`` where ``v > mu`` and r <= MAX_SIZE, else inf."""
    excess = variance - mean
    with np.errstate(divide="ignore", invalid="ignore"):
        size = np.where(excess > 0, mean**2 / excess, np.inf)
    return np.where(size <= MAX_SIZE, size, np.inf)


def _log_prob(counts: np.ndarray, log_weights: np.ndarray, mean: np.ndarray, size: np.ndarray):
    data = _sparse_counts(count_matrix(counts))
    if data.shape[1] != mean.shape[1]:
        raise ValueError(f"counts must have {mean.shape[1]} genes; got shape {data.shape}")
    per_component = _component_log_likelihoods(data, mean, size, _pair_terms(data, size))
    return special.logsumexp(per_component + log_weights[None, :], axis=1)


@dataclasses.dataclass(frozen=True)
class PerGenePoisson:
    """x_d ~ Poisson(rate_d) independently; ``rate``: (D,)."""

    rate: np.ndarray

    @classmethod
    def fit(cls, train: np.ndarray, *, seed: int = 0) -> PerGenePoisson:
        """Rate = training mean per gene, floored at ``0.5 / N_train``; ``seed`` is unused."""
        del seed
        train = count_matrix(train, "train")
        return cls(rate=np.maximum(train.mean(axis=0), mean_floor(train.shape[0])))

    def log_prob(self, counts: np.ndarray) -> np.ndarray:
        """``sum_d log Poisson(x_d; rate_d)`` per cell, (N,) nats."""
        mean = self.rate[None, :]
        return _log_prob(counts, np.zeros(1), mean, np.full_like(mean, np.inf))


@dataclasses.dataclass(frozen=True)
class PerGeneNegativeBinomial:
    """x_d ~ NB(mean_d, size_d) independently; ``mean``, ``size``: (D,), size inf = Poisson."""

    mean: np.ndarray
    size: np.ndarray

    @classmethod
    def fit(cls, train: np.ndarray, *, seed: int = 0) -> PerGeneNegativeBinomial:
        """Method of moments: mean floored at ``0.5 / N_train``, variance with divisor N,
        ``size = mean^2 / (variance - mean)`` or inf (Poisson) where variance <= mean."""
        del seed
        train = count_matrix(train, "train").astype(np.float64)
        mean = np.maximum(train.mean(axis=0), mean_floor(train.shape[0]))
        return cls(mean=mean, size=_moment_sizes(mean, train.var(axis=0)))

    def log_prob(self, counts: np.ndarray) -> np.ndarray:
        """``sum_d log NB(x_d; mean_d, size_d)`` per cell, (N,) nats."""
        return _log_prob(counts, np.zeros(1), self.mean[None, :], self.size[None, :])


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
        return _log_prob(counts, self.log_weights, self.mean, self.size)

    def responsibilities(self, counts: np.ndarray) -> np.ndarray:
        """Posterior component probabilities ``p(k | x)`` per cell, (N, K)."""
        data = _sparse_counts(count_matrix(counts))
        joint = (
            _component_log_likelihoods(data, self.mean, self.size, _pair_terms(data, self.size))
            + self.log_weights[None, :]
        )
        return np.exp(joint - special.logsumexp(joint, axis=1, keepdims=True))


def _kmeans_assignments(data: _SparseCounts, num_components: int, seed: int) -> np.ndarray:
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


def _weighted_moments(data: _SparseCounts, weights: np.ndarray):
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
    data: _SparseCounts,
    totals: np.ndarray,
    sums: np.ndarray,
    pair_weights: np.ndarray,
    mean: np.ndarray,
    size: np.ndarray,
    pair_terms: np.ndarray,
) -> np.ndarray:
    """The NB part of the EM objective per component and gene, (K, D):
    ``Q_kd = W_k log p(0) + S_kd log_odds + sum_pairs w * (lgamma(v + r) - lgamma(r))``
    (without the ``lgamma(y + 1)`` terms, which do not depend on the parameters)."""
    zero, log_odds = _gene_terms(mean, size)
    pair_part = (data.gene_pairs @ (pair_weights * pair_terms)).T
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
    data = _sparse_counts(train)
    floor = mean_floor(num_cells)
    labels = _kmeans_assignments(data, num_components, seed)
    weights = np.eye(num_components)[labels]
    totals, first, variance = _weighted_moments(data, weights)
    mean = np.maximum(first, floor)
    size = _moment_sizes(mean, variance)
    pair_terms = _pair_terms(data, size)
    log_likelihoods = []
    for _ in range(max_iterations):
        log_weights = _log_mixture_weights(totals, num_cells)
        joint = _component_log_likelihoods(data, mean, size, pair_terms) + log_weights[None, :]
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
        candidate_size = _moment_sizes(mean, variance)
        candidate_terms = _pair_terms(data, candidate_size)
        keep = _expected_complete_log_likelihood(
            data, totals, sums, pair_weights, mean, candidate_size, candidate_terms
        ) >= _expected_complete_log_likelihood(
            data, totals, sums, pair_weights, mean, size, pair_terms
        )
        size = np.where(keep, candidate_size, size)
        pair_terms = np.where(keep[:, data.pair_genes].T, candidate_terms, pair_terms)
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
        validation_bits[int(num_components)] = _bits_per_entry(mixture.log_prob(validation), train)
    if not validation_bits:
        raise ValueError(f"no candidate in candidates={candidates} fits {fitting.shape[0]} cells")
    best = min(validation_bits, key=validation_bits.get)
    return best, validation_bits


def _bits_per_entry(log_probs: np.ndarray, counts: np.ndarray) -> float:
    """``-mean_cells(log p) / (D ln 2)``."""
    return float(bits_per_dim(-np.mean(log_probs), counts.shape[1]))


def baseline_bits_per_entry(
    train: np.ndarray,
    test: np.ndarray,
    *,
    seed: int = 0,
    candidates: tuple[int, ...] = DEFAULT_CANDIDATE_COMPONENTS,
) -> dict:
    """Held-out bits per entry of the three baselines fitted on ``train``.

    Bits per entry = ``-sum_{test cells} log2 p(x) / (N_test * D)``.

    Returns:
      ``baseline_poisson_bits_per_dim``, ``baseline_nb_bits_per_dim``,
      ``baseline_nb_mixture_bits_per_dim`` (floats), ``baseline_nb_mixture_num_components``
      (the chosen K) and ``baseline_nb_mixture_validation_bits_per_dim`` ({str(K): bits}).
    """
    train = count_matrix(train, "train")
    test = count_matrix(test, "test")
    if test.shape[1] != train.shape[1]:
        raise ValueError(
            f"train and test must have the same genes; got shapes {train.shape} and {test.shape}"
        )
    poisson = PerGenePoisson.fit(train, seed=seed)
    negative_binomial = PerGeneNegativeBinomial.fit(train, seed=seed)
    num_components, validation_bits = select_mixture_components(
        train, seed=seed, candidates=candidates
    )
    mixture, _ = fit_nb_mixture(train, num_components, seed=seed)
    return {
        "baseline_poisson_bits_per_dim": _bits_per_entry(poisson.log_prob(test), test),
        "baseline_nb_bits_per_dim": _bits_per_entry(negative_binomial.log_prob(test), test),
        "baseline_nb_mixture_bits_per_dim": _bits_per_entry(mixture.log_prob(test), test),
        "baseline_nb_mixture_num_components": int(num_components),
        "baseline_nb_mixture_validation_bits_per_dim": {
            str(k): bits for k, bits in validation_bits.items()
        },
    }
