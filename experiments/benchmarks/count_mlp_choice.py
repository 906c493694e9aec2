"""Which output of the count MLP to default to: ``nb_corrected`` or ``log_rate``.

On the Liao et al. (2020) bronchoalveolar UMI counts (``--data``, two 10x Genomics HDF5 files;
skipped with a message when the folder is absent): the cells of both files, a seed-0 80/20
split (``numpy.random.default_rng(0).permutation``), the top ``--genes`` genes by training mean.
Each output is trained for the same wall time (``--seconds``) with
:func:`blackout_jax.training_loss` (weighting ``elbo``, ``t_end = 15``) and Adam, from the same
seed and the same batches; then the held-out bound :func:`blackout_jax.nll_bound` (``max_count``
= the largest count of the selected matrix) is evaluated on the first ``--eval-cells`` held-out
cells, as is the untrained ``nb_corrected`` network (exactly the per-gene negative-binomial
posterior mean). Bits per entry = nats / (D ln 2). The exact per-gene negative-binomial and
Poisson log-likelihoods (moments of the training cells) are printed beside them.

    python -m experiments.benchmarks.count_mlp_choice --seconds 150 --eval-cells 200

Writes the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse
import scipy.stats
from flax import nnx

import blackout_jax
from blackout_jax.models.count_mlp import create_count_mlp

DATA = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "liao2019"
FILES = (
    "GSM4339772_C144_filtered_feature_bc_matrix.h5",
    "GSM4339774_C146_filtered_feature_bc_matrix.h5",
)
T_END = 15.0
NUM_STEPS = 1000  # the time embedding's grid; the elbo weighting does not use it


def log(message: str) -> None:
    print(f"[count_mlp_choice {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_10x(path: pathlib.Path) -> scipy.sparse.csr_matrix:
    """Cells x genes counts of a 10x HDF5 file (stored genes x cells, CSC)."""
    import h5py

    with h5py.File(path, "r") as handle:
        group = handle["matrix"]
        genes_by_cells = scipy.sparse.csc_matrix(
            (group["data"][:], group["indices"][:], group["indptr"][:]), shape=group["shape"][:]
        )
    return genes_by_cells.T.tocsr()


def load_split(folder: pathlib.Path, num_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` int32 dense matrices: seed-0 80/20 cell split, top genes by train mean."""
    cells = scipy.sparse.vstack([read_10x(folder / name) for name in FILES]).tocsr()
    order = np.random.default_rng(0).permutation(cells.shape[0])
    num_train = int(round(0.8 * cells.shape[0]))
    train, test = cells[order[:num_train]], cells[order[num_train:]]
    mean = np.asarray(train.mean(axis=0)).ravel()
    genes = np.sort(np.argsort(-mean, kind="stable")[:num_genes])
    return (
        np.asarray(train[:, genes].todense(), np.int32),
        np.asarray(test[:, genes].todense(), np.int32),
    )


