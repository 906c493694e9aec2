"""The studies run as modules of the experiments package from the repository root."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.cli import REPO_ROOT, cpu_environment

pytestmark = pytest.mark.slow


def _run_study(module: str, *arguments: str) -> subprocess.CompletedProcess:
    """``python -m module arguments`` from the repository root on the CPU."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=REPO_ROOT,
        env=cpu_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_imputation_study_runs_as_a_module(tmp_path):
    out = tmp_path / "study"
    result = _run_study(
        "experiments.imputation_study", "--fractions=0.5", "--resamples=1", "--particles=2",
        "--num_examples=2", "--num_steps=2", f"--out={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(row["conditioning"], row["size"], row["network_calls"]) for row in rows] == [
        ("resamples", 1, 2),
        ("particles", 2, 4),
    ]
    for row in rows:
        assert 0.0 <= row["exact_fraction"] <= row["member_fraction"] <= 1.0
    assert out.with_suffix(".png").stat().st_size > 0


def test_the_unthinning_oracle_study_runs_as_a_module(tmp_path):
    out = tmp_path / "oracle"
    result = _run_study(
        "experiments.unthin_study", "--part=oracle", "--oracle_steps=2", "--oracle_draws=20",
        f"--out={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert len(rows) == 2 * 4  # two survivals, every method, one step count
    for row in rows:
        assert np.isclose(sum(row["posterior"]), 1.0, atol=1e-3)
        assert 0.0 <= row["member_share"] <= 1.0 and 0.0 <= row["total_variation"] <= 1.0
