"""Count baselines, fidelity floor and imputation/un-thinning errors on real single-cell counts.

    python -m experiments.benchmarks.count_baselines [--data_dir=../shared/data/liao2019] \
        [--out=experiments/results/count_baselines.json] [--num_genes=2000] [--seed=0]

Data: the two 10x HDF5 files of Liao et al. (2020) (see the README beside them; reading them
needs h5py), cells of C144 then of C146 stacked into one (7,827 x 33,539) matrix. When the folder
is absent the script prints so and exits 0.

Split (seed 0): ``order = numpy.random.default_rng(seed).permutation(num_cells)``; the first
``floor(0.2 * num_cells)`` cells of ``order`` are the test cells, the rest the training cells.
Genes: the ``num_genes`` genes with the largest training mean (ties broken by gene index).

Measured, each on the test cells with models fitted on the training cells:

* held-out bits per entry of the per-gene Poisson, per-gene negative binomial and NB-mixture
  baselines (:func:`blackout_jax.metrics.baseline_bits_per_entry`), and of the mixture with
  K = 5 fixed (the K of the outside figure);
* :func:`blackout_jax.metrics.count_sample_fidelity` of the first 1,024 test cells against the
  training cells: the scores of a perfect generator, and the real-vs-real PCA Fréchet floor
  (1,024 training cells vs the other 5,238);
* imputation of 10% of the non-zero test entries (zero, gene mean, NB mean, NB-mixture
  posterior mean), errors on the hidden entries;
* un-thinning of ``y ~ Binomial(n, q)`` for q in (0.1, 0.3, 0.5) (``y / q`` and the NB
  posterior mean), errors on all test entries.

Prints a Markdown table and writes every figure to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from scipy import sparse

from blackout_jax import metrics

FILES = (
    "GSM4339772_C144_filtered_feature_bc_matrix.h5",
    "GSM4339774_C146_filtered_feature_bc_matrix.h5",
)
TEST_FRACTION = 0.2
FLOOR_CELLS = 1024
MASK_FRACTION = 0.1
KEEP_PROBABILITIES = (0.1, 0.3, 0.5)
# The outside mixture figure is for this K; the mixture with this K is also scored on the test.
OUTSIDE_MIXTURE_COMPONENTS = 5
# Held-out bits per entry from an outside script on the same data and protocol (README of the
# data folder, and the 5-component mixture figure reported with it).
OUTSIDE_FIGURES = {
    "baseline_poisson_bits_per_dim": 3.171,
    "baseline_nb_bits_per_dim": 0.907,
    "baseline_nb_mixture_bits_per_dim (K=5)": 0.678,
}


def load_10x_h5(path: str) -> sparse.csr_matrix:
    """Cells x genes CSR counts of a Cell Ranger v3 ``filtered_feature_bc_matrix.h5``."""
    try:
        import h5py
    except ImportError as error:
        raise ImportError(f"reading {path} needs h5py (pip install h5py)") from error
    with h5py.File(path, "r") as handle:
        group = handle["matrix"]
        genes_by_cells = sparse.csc_matrix(
            (group["data"][:], group["indices"][:], group["indptr"][:]), shape=group["shape"][:]
        )
    return genes_by_cells.T.tocsr()


def split_cells(num_cells: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` cell indices: the first ``floor(0.2 N)`` of a seeded permutation test."""
    order = np.random.default_rng(seed).permutation(num_cells)
    num_test = int(TEST_FRACTION * num_cells)
    return order[num_test:], order[:num_test]


def timed(function, *args, **kwargs):
    start = time.process_time()
    result = function(*args, **kwargs)
    return result, time.process_time() - start


def imputation_errors(train, test, negative_binomial, mixture, seed):
    observed, mask = metrics.mask_nonzero_entries(test, MASK_FRACTION, seed=seed)
    estimates = {
        "zero": metrics.impute_zero(observed, mask),
        "gene_mean": metrics.impute_gene_mean(observed, mask, train),
        "nb_mean": metrics.impute_nb_posterior_mean(observed, mask, negative_binomial),
        "nb_mixture_posterior_mean": metrics.impute_mixture_posterior_mean(observed, mask, mixture),
    }
    return {name: metrics.count_errors(value, test, mask) for name, value in estimates.items()}


def unthinning_errors(test, negative_binomial, seed):
    results = {}
    for keep in KEEP_PROBABILITIES:
        thinned = metrics.thin_counts(test, keep, seed=seed)
        results[str(keep)] = {
            "rescale": metrics.count_errors(metrics.unthin_rescale(thinned, keep), test),
            "nb_posterior_mean": metrics.count_errors(
                metrics.unthin_nb_posterior_mean(thinned, keep, negative_binomial), test
            ),
        }
    return results


