"""Held-out negative log-likelihood of scVI on the liao2019 split, in bits per entry.

Standalone benchmark: runs in a separate environment holding scvi-tools and h5py
(``python3 -m venv /work/scvi-env && /work/scvi-env/bin/pip install scvi-tools h5py``) and
does not import blackout_jax. It reproduces the project's split and gene selection in numpy:

- cells: the two 10x HDF5 files concatenated in the order given (C144 then C146), N = 7,827;
- ``order = numpy.random.default_rng(seed).permutation(N)``; test = ``order[N - num_test:]``,
  train = ``order[:N - num_test]``;
- genes: the ``num_genes`` largest training-split means of raw counts (stable sort on the
  negated mean), kept in their original gene order.

It then reports, for the test cells x (shape ``[num_test, num_genes]``), the mean over cells of
``-log p(x) / (num_genes * ln 2)`` (bits per entry) with a standard error over cells, for:

- a per-gene negative binomial fitted by moments on the training split (mean m, variance v with
  divisor N, size r = m^2 / (v - m); Poisson(m) where v <= m);
- scVI (``gene_likelihood="nb"``, n_latent=10, n_hidden=128, one layer), whose log p(x) is the
  importance-sampled estimate of ``SCVI.get_marginal_ll``:
  ``log (1/K) sum_k p(x | z_k, l_k) p(z_k) p(l_k) / q(z_k, l_k | x)``, a lower bound in
  expectation (so the reported NLL is an upper bound in expectation). With the observed library
  size (scVI's default) l = log sum_g x_g is conditioned on, not modelled, so that figure is
  log p(x | l) and leaves out the cost of the library size; with a latent library size
  (``use_observed_lib_size=False``, log-normal prior from the training data) it is a full log p(x).

Usage:
  /work/scvi-env/bin/python experiments/benchmarks/scvi_baseline.py \
      --data FILE1.h5,FILE2.h5 --out experiments/results/scvi_baseline.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import h5py
import numpy as np
import scipy.sparse
import scipy.stats


def read_10x_h5(path: str) -> scipy.sparse.csr_matrix:
    """Reads a 10x HDF5 matrix as a cells x genes CSR matrix of int64 counts.

    The file stores ``matrix/{data,indices,indptr,shape}`` as a CSC genes x cells matrix.
    """
    with h5py.File(path, "r") as f:
        g = f["matrix"]
        genes_by_cells = scipy.sparse.csc_matrix(
            (g["data"][()], g["indices"][()], g["indptr"][()]), shape=tuple(g["shape"][()])
        )
    return genes_by_cells.T.tocsr().astype(np.int64)


def load_counts(paths: list[str]) -> np.ndarray:
    """Concatenates the files' cells in the order given: dense int64 array [cells, genes]."""
    matrices = [read_10x_h5(p) for p in paths]
    widths = {m.shape[1] for m in matrices}
    if len(widths) != 1:
        raise ValueError(f"--data: files have different gene counts {sorted(widths)}: {paths}")
    return scipy.sparse.vstack(matrices).toarray()


