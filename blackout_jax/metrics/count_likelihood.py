"""The per-gene negative binomial likelihood of count matrices, on a sparse view of the counts.

The negative binomial with mean mu and size r (variance ``mu + mu^2 / r``) has
``log p(y) = lgamma(y + r) - lgamma(r) - lgamma(y + 1) + r log(r / (r + mu))
+ y log(mu / (r + mu))``, which is ``scipy.stats.nbinom.logpmf(y, r, r / (r + mu))``;
``r = inf`` is the Poisson(mu) pmf. A mixture of K components that factorise over genes has
``log p(x) = logsumexp_k (log pi_k + sum_d log NB(x_d; mu_kd, r_kd))``.

Single-cell counts are mostly zeros, so the log-likelihood of a cell is computed as a sum over
genes of ``log p(0) = r log(r / (r + mu))`` plus, for its non-zero entries only,
``lgamma(y + r) - lgamma(r) + y log(mu / (r + mu)) - lgamma(y + 1)``, with
``lgamma(y + r) - lgamma(r)`` evaluated once per distinct (gene, value) pair. NumPy/SciPy,
float64.

Floors: a fitted mean is never below ``0.5 / N_train`` (half a count over the training cells),
so a gene or component that saw no count still gives every held-out count a positive
probability. A size above ``MAX_SIZE`` is treated as the Poisson limit (the two pmfs then differ
by about ``mu^2 / (2 r)`` nats, and ``lgamma(y + r) - lgamma(r)`` loses precision for huge r).

Bits per entry: ``-sum_{cells, genes} log2 p / (N * D)``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import sparse, special

from blackout_jax.likelihood import bits_per_dim

__all__ = [
    "MAX_SIZE",
    "SparseCounts",
    "bits_per_entry",
    "component_log_likelihoods",
    "count_matrix",
    "gene_terms",
    "mean_floor",
    "mixture_log_prob",
    "moment_sizes",
    "pair_terms",
    "sparse_counts",
]

# Sizes r above this are the Poisson limit r = inf.
MAX_SIZE = 1e6


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
class SparseCounts:
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


def sparse_counts(counts: np.ndarray) -> SparseCounts:
    """The :class:`SparseCounts` view of a (N, D) non-negative integer matrix."""
    num_cells, num_genes = counts.shape
    cells, genes = np.nonzero(counts)
    values = counts[cells, genes]
    key_base = int(values.max(initial=0)) + 1  # (gene, value) -> gene * key_base + value
    unique_keys, pair_index = np.unique(genes * key_base + values, return_inverse=True)
    pair_genes = unique_keys // key_base
    pair_values = (unique_keys % key_base).astype(np.float64)
    num_pairs = unique_keys.shape[0]
    shape = (num_cells, num_genes)
    values = values.astype(np.float64)
    log_factorials = np.bincount(cells, special.gammaln(values + 1.0), minlength=num_cells)
    return SparseCounts(
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


def gene_terms(mean: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero term and log odds of NB(mean, size), elementwise, shapes as ``mean``.

    ``zero = r log(r / (r + mu))`` (``-mu`` for r = inf) is log p(0);
    ``log_odds = log(mu / (r + mu))`` (``log mu`` for r = inf) multiplies y in log p(y).
    """
    finite = np.isfinite(size)
    safe_size = np.where(finite, size, 1.0)
    zero = np.where(finite, -safe_size * np.log1p(mean / safe_size), -mean)
    log_odds = np.where(finite, np.log(mean) - np.log(safe_size + mean), np.log(mean))
    return zero, log_odds


def pair_terms(data: SparseCounts, size: np.ndarray) -> np.ndarray:
    """``lgamma(v + r) - lgamma(r)`` for every (gene, value) pair and component, (P, K); 0 where r
    is infinite. ``size``: (K, D)."""
    pair_size = size[:, data.pair_genes].T
    finite = np.isfinite(pair_size)
    safe_size = np.where(finite, pair_size, 1.0)
    values = data.pair_values[:, None]
    terms = special.gammaln(values + safe_size) - special.gammaln(safe_size)
    return np.where(finite, terms, 0.0)


def component_log_likelihoods(
    data: SparseCounts, mean: np.ndarray, size: np.ndarray, terms: np.ndarray
) -> np.ndarray:
    """``log prod_d NB(x_id; mu_kd, r_kd)`` for every cell and component, (N, K).

    ``mean``, ``size``: (K, D); ``terms``: :func:`pair_terms` of ``data`` at ``size``, (P, K).
    """
    zero, log_odds = gene_terms(mean, size)
    return (
        zero.sum(axis=1)[None, :]
        + data.matrix @ log_odds.T
        + data.cell_pairs @ terms
        - data.log_factorials[:, None]
    )


def moment_sizes(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """``r = mu^2 / (v - mu)`` where ``v > mu`` and r <= MAX_SIZE, else inf."""
    excess = variance - mean
    with np.errstate(divide="ignore", invalid="ignore"):
        size = np.where(excess > 0, mean**2 / excess, np.inf)
    return np.where(size <= MAX_SIZE, size, np.inf)


def mixture_log_prob(
    counts: np.ndarray, log_weights: np.ndarray, mean: np.ndarray, size: np.ndarray
) -> np.ndarray:
    """``log sum_k exp(log_weights_k) prod_d NB(x_d; mean_kd, size_kd)`` per cell, (N,) nats.

    ``counts``: (N, D); ``log_weights``: (K,); ``mean``, ``size``: (K, D), size inf = Poisson.
    """
    data = sparse_counts(count_matrix(counts))
    if data.shape[1] != mean.shape[1]:
        raise ValueError(f"counts must have {mean.shape[1]} genes; got shape {data.shape}")
    per_component = component_log_likelihoods(data, mean, size, pair_terms(data, size))
    return special.logsumexp(per_component + log_weights[None, :], axis=1)


def bits_per_entry(log_probs: np.ndarray, num_genes: int) -> float:
    """``-mean_cells(log p) / (D ln 2)``: per-cell log-probabilities (N,) nats as bits per entry."""
    return float(bits_per_dim(-np.mean(log_probs), num_genes))