def per_gene_bits(train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Exact held-out bits per entry of per-gene Poisson and negative-binomial (moments) fits."""
    mean = np.maximum(train.mean(axis=0), 1e-6)
    variance = train.var(axis=0)
    theta = np.maximum((variance - mean) / mean, 1e-4)
    nb = scipy.stats.nbinom.logpmf(test, mean / theta, 1.0 / (1.0 + theta))
    poisson = scipy.stats.poisson.logpmf(test, mean)
    scale = -1.0 / (test.size * math.log(2.0))
    return {
        "per_gene_poisson": float(poisson.sum() * scale),
        "per_gene_nb": float(nb.sum() * scale),
    }


def bound_bits(model, cells: np.ndarray, max_count: int, num_time_samples: int) -> float:
    """Mean held-out ``nll_bound`` in bits per entry."""
    graphdef, state = nnx.split(model)
    predict_fn = jax.tree_util.Partial(
        lambda state, counts, t: nnx.merge(graphdef, state)(counts, t, train=False), state
    )
    nats = blackout_jax.nll_bound(
        jax.random.key(1),
        predict_fn,
        jnp.asarray(cells),
        t_end=T_END,
        max_count=max_count,
        num_time_samples=num_time_samples,
    )
    return float(jnp.mean(blackout_jax.bits_per_dim(nats, cells.shape[1])))


def train_for(model, train: np.ndarray, *, seconds: float, batch: int, learning_rate: float):
    """Adam on the elbo-weighted loss for ``seconds`` of wall time (after compilation)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, rest, counts, indices):
        def loss_fn(params):
            network = nnx.merge(graphdef, params, rest)
            keys = blackout_jax.example_keys(jax.random.key(0), indices)
            per_example = blackout_jax.training_loss(
                keys,
                lambda n, t: network(n, t, train=True),
                counts,
                weighting="elbo",
                t_end=T_END,
                num_steps=NUM_STEPS,
            )
            return jnp.mean(per_example)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(0)
    num_steps, losses, started = 0, [], None
    while started is None or time.perf_counter() - started < seconds:
        rows = rng.integers(0, train.shape[0], batch)
        indices = jnp.arange(num_steps * batch, (num_steps + 1) * batch, dtype=jnp.uint32)
        params, opt_state, loss = step(params, opt_state, rest, train[rows], indices)
        losses.append(float(loss))  # waits for the step, so the wall time is the compute's
        if started is None:  # the first step compiles
            started = time.perf_counter()
        num_steps += 1
    jax.block_until_ready(params)
    recent = float(np.mean(losses[-100:]))
    return nnx.merge(graphdef, params, rest), num_steps, recent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=pathlib.Path, default=DATA)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--eval-cells", type=int, default=200)
    parser.add_argument("--time-samples", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    if not all((args.data / name).exists() for name in FILES):
        print(f"skipped: the Liao 2019 files are not in {args.data}")
        return

    train, test = load_split(args.data, args.genes)
    max_count = int(max(train.max(), test.max()))
    held_out = test[: args.eval_cells]
    log(f"train {train.shape}, test {test.shape}, max count {max_count}")
    result = {
        "command": " ".join(["python -m experiments.benchmarks.count_mlp_choice", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {jax.devices()[0]}",
        "train_cells": train.shape[0],
        "test_cells": test.shape[0],
        "eval_cells": held_out.shape[0],
        "genes": train.shape[1],
        "max_count": max_count,
        "max_count_train": int(train.max()),
        "zero_fraction_train": float(np.mean(train == 0)),
        "settings": {key: value for key, value in vars(args).items() if key not in ("data", "out")},
        "exact_bits_per_entry_all_test": per_gene_bits(train, test),
        "exact_bits_per_entry_eval_cells": per_gene_bits(train, held_out),
    }
    log(f"exact per-gene fits: {result['exact_bits_per_entry_eval_cells']}")
    moments = {"feature_mean": train.mean(axis=0), "feature_variance": train.var(axis=0)}
    network = {"width": args.width, "num_blocks": args.blocks, "embedding_dim": 64}

    def build(output: str):
        return create_count_mlp(
            network | {"output": output},
            example_shape=(train.shape[1],),
            max_count=max_count,
            t_end=T_END,
            num_steps=NUM_STEPS,
            seed=0,
            **moments,
        )

    started = time.perf_counter()
    result["untrained_nb_corrected_bits"] = bound_bits(
        build("nb_corrected"), held_out, max_count, args.time_samples
    )
    result["bound_seconds"] = time.perf_counter() - started
    log(f"untrained nb_corrected: {result['untrained_nb_corrected_bits']:.4f} bits/entry")
    result["outputs"] = {}
    for output in ("nb_corrected", "log_rate"):
        model, steps, loss = train_for(
            build(output),
            train,
            seconds=args.seconds,
            batch=args.batch,
            learning_rate=args.learning_rate,
        )
        bits = bound_bits(model, held_out, max_count, args.time_samples)
        result["outputs"][output] = {"steps": steps, "final_train_loss": loss, "bits": bits}
        log(f"{output}: {steps} steps, loss {loss:.4f}, {bits:.4f} bits/entry")
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