def split_cells(num_cells: int, num_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (train, test) cell indices: first N - num_test and last num_test of a permutation."""
    if not 0 < num_test < num_cells:
        raise ValueError(f"--num-test must lie in (0, {num_cells}); got {num_test}")
    order = np.random.default_rng(seed).permutation(num_cells)
    return order[: num_cells - num_test], order[num_cells - num_test :]


def select_genes(train_counts: np.ndarray, num_genes: int) -> np.ndarray:
    """Indices of the num_genes largest training means, ties by stable sort, in gene order."""
    means = train_counts.mean(axis=0)
    top = np.argsort(-means, kind="stable")[:num_genes]
    return np.sort(top)


def per_gene_nb_log_pmf(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-cell held-out log pmf [num_test] under a per-gene NB fitted by moments on train.

    Per gene: m = mean, v = variance (divisor N); r = m^2 / (v - m) and
    p(x) = NB(x; r, r / (r + m)) where v > m, else Poisson(x; m).
    """
    m = train.mean(axis=0)
    v = train.var(axis=0)
    overdispersed = v > m
    size = np.where(overdispersed, m**2 / np.where(overdispersed, v - m, 1.0), 1.0)
    nb = scipy.stats.nbinom.logpmf(test, size, size / (size + m))
    poisson = scipy.stats.poisson.logpmf(test, m)
    return np.where(overdispersed, nb, poisson).sum(axis=1)


def bits_per_entry(log_pmf_per_cell: np.ndarray, num_genes: int) -> dict[str, float]:
    """Mean and standard error over cells of -log p(x_i) / (num_genes * ln 2)."""
    bits = -np.asarray(log_pmf_per_cell, dtype=np.float64) / (num_genes * math.log(2.0))
    return {
        "bits_per_entry": float(bits.mean()),
        "stderr": float(bits.std(ddof=1) / math.sqrt(bits.size)),
        "nll_nats_per_cell": float(-np.mean(log_pmf_per_cell)),
    }


def make_anndata(counts: np.ndarray, gene_idx: np.ndarray):
    """AnnData of raw float32 counts with gene names set to the source column indices."""
    import anndata

    adata = anndata.AnnData(X=scipy.sparse.csr_matrix(counts.astype(np.float32)))
    adata.var_names = [f"g{i}" for i in gene_idx]
    return adata


def train_scvi(adata_train, latent_library: bool, max_minutes: float, max_epochs: int):
    """Trains SCVI (NB likelihood, default architecture) with early stopping and a time cap."""
    import scvi

    scvi.model.SCVI.setup_anndata(adata_train)
    model = scvi.model.SCVI(
        adata_train,
        n_hidden=128,
        n_latent=10,
        n_layers=1,
        gene_likelihood="nb",
        use_observed_lib_size=not latent_library,
    )
    start = time.perf_counter()
    model.train(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        early_stopping=True,
        enable_progress_bar=False,
        max_time={"minutes": max_minutes},
    )
    return model, time.perf_counter() - start


def evaluate_scvi(model, adata_test, n_mc_samples: int) -> tuple[np.ndarray, float]:
    """Per-cell importance-sampled log p(x) [num_test] (higher is better) and seconds taken."""
    start = time.perf_counter()
    log_lik = model.get_marginal_ll(adata_test, n_mc_samples=n_mc_samples, return_mean=False)
    return np.asarray(log_lik, dtype=np.float64), time.perf_counter() - start


def run_scvi(args, adata_train, adata_test, latent_library: bool) -> dict:
    """Trains one scVI variant and scores the test cells at each requested sample count."""
    model, train_s = train_scvi(adata_train, latent_library, args.max_minutes, args.max_epochs)
    history = model.history
    result = {
        "use_observed_lib_size": not latent_library,
        "epochs_trained": len(history["elbo_train"]),
        "train_seconds": train_s,
        "final_elbo_train_per_cell": float(history["elbo_train"].iloc[-1, 0]),
        "final_elbo_validation_per_cell": float(history["elbo_validation"].iloc[-1, 0])
        if "elbo_validation" in history
        else None,
        "marginal_ll": {},
    }
    for k in args.n_mc_samples:
        log_lik, eval_s = evaluate_scvi(model, adata_test, k)
        result["marginal_ll"][str(k)] = bits_per_entry(log_lik, args.num_genes) | {
            "eval_seconds": eval_s
        }
        print(f"scVI observed_lib={not latent_library} K={k}: {result['marginal_ll'][str(k)]}")
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="comma-separated 10x HDF5 files, in order")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--num-test", type=int, default=1565)
    parser.add_argument("--num-genes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="split seed and scVI seed")
    parser.add_argument("--max-minutes", type=float, default=15.0, help="training cap per model")
    parser.add_argument("--max-epochs", type=int, default=400)
    parser.add_argument("--n-mc-samples", type=int, nargs="+", default=[10, 100])
    parser.add_argument(
        "--library",
        nargs="+",
        choices=["observed", "latent"],
        default=["observed", "latent"],
        help="scVI library-size variants to train",
    )
    parser.add_argument("--expect-genes", help="JSON list of gene indices the selection must equal")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.seed = args.seed
    paths = args.data.split(",")
    counts = load_counts(paths)
    train_idx, test_idx = split_cells(counts.shape[0], args.num_test, args.seed)
    gene_idx = select_genes(counts[train_idx], args.num_genes)
    if args.expect_genes:
        with open(args.expect_genes) as f:
            expected = json.load(f)
        if list(map(int, gene_idx)) != list(map(int, expected)):
            raise ValueError(f"--expect-genes {args.expect_genes}: selection differs")
    train = counts[np.ix_(train_idx, gene_idx)]
    test = counts[np.ix_(test_idx, gene_idx)]
    result = {
        "data": paths,
        "num_train": int(train.shape[0]),
        "num_test": int(test.shape[0]),
        "num_genes": int(args.num_genes),
        "test_zero_fraction": float((test == 0).mean()),
        "test_max_count": int(test.max()),
        "gene_idx_first10": [int(i) for i in gene_idx[:10]],
        "versions": {
            "scvi-tools": scvi.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "torch_threads": torch.get_num_threads(),
        "per_gene_nb_moments": bits_per_entry(per_gene_nb_log_pmf(train, test), args.num_genes),
        "scvi": {},
    }
    print("per-gene NB:", result["per_gene_nb_moments"])
    for variant in args.library:
        adata_train = make_anndata(train, gene_idx)
        adata_test = make_anndata(test, gene_idx)
        result["scvi"][variant] = run_scvi(args, adata_train, adata_test, variant == "latent")
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
