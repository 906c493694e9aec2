"""A class-conditional tiny run end to end: training with label dropout, a grid row per class,
``--mode=sample`` with guidance scales 0 and 1 (labels in the npz), ``--mode=evaluate``
(label accuracy, the bound conditional on the true label), and the sampling-labels config."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from blackout_jax.run import config as config_lib
from blackout_jax.run import train
from configs import tiny
from tests.cli import only_output, run_main

pytestmark = pytest.mark.slow

NUM_CLASSES = 10


def conditional_tiny(**sampling):
    config = tiny.get_config()
    config.model.num_classes = NUM_CLASSES
    config.training.label_dropout = 0.5
    for name, value in sampling.items():
        setattr(config.sampling, name, value)
    return config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 6-step conditional run of configs/tiny.py (checkpoints at steps 3 and 6)."""
    workdir = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(config_lib.parse(conditional_tiny()), workdir)
    return workdir


def _mode(workdir, mode, *flags):
    return run_main("--config=configs/tiny.py", f"--workdir={workdir}", f"--mode={mode}", *flags)


def test_training_grid_has_one_row_per_class(trained_run):
    stored = json.loads((trained_run / "config.json").read_text())
    assert stored["model"]["num_classes"] == NUM_CLASSES
    # eval.num_grid_samples = 4 < 10 classes: one sample per class, a column of 10 digits.
    with Image.open(trained_run / "samples" / "grid_6.png") as image:
        width, height = image.size
    assert height * 10 == width * (NUM_CLASSES * 9 + 1)  # 10 rows of 8 + 1 border pixels


def test_sample_with_guidance_scales_zero_and_one_stores_the_labels(trained_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    flags = ("--config.sampling.num_samples=20", "--config.sampling.num_steps=4")
    drawn = {}
    # A 6-step network barely tells the classes apart: a large scale shows that guidance acts.
    for scale, labels, expected in (
        (0.0, "balanced", np.repeat(np.arange(10), 2)),
        (50.0, "balanced", np.repeat(np.arange(10), 2)),
        (1.0, "3,7", [3, 7] * 10),
    ):
        result = _mode(
            workdir,
            "sample",
            *flags,
            f"--config.sampling.guidance_scale={scale}",
            f"--config.sampling.labels={labels}",
        )
        assert result.returncode == 0, result.stderr
        path = only_output(workdir / "samples", "samples_6")
        with np.load(path) as archive:
            drawn[scale] = archive["samples"]
            np.testing.assert_array_equal(archive["labels"], expected)
            assert float(archive["guidance_scale"]) == scale
        path.unlink()
        samples = drawn[scale]
        assert samples.shape == (20, 8, 8, 1) and samples.min() >= 0 and samples.max() <= 16
    assert not np.array_equal(drawn[0.0], drawn[50.0])  # the same draws, another rate


def test_evaluate_reports_label_accuracy_and_the_conditional_bound(trained_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    result = _mode(
        workdir,
        "evaluate",
        "--config.sampling.num_samples=10",
        "--config.sampling.num_steps=4",
        "--config.sampling.guidance_scale=1.0",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((workdir / "eval" / "metrics_6.json").read_text())
    assert metrics["sampler"]["guidance_scale"] == 1.0
    assert metrics["sampler"]["labels"] == "balanced"
    accuracy = metrics["sample_metrics"]["label_accuracy"]
    assert accuracy in {k / 10 for k in range(11)}
    for name in ("bits_per_dim", "conditional_bits_per_dim"):
        assert np.isfinite(metrics[name]) and metrics[name] > 0
    np.testing.assert_allclose(
        metrics["conditional_bits_per_dim"],
        metrics["conditional_nll_nats"] / (64 * np.log(2.0)),
        rtol=1e-6,
    )
    assert metrics["conditional_bits_per_dim"] != metrics["bits_per_dim"]
    assert "conditional on the true label" in result.stdout


def test_sampling_labels_balanced_and_lists():
    def labels(num_samples, **sampling):
        return config_lib.sampling_labels(
            config_lib.parse(conditional_tiny(**sampling)), num_samples
        )

    assert labels(13).tolist() == [0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9]
    np.testing.assert_array_equal(np.bincount(labels(50)), np.full(10, 5))
    assert labels(5, labels="4, 1").tolist() == [4, 1, 4, 1, 4]

    def check(config):
        config_lib.parse(config)

    with pytest.raises(ValueError, match=r"in \[0, 10\), got '1,10' \(entry 1 = '10'\)"):
        check(conditional_tiny(labels="1,10"))
    with pytest.raises(ValueError, match=r"entry 0 = 'odd'"):
        check(conditional_tiny(labels="odd"))
    unconditional = tiny.get_config()
    assert config_lib.sampling_labels(config_lib.parse(unconditional), 4) is None
    for name, message in (
        ("guidance_scale", "sampling.guidance_scale must be 0 for an unconditional"),
        ("labels", "sampling.labels must stay 'balanced' for an unconditional"),
    ):
        changed = tiny.get_config()
        setattr(changed.sampling, name, 1.0 if name == "guidance_scale" else "3")
        with pytest.raises(ValueError, match=message):
            check(changed)
    unconditional.training.label_dropout = 0.1
    with pytest.raises(ValueError, match="training.label_dropout must be 0 for an unconditional"):
        check(unconditional)
