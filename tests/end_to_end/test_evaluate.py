"""Sample, evaluate and impute through the command line on a tiny trained run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from blackout_jax.run import grid_files
from configs import tiny
from tests.cli import only_output, run_main

pytestmark = pytest.mark.slow


def _mode(workdir, mode, *flags):
    return run_main("--config=configs/tiny.py", f"--workdir={workdir}", f"--mode={mode}", *flags)


def test_sample_writes_npz_and_png_and_is_reproducible(trained_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    flags = ("--config.sampling.num_samples=10", "--config.sampling.num_steps=5")
    result = _mode(workdir, "sample", *flags)
    assert result.returncode == 0, result.stderr
    path = only_output(workdir / "samples", "samples_6")
    with np.load(path) as archive:
        samples = archive["samples"]
        assert str(archive["method"]) == "binomial_bridge" and int(archive["num_steps"]) == 5
        assert int(archive["seed"]) == 0 and archive["grid"].shape == (6,)
    assert samples.shape == (10, 8, 8, 1) and np.issubdtype(samples.dtype, np.integer)
    assert samples.min() >= 0 and samples.max() <= 16
    assert path.name.startswith("samples_6_binomial_bridge_5steps_logit_seed0_")
    assert path.with_suffix(".png").stat().st_size > 0

    # The chunks kept for resuming (tests/run/test_chunked.py) are removed once the npz is written;
    # a second command draws the same samples.
    assert not list((workdir / "samples").glob("chunks_*"))
    path.unlink()
    result = _mode(workdir, "sample", *flags)
    assert result.returncode == 0, result.stderr
    with np.load(path) as archive:
        np.testing.assert_array_equal(archive["samples"], samples)

    result = _mode(workdir, "sample", *flags, "--config.sampling.checkpoint_step=3")
    assert result.returncode == 0, result.stderr
    assert only_output(workdir / "samples", "samples_3").exists()


def test_evaluate_writes_the_bound_and_digits_metrics(trained_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    result = _mode(workdir, "evaluate", "--config.sampling.num_samples=12")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((workdir / "eval" / "metrics_6.json").read_text())
    assert metrics["step"] == 6
    assert metrics["num_test_examples"] == 297  # the whole held-out split of digits
    assert np.isfinite(metrics["bits_per_dim"]) and metrics["bits_per_dim"] > 0
    assert 0 < metrics["bits_per_dim_ci95"] < metrics["bits_per_dim"]
    np.testing.assert_allclose(
        metrics["bits_per_dim"], metrics["nll_nats"] / (64 * np.log(2.0)), rtol=1e-6
    )
    quality = metrics["sample_metrics"]
    assert quality["num_samples"] == 12
    assert np.isclose(sum(quality["class_distribution"]), 1.0)
    assert quality["frechet_distance"] > 0 and quality["frechet_floor"] > 0
    summary = [line for line in result.stdout.splitlines() if line.startswith("samples: ")]
    assert len(summary) == 1 and "frechet_distance" in summary[0] and "classes 0:" in summary[0]


def test_evaluate_without_inception_weights_names_the_file(trained_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    missing = tmp_path / "weights" / "inception.pth"
    result = _mode(
        workdir,
        "evaluate",
        "--config.eval.sample_metrics=inception",
        f"--config.eval.inception_weights={missing}",
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert not (workdir / "eval").exists()


def test_impute_keeps_observed_counts(trained_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    counts = load_digits().images[:5].astype(np.int64)  # (N, H, W): a channel is added
    mask = np.zeros(counts.shape, bool)
    mask[:, :5] = True
    np.savez(tmp_path / "observed.npz", counts=counts, mask=mask)
    flags = ("--config.sampling.impute_particles=3",)
    result = _mode(workdir, "impute", f"--input={tmp_path / 'observed.npz'}", *flags)
    assert result.returncode == 0, result.stderr
    path = only_output(workdir / "imputed", "imputed_6")
    with np.load(path) as archive:
        completed = archive["counts"]
    assert completed.shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(completed[..., 0][mask], counts[mask])
    assert completed.min() >= 0 and completed.max() <= 16
    # The PNG shows each input (missing entries red) beside its completion: 2 columns, 5 rows.
    image = np.asarray(Image.open(path.with_suffix(".png")))
    rows, columns = image.shape[0], image.shape[1]
    assert image.ndim == 3 and abs(rows / columns - (5 * 9 + 1) / (2 * 9 + 1)) < 0.05

    np.savez(tmp_path / "no_mask.npz", counts=counts)
    result = _mode(workdir, "impute", f"--input={tmp_path / 'no_mask.npz'}")
    assert result.returncode == 2
    assert "no_mask.npz has no array 'mask'" in result.stderr


def test_sample_without_checkpoints_is_an_error(tmp_path):
    result = _mode(tmp_path / "empty", "sample")
    assert result.returncode == 2
    assert "no checkpoints" in result.stderr
    assert not (tmp_path / "empty").exists()


def test_inference_uses_the_network_the_run_was_trained_with(run_copy):
    """A run samples with the network it was trained with (here: model.nf = 8 of
    configs/tiny.py) whatever the command line says; the differing command-line value is named
    in one note and not used (a network of 16 channels would not restore the checkpoint)."""
    result = _mode(run_copy, "sample", "--config.model.nf=16", "--config.sampling.num_samples=2")
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].endswith("model.nf = 8 (command line: 16)"), notes
    with np.load(only_output(run_copy / "samples", "samples_6")) as archive:
        assert archive["samples"].shape == (2, 8, 8, 1)


def test_an_optimised_grid_is_fitted_once_per_checkpoint_and_reused(trained_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    flags = (
        "--config.sampling.grid=optimised",
        "--config.sampling.num_steps=4",
        "--config.sampling.num_samples=4",
    )
    result = _mode(workdir, "sample", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    path = workdir / "grids" / "optimised_6_4.json"
    times, info = grid_files.load_grid(path)
    assert times.shape == (5,) and times[0] == 0 and np.all(np.diff(times) > 0)
    assert np.isclose(times[-1], tiny.get_config().diffusion.t_end) and info["step"] == 6
    written = path.stat().st_mtime_ns
    result = _mode(workdir, "sample", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fitting an optimised" not in result.stdout and path.stat().st_mtime_ns == written


def test_unthin_writes_posterior_samples_and_refuses_bad_input(trained_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    truth = load_digits().images[:3].astype(np.int64)  # (N, H, W): a channel is added
    survival = np.array([0.5, 0.2, 0.1])
    observed = np.random.default_rng(0).binomial(truth, survival[:, None, None])
    np.savez(tmp_path / "thinned.npz", counts=observed, survival=survival, truth=truth)
    flags = (  # 9 rows in chunks of 4: the last chunk is padded
        "--config.sampling.num_posterior_samples=3",
        "--config.sampling.num_steps=4",
        "--config.sampling.batch_size=4",
    )
    result = _mode(workdir, "unthin", f"--input={tmp_path / 'thinned.npz'}", *flags)
    assert result.returncode == 0, result.stderr
    path = only_output(workdir / "unthinned", "unthinned_6")
    with np.load(path) as archive:
        stored = {name: archive[name] for name in archive.files}
    samples = stored["samples"]
    assert samples.shape == (3, 3, 8, 8, 1) and samples.dtype == np.int32
    assert (samples >= observed[:, None, ..., None]).all() and samples.max() <= 16
    np.testing.assert_allclose(stored["mean"], samples.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stored["survival"], survival, rtol=1e-6)
    np.testing.assert_array_equal(stored["truth"][..., 0], truth)
    np.testing.assert_array_equal(stored["counts"][..., 0], observed)
    # One row per example: truth | observed | y/q | 3 samples | mean.
    image = np.asarray(Image.open(path.with_suffix(".png")))
    assert abs(image.shape[0] / image.shape[1] - (3 * 9 + 1) / (7 * 9 + 1)) < 0.05

    bad = survival.copy()
    bad[1] = 0.0
    np.savez(tmp_path / "bad.npz", counts=observed, survival=bad)
    shutil.rmtree(workdir / "unthinned")
    result = _mode(workdir, "unthin", f"--input={tmp_path / 'bad.npz'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{tmp_path / 'bad.npz'}['survival'][1] = 0.0" in lines[0]
    assert not (workdir / "unthinned").exists()
