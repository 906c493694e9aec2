"""How closely generated count vectors (cells x genes) match real ones.

Per-gene summaries of a (N, D) count matrix, compared gene by gene with Pearson correlation:

- log mean: ``log(mean_d + LOG_OFFSET)``; log variance: ``log(var_d + LOG_OFFSET)`` (divisor N);
  zero fraction: share of cells with ``x_d = 0``. ``LOG_OFFSET = 1e-3`` (one count per thousand
  cells) keeps genes that are never seen finite while leaving any gene seen once in a thousand
  cells distinguishable from an unseen one.

Per-cell summaries: the 1-Wasserstein distance between the distributions of the log library
sizes ``log1p(sum_d x_d)`` (``log1p`` so that an empty cell is allowed).

Fréchet distance in a PCA space of the real cells (:class:`CountPCA`): each cell is scaled to the
median library size ``L`` of the real cells, ``x * L / sum_d x_d`` (an empty cell stays zero),
then ``log1p``; the principal axes are those of the real cells. The distance is
:func:`blackout_jax.metrics.frechet.frechet_distance` between the Gaussian statistics of the two
projected sets. Its real-vs-real floor is the same distance between a random set of
``m = min(N_generated, N_real // 2)`` real cells and the other ``N_real - m`` real cells: when
``N_real >= 2 N_generated`` the two sample sizes, ``(N_generated, N_real - N_generated)``, are
nearly those of the generated-vs-real distance, ``(N_generated, N_real)``, so both carry about
the same sampling bias and their ratio is near 1 for a generator that matches the real cells.
"""

from __future__ import annotations

import dataclasses
import os
from typing import BinaryIO

import numpy as np
from scipy import stats

from blackout_jax.metrics.count_likelihood import count_matrix
from blackout_jax.metrics.frechet import frechet_distance, gaussian_statistics

__all__ = [
    "LOG_OFFSET",
    "CountPCA",
    "count_sample_fidelity",
    "gene_statistics",
    "plot_count_fidelity",
]

LOG_OFFSET = 1e-3


def gene_statistics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-gene ``mean``, ``variance`` (divisor N) and ``zero_fraction``, each (D,), and the
    per-cell ``library_size`` (N,) of a (N, D) count matrix."""
    counts = count_matrix(counts).astype(np.float64)
    return {
        "mean": counts.mean(axis=0),
        "variance": counts.var(axis=0),
        "zero_fraction": np.mean(counts == 0, axis=0),
        "library_size": counts.sum(axis=1),
    }


def _pearson(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (the correlation is undefined)."""
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return float("nan")
    return float(np.corrcoef(first, second)[0, 1])


