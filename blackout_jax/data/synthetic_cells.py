"""A synthetic cells x genes count matrix with a known law, generated on the fly (no file).

Each of :data:`NUM_CELLS` cells belongs to one of :data:`NUM_TYPES` cell types (its class
label) with equal probability; its :data:`NUM_GENES` counts are independent negative binomials
given the type, with type-specific means and one dispersion per gene:

    type   c ~ Uniform{0, .., K - 1}
    n_g | c ~ NB(mean mu_{c,g}, shape r_g)    (variance mu + mu^2 / r_g),

``log mu_{c,g} = b_g + a_{c,g}`` with gene baselines ``b_g`` spread over ``log 0.05 .. log 40``
(mostly-zero genes beside highly expressed ones, as in UMI counts) and type effects ``a_{c,g}``
non-zero on a third of the genes. Everything is drawn from :data:`SEED`, so every call returns
the same matrix (its largest count is :data:`MAX_COUNT`, 47% of its entries are zero).

The law is known, so :func:`log_prob` gives each cell's exact log-likelihood: the entropy
``-E[log p(n)]`` is the floor under any model's held-out bound on these cells (the count
vectors' counterpart of the digits oracle). The held-out split is the last ``num_test`` cells
of a fixed permutation (:func:`blackout_jax.data.pipeline.fixed_split`).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import special

NUM_CELLS = 1200
NUM_GENES = 64
NUM_TYPES = 3
MAX_COUNT = 154
"""The largest count of the generated matrix."""
SEED = 20240601
SOURCE = "synthetic_cells"


@functools.lru_cache(maxsize=1)
def parameters() -> tuple[np.ndarray, np.ndarray]:
    """``(means (K, D), shapes (D,))`` float64 of the law (fixed by :data:`SEED`)."""
    rng = np.random.default_rng(SEED)
    baseline = np.sort(rng.uniform(np.log(0.05), np.log(20.0), NUM_GENES))
    effects = rng.normal(0.0, 1.0, (NUM_TYPES, NUM_GENES))
    effects *= rng.random((NUM_TYPES, NUM_GENES)) < 1.0 / 3.0
    shapes = rng.uniform(1.0, 4.0, NUM_GENES)
    return np.exp(baseline + effects), shapes


@functools.lru_cache(maxsize=1)
def _generated() -> tuple[np.ndarray, np.ndarray]:
    means, shapes = parameters()
    rng = np.random.default_rng(SEED + 1)
    types = rng.integers(0, NUM_TYPES, NUM_CELLS).astype(np.int32)
    cell_means = means[types]
    rates = rng.gamma(shapes, cell_means / shapes)  # Gamma-Poisson = negative binomial
    counts = rng.poisson(rates).astype(np.int32)
    counts.setflags(write=False)
    types.setflags(write=False)
    return counts, types


def load_counts() -> tuple[np.ndarray, np.ndarray]:
    """``(counts (NUM_CELLS, NUM_GENES) int32, cell types (NUM_CELLS,) int32)``, read-only."""
    return _generated()


def log_prob(counts: np.ndarray) -> np.ndarray:
    """Exact ``log p(n)`` in nats of cells ``(N, D)`` under the mixture, shape ``(N,)`` float64
    (the type summed out: ``log sum_c (1/K) prod_g NB(n_g; mu_{c,g}, r_g)``)."""
    means, shapes = parameters()
    counts = np.asarray(counts, np.float64)[:, None, :]
    # log NB(n; mu, r) = log G(n + r) - log G(r) - log n! + r log(r / (r + mu))
    #                    + n log(mu / (r + mu))
    per_entry = (
        special.gammaln(counts + shapes)
        - special.gammaln(shapes)
        - special.gammaln(counts + 1.0)
        + shapes * np.log(shapes / (shapes + means))
        + special.xlogy(counts, means / (shapes + means))
    )
    per_type = per_entry.sum(axis=-1)
    return special.logsumexp(per_type, axis=1) - np.log(NUM_TYPES)
