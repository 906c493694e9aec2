"""Per-gene count baselines for single-cell count vectors, scored in bits per entry.

Three models of a cell x in N^D (one count per gene), fitted on training cells and scored on
held-out cells; every one factorises over genes given its (latent) component:

- ``PerGenePoisson``: x_d ~ Poisson(lambda_d), lambda_d the training mean (maximum likelihood).
- ``PerGeneNegativeBinomial``: x_d ~ NB(mu_d, r_d) by the method of moments,
  ``r_d = mu_d^2 / (v_d - mu_d)`` with v_d the training variance (divisor N); a gene with
  ``v_d <= mu_d`` keeps the Poisson limit ``r_d = inf``.
- :class:`~blackout_jax.metrics.count_mixture.NegativeBinomialMixture`: x ~ sum_k pi_k prod_d
  NB(x_d; mu_kd, r_kd), fitted by EM over cells, K chosen on a validation part of the training
  split.

Means are floored at ``0.5 / N_train`` (see :mod:`blackout_jax.metrics.count_likelihood`).
Bits per entry: ``-sum_{test cells, genes} log2 p / (N_test * D)``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from blackout_jax.metrics.count_likelihood import (
    bits_per_entry,
    count_matrix,
    mean_floor,
    mixture_log_prob,
    moment_sizes,
)
from blackout_jax.metrics.count_mixture import (
    DEFAULT_CANDIDATE_COMPONENTS,
    fit_nb_mixture,
    select_mixture_components,
)

__all__ = [
    "PerGeneNegativeBinomial",
    "PerGenePoisson",
    "baseline_bits_per_entry",
]


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
        return mixture_log_prob(counts, np.zeros(1), mean, np.full_like(mean, np.inf))


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
        return cls(mean=mean, size=moment_sizes(mean, train.var(axis=0)))

    def log_prob(self, counts: np.ndarray) -> np.ndarray:
        """``sum_d log NB(x_d; mean_d, size_d)`` per cell, (N,) nats."""
        return mixture_log_prob(counts, np.zeros(1), self.mean[None, :], self.size[None, :])


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
        "baseline_poisson_bits_per_dim": bits_per_entry(poisson.log_prob(test), test.shape[1]),
        "baseline_nb_bits_per_dim": bits_per_entry(negative_binomial.log_prob(test), test.shape[1]),
        "baseline_nb_mixture_bits_per_dim": bits_per_entry(mixture.log_prob(test), test.shape[1]),
        "baseline_nb_mixture_num_components": int(num_components),
        "baseline_nb_mixture_validation_bits_per_dim": {
            str(k): bits for k, bits in validation_bits.items()
        },
    }
