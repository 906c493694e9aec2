"""configs/counts_small.py, the CPU preset for own data, trains on a folder of PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from blackout_jax.run import reporting
from tests.cli import run_main

pytestmark = pytest.mark.slow


def test_the_cpu_preset_trains_on_a_png_folder_and_says_it_is_undertrained(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"patch_{index:02d}.png")
    result = run_main(
        "--config=configs/counts_small.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.path={folder}",
        "--config.data.num_test=4",
        "--config.training.num_steps=4",
        "--config.training.batch_size=4",
        "--config.training.log_every=2",
        "--config.eval.num_examples=4",
        "--config.eval.batch_size=4",
        "--config.eval.num_grid_samples=2",
        "--config.sampling.num_steps=5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = reporting.read_metrics(tmp_path / "run" / reporting.METRICS_FILE)
    assert [row["step"] for row in rows if row["split"] == "train"] == [2, 4]
    final = [row for row in rows if row["split"] == "eval"][-1]
    assert final["bits_per_dim"] > final["histogram_baseline_bits_per_dim"] > 0
    assert "undertrained" in result.stdout
