"""Tests of the command line: config errors exit non-zero, name the field, and write nothing."""

from __future__ import annotations

import pytest

from tests.cli import run_main as _main


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("--config.diffusion.t_end=-1.0", "diffusion.t_end"),
        ("--config.training.num_steps=0", "training.num_steps"),
        ("--config.model.nf=0", "model.nf"),
        ("--config.data.max_count=7", "data.max_count"),
    ],
)
def test_a_config_error_exits_non_zero_naming_the_field(tmp_path, override, field):
    workdir = tmp_path / "run"
    result = _main("--config=configs/tiny.py", f"--workdir={workdir}", override)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert field in result.stderr
    assert not workdir.exists()


def test_the_batch_must_split_over_the_devices(tmp_path):
    workdir = tmp_path / "run"
    result = _main(
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        "--config.training.batch_size=12",
        num_devices=8,
    )
    assert result.returncode == 2
    assert "training.batch_size must be divisible by the device count 8" in result.stderr
    assert not workdir.exists()


def test_unknown_fields_and_modes_are_refused(tmp_path):
    workdir = tmp_path / "run"
    result = _main("--config=configs/tiny.py", f"--workdir={workdir}", "--config.training.lr=1")
    assert result.returncode != 0
    assert "lr" in result.stderr
    result = _main("--config=configs/tiny.py", f"--workdir={workdir}", "--mode=bogus")
    assert result.returncode != 0
    assert "mode" in result.stderr
    assert not workdir.exists()


def test_counts_config_needs_a_data_path(tmp_path):
    workdir = tmp_path / "run"
    result = _main("--config=configs/counts.py", f"--workdir={workdir}")
    assert result.returncode == 2
    assert "data.path" in result.stderr
    missing = tmp_path / "missing.npz"
    result = _main(
        "--config=configs/counts.py", f"--workdir={workdir}", f"--config.data.path={missing}"
    )
    assert result.returncode == 2
    assert "missing.npz" in result.stderr
    assert not workdir.exists()
