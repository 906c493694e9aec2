"""Helpers of the reliability tests: run the command on a run folder, read what it left."""

from __future__ import annotations

import hashlib
import pathlib

from blackout_jax.run import reporting
from tests.cli import run_main

NO_GRID = "--config.eval.num_grid_samples=0"
"""Evaluations without the sample grid, for training runs whose grid nothing checks."""


def run_tiny(workdir, *flags):
    return run_main("--config=configs/tiny.py", f"--workdir={workdir}", *flags)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def digest(folder: pathlib.Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def train_rows(workdir) -> list[int]:
    rows = reporting.read_metrics(workdir / reporting.METRICS_FILE)
    return [row["step"] for row in rows if row["split"] == "train"]
