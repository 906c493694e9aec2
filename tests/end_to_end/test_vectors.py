"""Count vectors (D,) through the command line: configs/vectors_tiny.py trains, samples,
evaluates, imputes and un-thins the synthetic cells of 64 genes with a known law, read from a
count-matrix file that names the genes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from blackout_jax.data import synthetic_cells
from blackout_jax.run import reporting
from tests.cli import only_output, run_main

pytestmark = pytest.mark.slow

CONFIG = "--config=configs/vectors_tiny.py"
NUM_GENES = synthetic_cells.NUM_GENES


GENE_NAMES = [f"gene{index}" for index in range(NUM_GENES)]


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    """configs/vectors_tiny.py trained on the synthetic cells, read from a file that names
    their genes (the same cells and held-out split as ``data.name = synthetic_cells``)."""
    folder = tmp_path_factory.mktemp("vectors")
    path = folder / "cells.npz"
    np.savez(path, counts=synthetic_cells.load_counts()[0], feature_names=np.asarray(GENE_NAMES))
    data = [f"--config.data.{field}" for field in ("name=counts", f"path={path}", "max_count=0")]
    workdir = folder / "run"
    result = run_main(CONFIG, f"--workdir={workdir}", *data)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result, data


def test_training_reports_the_bound_beside_the_count_baselines(vector_run):
    workdir, result, _ = vector_run
    assert "data: 1000 training and 200 held-out examples" in result.stdout
    features = json.loads((workdir / "features.json").read_text())
    assert [feature["name"] for feature in features] == GENE_NAMES
    rows = reporting.read_metrics(workdir / reporting.METRICS_FILE)
    final = [row for row in rows if row["split"] == "eval"][-1]
    assert final["step"] == 30
    baselines = [final[f"baseline_{name}_bits_per_dim"] for name in ("poisson", "nb", "nb_mixture")]
    assert all(np.isfinite(baselines)) and baselines[0] > baselines[1] > baselines[2] > 0
    # The bound of any model is above the law's entropy (up to the Monte Carlo error):
    # the held-out cells' exact -log2 p per entry.
    cells = synthetic_cells.load_counts()[0]
    examples = np.asarray(_held_out(cells, 200))[:64]
    entropy = -synthetic_cells.log_prob(examples).mean() / (NUM_GENES * np.log(2))
    assert final["bits_per_dim"] > entropy - 3 * final["bits_per_dim_ci95"]
    grid = Image.open(workdir / "samples" / "grid_30.png")
    assert min(grid.size) >= 256


def _held_out(cells: np.ndarray, num_test: int) -> np.ndarray:
    from blackout_jax.data import COUNTS_SPLIT_SEED, fixed_split

    _, test = fixed_split(
        len(cells), num_test, source=synthetic_cells.SOURCE, split_seed=COUNTS_SPLIT_SEED
    )
    return cells[test]


def test_sample_and_evaluate_write_vectors_metrics_and_plots(vector_run):
    workdir, _, data = vector_run
    result = run_main(CONFIG, f"--workdir={workdir}", "--mode=sample", *data)
    assert result.returncode == 0, result.stderr[-3000:]
    output = only_output(workdir / "samples", "samples_30")
    with np.load(output) as stored:
        samples = stored["samples"]
        assert list(stored["feature_names"]) == GENE_NAMES
    assert samples.shape == (64, NUM_GENES) and samples.dtype == np.int32
    assert samples.min() >= 0 and samples.max() <= synthetic_cells.MAX_COUNT
    anndata = pytest.importorskip("anndata")  # the test extra installs it
    cells_file = anndata.read_h5ad(output.with_suffix(".h5ad"))
    assert list(cells_file.var_names) == GENE_NAMES
    np.testing.assert_array_equal(np.asarray(cells_file.X), samples)

    result = run_main(CONFIG, f"--workdir={workdir}", "--mode=evaluate", *data)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "eval" / "metrics_30.json").read_text())
    metrics = results["sample_metrics"]
    for name in ("log_mean_correlation", "zero_fraction_correlation", "frechet_pca_ratio"):
        assert np.isfinite(metrics[name])
    assert results["baseline_nb_bits_per_dim"] > results["baseline_nb_mixture_bits_per_dim"]
    assert Image.open(workdir / "eval" / "metrics_30.png").size[0] > 100


def test_impute_and_unthin_keep_what_was_observed(vector_run, tmp_path):
    workdir, _, data = vector_run
    cells = _held_out(synthetic_cells.load_counts()[0], 200)[:8]
    mask = np.random.default_rng(0).random(cells.shape) > 0.2
    np.savez(tmp_path / "masked.npz", counts=np.where(mask, cells, 0), mask=mask)
    result = run_main(
        CONFIG, f"--workdir={workdir}", "--mode=impute", f"--input={tmp_path / 'masked.npz'}", *data
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(only_output(workdir / "imputed", "imputed_30")) as stored:
        completed = stored["counts"]
    assert completed.shape == cells.shape
    np.testing.assert_array_equal(completed[mask], cells[mask])

    thinned = np.random.default_rng(1).binomial(cells, 0.3)
    np.savez(tmp_path / "thinned.npz", counts=thinned, survival=np.full(8, 0.3))
    result = run_main(
        CONFIG,
        f"--workdir={workdir}",
        "--mode=unthin",
        f"--input={tmp_path / 'thinned.npz'}",
        "--config.sampling.num_posterior_samples=2",
        *data,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(only_output(workdir / "unthinned", "unthinned_30")) as stored:
        posterior = stored["samples"]
    assert posterior.shape == (8, 2, NUM_GENES)
    assert np.all(posterior >= thinned[:, None])
