"""Imputation and un-thinning of held-out cells with a trained count-vector run, against the
baselines of the field.

    python -m experiments.cells_study --config=configs/cells.py --workdir=runs/cells \
        --config.data.path=A.h5,B.h5 [--num_cells=256] [--repeats=8] \
        [--out=experiments/results/cells_study.json]

The first ``num_cells`` held-out cells ``x`` of the run's split:

* **imputation**: 10% of their non-zero entries hidden
  (:func:`blackout_jax.metrics.count_imputation.mask_nonzero_entries`, seed 0); each cell is
  completed ``repeats`` times by ``--mode=impute`` (:func:`blackout_jax.run.inference.
  impute_run`, every copy with its own draws) and the completions averaged (the posterior mean
  of the model). Baselines: zero fill, the per-gene training mean, the NB-mixture posterior
  mean (components weighed by the visible entries). Errors on the hidden entries.
* **un-thinning**: ``y ~ Binomial(x, q)`` for ``q`` in 0.1, 0.3, 0.5 (seed 0);
  ``--mode=unthin`` draws ``repeats`` posterior samples per cell and their mean is the
  estimate. Baselines: ``y / q`` and the per-gene NB posterior mean. Errors on all entries.

Errors (:func:`blackout_jax.metrics.count_imputation.count_errors`): MAE and RMSE of counts,
MAE and RMSE of ``log1p``. Baselines are fitted on (at most 10,000) training cells.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from blackout_jax.metrics import count_baselines, count_imputation, count_mixture
from blackout_jax.run import evaluation, inference, trained

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "the run's config file", lock_config=False)
flags.DEFINE_string("workdir", None, "the trained run's folder")
flags.DEFINE_integer("num_cells", 256, "held-out cells to impute and un-thin")
flags.DEFINE_integer("repeats", 8, "model draws averaged per cell")
flags.DEFINE_string("out", "experiments/results/cells_study.json", "results file")

KEEP_PROBABILITIES = (0.1, 0.3, 0.5)
MASK_FRACTION = 0.1


def _model_mean(path: str, key: str, num_cells: int, repeats: int) -> np.ndarray:
    with np.load(path) as stored:
        values = stored[key].astype(np.float64)
    return values.reshape(repeats, num_cells, -1).mean(axis=0) if key == "counts" else values


def main(argv: list[str]) -> None:
    del argv
    values = FLAGS.config
    values.sampling.num_posterior_samples = FLAGS.repeats
    config, dataset, model = trained.open_trained_run(values, FLAGS.workdir)
    cells = np.asarray(dataset.test_examples(FLAGS.num_cells)).astype(np.int64)
    train = evaluation.baseline_training_examples(dataset).astype(np.int64)
    mixture = count_mixture.NegativeBinomialMixture.fit(train, seed=config.seed)
    negative_binomial = count_baselines.PerGeneNegativeBinomial.fit(train, seed=config.seed)
    results: dict = {"step": model.step, "num_cells": len(cells), "repeats": FLAGS.repeats}

    observed, hidden = count_imputation.mask_nonzero_entries(cells, MASK_FRACTION, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "masked.npz")
        repeat = (FLAGS.repeats, 1)
        np.savez(path, counts=np.tile(observed, repeat), mask=np.tile(~hidden, repeat))
        start = time.perf_counter()
        output = inference.impute_run(config, FLAGS.workdir, dataset, model, path)
        seconds = time.perf_counter() - start
    estimates = {
        "model posterior mean": _model_mean(output, "counts", len(cells), FLAGS.repeats),
        "zero fill": count_imputation.impute_zero(observed, hidden),
        "per-gene training mean": count_imputation.impute_gene_mean(observed, hidden, train),
        "NB-mixture posterior mean": count_imputation.impute_mixture_posterior_mean(
            observed, hidden, mixture
        ),
    }
    results["imputation"] = {
        "model_seconds": seconds,
        **{name: count_imputation.count_errors(e, cells, hidden) for name, e in estimates.items()},
    }

    results["unthinning"] = {}
    for q in KEEP_PROBABILITIES:
        thinned = count_imputation.thin_counts(cells, q, seed=0)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "thinned.npz")
            np.savez(path, counts=thinned, survival=np.full(len(cells), q))
            start = time.perf_counter()
            output = inference.unthin_run(config, FLAGS.workdir, model, path)
            seconds = time.perf_counter() - start
        estimates = {
            "model posterior mean": _model_mean(output, "mean", len(cells), FLAGS.repeats),
            "y / q": count_imputation.unthin_rescale(thinned, q),
            "per-gene NB posterior mean": count_imputation.unthin_nb_posterior_mean(
                thinned, q, negative_binomial
            ),
        }
        results["unthinning"][str(q)] = {
            "model_seconds": seconds,
            **{name: count_imputation.count_errors(e, cells) for name, e in estimates.items()},
        }
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as file:
        json.dump(results, file, indent=2)
    json.dump(results, sys.stdout, indent=2)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
