"""The experiment recipes run end to end (on the tiny digits config, in place of CIFAR-10)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from tests.cli import REPO_ROOT, cpu_environment, only_output

pytestmark = pytest.mark.slow


def test_cifar10_recipe_trains_samples_and_evaluates(tmp_path):
    workdir = tmp_path / "run"
    env = dict(
        cpu_environment(),
        CONFIG="configs/tiny.py",
        DATA_DIR=str(tmp_path / "tfds"),  # read by the TFDS datasets only
        WORKDIR=str(workdir),
    )
    overrides = ["--config.sampling.num_samples=6", "--config.sampling.num_steps=4"]
    result = subprocess.run(
        ["bash", "experiments/recipes/cifar10.sh", *overrides],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    with np.load(only_output(workdir / "samples", "samples_6")) as archive:
        assert archive["samples"].shape == (6, 8, 8, 1)  # the arguments override the recipe's
    metrics = json.loads((workdir / "eval" / "metrics_6.json").read_text())
    assert np.isfinite(metrics["bits_per_dim"])
    assert f"metrics: {workdir}/eval/" in result.stdout


@pytest.mark.parametrize("recipe", ["cifar10.sh", "tpu_pod.sh"])
def test_recipes_stop_without_a_data_dir(recipe):
    env = {k: v for k, v in cpu_environment().items() if k not in ("DATA_DIR", "WORKDIR")}
    result = subprocess.run(
        ["bash", f"experiments/recipes/{recipe}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "set DATA_DIR" in result.stderr