def _log_normalised(counts: np.ndarray, library_size: float) -> np.ndarray:
    """``log1p(x * library_size / sum_d x_d)`` per cell, (N, D) float64; empty cells stay 0."""
    counts = counts.astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    scale = np.divide(library_size, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(counts * scale)


@dataclasses.dataclass(frozen=True)
class CountPCA:
    """Library-size normalisation, log1p and principal axes fitted on reference cells.

    ``library_size``: median library size of the reference; ``center``: (D,) mean of the
    normalised reference; ``components``: (k, D) orthonormal principal axes, largest variance
    first.
    """

    library_size: float
    center: np.ndarray
    components: np.ndarray

    @classmethod
    def fit(cls, reference: np.ndarray, num_components: int) -> CountPCA:
        """Principal axes of the log1p-normalised ``reference`` cells (N, D), by SVD; the number
        of axes is ``min(num_components, N - 1, D)``."""
        reference = count_matrix(reference, "reference")
        library_size = float(np.median(reference.sum(axis=1)))
        if library_size <= 0:
            raise ValueError("reference must have a positive median library size; got 0")
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1; got {num_components}")
        normalised = _log_normalised(reference, library_size)
        center = normalised.mean(axis=0)
        _, _, right = np.linalg.svd(normalised - center, full_matrices=False)
        count = min(num_components, reference.shape[0] - 1, reference.shape[1])
        return cls(library_size=library_size, center=center, components=right[:count])

    def transform(self, counts: np.ndarray) -> np.ndarray:
        """Coordinates of ``counts`` (N, D) on the principal axes, (N, k)."""
        counts = count_matrix(counts)
        if counts.shape[1] != self.center.shape[0]:
            raise ValueError(
                f"counts must have {self.center.shape[0]} genes; got shape {counts.shape}"
            )
        return (_log_normalised(counts, self.library_size) - self.center) @ self.components.T


def _pca_frechet(features_a: np.ndarray, features_b: np.ndarray) -> float:
    mu_a, sigma_a = gaussian_statistics(features_a)
    mu_b, sigma_b = gaussian_statistics(features_b)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def count_sample_fidelity(
    generated: np.ndarray, real: np.ndarray, *, seed: int = 0, num_components: int = 50
) -> dict[str, float]:
    """Per-gene, per-cell and Fréchet comparisons of generated cells with real cells.

    Args:
      generated: (N_g, D) counts, N_g >= 2.
      real: (N_r, D) counts, N_r >= 4; the reference of the normalisation and the PCA.
      seed: seed of the random split of ``real`` behind the Fréchet floor.
      num_components: principal axes of the PCA space (capped at N_r - 1 and D).

    Returns:
      ``log_mean_correlation``, ``log_variance_correlation``, ``zero_fraction_correlation``
      (Pearson over genes; NaN where a side is constant), ``library_size_w1`` (W1 of log1p
      library sizes), ``frechet_pca`` (all generated vs all real cells), ``frechet_pca_floor``
      (a random set of ``m = min(N_g, N_r // 2)`` real cells vs the other ``N_r - m``),
      ``frechet_pca_ratio`` (distance over floor), ``frechet_pca_floor_num_cells`` (m) and
      ``frechet_pca_num_components`` (k). With ``N_r < 2 N_g`` the floor is taken at smaller
      sizes than the distance and overstates its sampling noise.
    """
    generated = count_matrix(generated, "generated")
    real = count_matrix(real, "real")
    if generated.shape[1] != real.shape[1]:
        raise ValueError(
            f"generated and real must have the same genes; got shapes {generated.shape} and "
            f"{real.shape}"
        )
    if generated.shape[0] < 2 or real.shape[0] < 4:
        raise ValueError(
            f"need at least 2 generated and 4 real cells; got {generated.shape[0]} and "
            f"{real.shape[0]}"
        )
    fake, true = gene_statistics(generated), gene_statistics(real)
    pca = CountPCA.fit(real, num_components)
    real_features = pca.transform(real)
    num_floor_cells = min(generated.shape[0], real.shape[0] // 2)
    order = np.random.default_rng(seed).permutation(real.shape[0])
    first_part = real_features[order[:num_floor_cells]]
    second_part = real_features[order[num_floor_cells:]]
    distance = _pca_frechet(pca.transform(generated), real_features)
    floor = _pca_frechet(first_part, second_part)
    return {
        "log_mean_correlation": _pearson(
            np.log(fake["mean"] + LOG_OFFSET), np.log(true["mean"] + LOG_OFFSET)
        ),
        "log_variance_correlation": _pearson(
            np.log(fake["variance"] + LOG_OFFSET), np.log(true["variance"] + LOG_OFFSET)
        ),
        "zero_fraction_correlation": _pearson(fake["zero_fraction"], true["zero_fraction"]),
        "library_size_w1": float(
            stats.wasserstein_distance(
                np.log1p(fake["library_size"]), np.log1p(true["library_size"])
            )
        ),
        "frechet_pca": distance,
        "frechet_pca_floor": floor,
        "frechet_pca_ratio": distance / floor if floor > 0 else float("inf"),
        "frechet_pca_floor_num_cells": int(num_floor_cells),
        "frechet_pca_num_components": int(pca.components.shape[0]),
    }


def plot_count_fidelity(
    generated: np.ndarray, real: np.ndarray, path: str | os.PathLike[str] | BinaryIO
) -> None:
    """Write a PNG of four panels comparing generated with real cells to ``path`` (a file
    name, or a binary file open for writing).

    Mean against variance per gene (log-log, both sets), zero fraction per gene (real on x,
    generated on y, with the diagonal), mean per gene (the same, log-log) and histograms of
    the log1p library sizes. Genes with a zero mean or variance are left out of the log axes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fake, true = gene_statistics(generated), gene_statistics(real)
    if fake["mean"].shape != true["mean"].shape:
        raise ValueError(
            f"generated and real must have the same genes; got {fake['mean'].shape[0]} and "
            f"{true['mean'].shape[0]}"
        )
    figure = Figure(figsize=(12, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 4)
    for statistics, label, color in ((true, "real", "tab:blue"), (fake, "generated", "tab:red")):
        shown = (statistics["mean"] > 0) & (statistics["variance"] > 0)
        axes[0].scatter(
            statistics["mean"][shown],
            statistics["variance"][shown],
            s=3,
            alpha=0.5,
            color=color,
            label=label,
        )
    axes[0].set(xscale="log", yscale="log", xlabel="gene mean", ylabel="gene variance")
    axes[0].legend(loc="upper left", fontsize=8)
    axes[1].scatter(true["zero_fraction"], fake["zero_fraction"], s=3, alpha=0.5)
    axes[1].plot([0, 1], [0, 1], color="gray", linewidth=0.8)
    axes[1].set(xlabel="zero fraction, real", ylabel="zero fraction, generated")
    both = (true["mean"] > 0) & (fake["mean"] > 0)
    axes[2].scatter(true["mean"][both], fake["mean"][both], s=3, alpha=0.5)
    if both.any():
        low, high = true["mean"][both].min(), true["mean"][both].max()
        axes[2].plot([low, high], [low, high], color="gray", linewidth=0.8)
    axes[2].set(xscale="log", yscale="log", xlabel="gene mean, real", ylabel="gene mean, generated")
    bins = np.histogram_bin_edges(
        np.log1p(np.concatenate([true["library_size"], fake["library_size"]])), bins=40
    )
    for statistics, label, color in ((true, "real", "tab:blue"), (fake, "generated", "tab:red")):
        axes[3].hist(
            np.log1p(statistics["library_size"]),
            bins=bins,
            density=True,
            alpha=0.5,
            color=color,
            label=label,
        )
    axes[3].set(xlabel="log1p library size", ylabel="density")
    axes[3].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path if hasattr(path, "write") else os.fspath(path), format="png")