def markdown(report: dict) -> str:
    lines = ["| measurement | setting | result |", "|---|---|---|"]
    baselines = report["baselines"]
    for key, outside in OUTSIDE_FIGURES.items():
        name = key.split(" ")[0]
        lines.append(f"| {name} | held-out, {outside} outside | {baselines[name]:.4f} |")
    fixed = f"baseline_nb_mixture_k{OUTSIDE_MIXTURE_COMPONENTS}_bits_per_dim"
    lines.append(f"| {fixed} | held-out, K fixed | {baselines[fixed]:.4f} |")
    validation = baselines["baseline_nb_mixture_validation_bits_per_dim"]
    validation_text = ", ".join(f"K={k}: {bits:.4f}" for k, bits in validation.items())
    lines.append(
        f"| chosen mixture K | validation bits {validation_text} "
        f"| {baselines['baseline_nb_mixture_num_components']} |"
    )
    for key, value in report["fidelity_test_vs_train"].items():
        lines.append(f"| {key} | 1,024 test cells vs train | {value:.4g} |")
    for name, errors in report["imputation"].items():
        lines.append(
            f"| imputation {name} | 10% of non-zero test entries | MAE {errors['mae']:.4f}, "
            f"RMSE {errors['rmse']:.4f}, log1p MAE {errors['log1p_mae']:.4f}, "
            f"log1p RMSE {errors['log1p_rmse']:.4f} |"
        )
    for keep, methods in report["unthinning"].items():
        for name, errors in methods.items():
            lines.append(
                f"| un-thinning {name} | q = {keep}, all test entries | MAE {errors['mae']:.4f}, "
                f"RMSE {errors['rmse']:.4f}, log1p MAE {errors['log1p_mae']:.4f}, "
                f"log1p RMSE {errors['log1p_rmse']:.4f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data/liao2019")
    parser.add_argument("--out", default="experiments/results/count_baselines.json")
    parser.add_argument("--num_genes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = [os.path.join(args.data_dir, name) for name in FILES]
    if not all(os.path.exists(path) for path in paths):
        print(f"skipped: the files {FILES} are not all in {args.data_dir}")
        return
    start = time.process_time()
    cells = sparse.vstack([load_10x_h5(path) for path in paths]).tocsr()
    train_cells, test_cells = split_cells(cells.shape[0], args.seed)
    train_mean = np.asarray(cells[train_cells].mean(axis=0)).ravel()
    genes = np.argsort(-train_mean, kind="stable")[: args.num_genes]
    train = cells[train_cells][:, genes].toarray().astype(np.int64)
    test = cells[test_cells][:, genes].toarray().astype(np.int64)
    print(f"train {train.shape}, test {test.shape}", file=sys.stderr)
    baselines, baseline_seconds = timed(
        metrics.baseline_bits_per_entry, train, test, seed=args.seed
    )
    negative_binomial = metrics.PerGeneNegativeBinomial.fit(train)
    mixture, _ = metrics.fit_nb_mixture(
        train, baselines["baseline_nb_mixture_num_components"], seed=args.seed
    )
    fixed_mixture, _ = metrics.fit_nb_mixture(train, OUTSIDE_MIXTURE_COMPONENTS, seed=args.seed)
    baselines[f"baseline_nb_mixture_k{OUTSIDE_MIXTURE_COMPONENTS}_bits_per_dim"] = float(
        -fixed_mixture.log_prob(test).mean() / (test.shape[1] * np.log(2.0))
    )
    fidelity, fidelity_seconds = timed(
        metrics.count_sample_fidelity, test[:FLOOR_CELLS], train, seed=args.seed
    )
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "data": {
            "files": list(FILES),
            "num_cells": int(cells.shape[0]),
            "num_train": int(train.shape[0]),
            "num_test": int(test.shape[0]),
            "num_genes": int(args.num_genes),
            "split": "test = first floor(0.2 N) of numpy default_rng(seed).permutation(N)",
            "seed": args.seed,
            "train_zero_fraction": float(np.mean(train == 0)),
            "test_zero_fraction": float(np.mean(test == 0)),
            "train_max_count": int(train.max()),
            "test_max_count": int(test.max()),
        },
        "baselines": baselines,
        "outside_figures": OUTSIDE_FIGURES,
        "fidelity_test_vs_train": fidelity,
        "imputation": imputation_errors(train, test, negative_binomial, mixture, args.seed),
        "unthinning": unthinning_errors(test, negative_binomial, args.seed),
        "cpu_seconds": {
            "baselines": baseline_seconds,
            "fidelity": fidelity_seconds,
            "total": time.process_time() - start,
        },
    }
    print(markdown(report))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as file:
        json.dump(report, file, indent=2)
        file.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
