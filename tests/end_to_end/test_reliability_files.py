"""Every file a command reads is checked as carefully as the data: the run folder's parts and
files, array headers, config files."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.cli import REPO_ROOT, cpu_environment, only_output, run_main
from tests.end_to_end.reliability import NO_GRID, digest, error_lines, run_tiny, train_rows
from tests.hostile_arrays import hostile_npy_bytes, write_hostile_npz

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("part", "make", "mode"),
    [
        ("checkpoints", pathlib.Path.write_text, "train"),
        ("samples", pathlib.Path.write_text, "sample"),
        ("config.json", lambda path, _: path.mkdir(), "sample"),
    ],
    ids=["checkpoints is a file", "samples is a file", "config.json is a folder"],
)
def test_a_part_of_the_run_folder_of_the_wrong_kind_is_one_line_at_start_up(
    tmp_path, part, make, mode
):
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    if part == "checkpoints":
        (workdir / "checkpoints").rmdir()
    make(workdir / part, "kept\n")
    before = digest(workdir)
    result = run_tiny(workdir, f"--mode={mode}")
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and str(workdir / part) in errors[0], result.stderr[-2000:]
    assert "loading data" not in result.stdout and "Traceback" not in result.stderr
    assert digest(workdir) == before
    assert {p.name for p in workdir.iterdir()} == {"checkpoints", part}


@pytest.mark.parametrize("mode", ["train", "sample"])
def test_a_stored_config_that_is_not_an_object_is_one_line_naming_it(run_copy, mode):
    path = run_copy / "config.json"
    path.write_text("[1, 2, 3]")
    before = digest(run_copy)
    result = run_tiny(run_copy, f"--mode={mode}", "--config.training.num_steps=8")
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and f"{path} holds JSON a list" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    after = digest(run_copy)
    after.pop(".lock", None)
    before.pop(".lock", None)
    assert after == before


def test_metrics_lines_that_are_not_rows_are_skipped_on_resume(run_copy):
    with open(run_copy / "metrics.jsonl", "ab") as file:
        file.write(b'[1, 2]\n{"step": null}\n' + bytes(range(256)) + b"\n")
    result = run_tiny(run_copy, "--config.training.num_steps=8", NO_GRID)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert train_rows(run_copy) == [2, 4, 6, 8]


def test_a_damaged_optimised_grid_file_is_fitted_again_with_one_warning(run_copy):
    path = run_copy / "grids" / "optimised_6_4.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"times": [0.0, 3.0, 1.0, 7.0, 10.0], "info": {}}))
    before = digest(run_copy / "checkpoints")
    result = run_tiny(
        run_copy,
        "--mode=sample",
        "--config.sampling.grid=optimised",
        "--config.sampling.num_samples=2",
        "--config.sampling.batch_size=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(path) in warnings[0], result.stderr[-2000:]
    assert "strictly increasing" in warnings[0] and "fitting an optimised" in result.stdout
    times = json.loads(path.read_text())["times"]
    assert len(times) == 5 and times[0] == 0 and np.all(np.diff(times) > 0)
    assert only_output(run_copy / "samples", "samples_6").exists()
    assert digest(run_copy / "checkpoints") == before


def test_a_data_file_whose_header_claims_more_than_it_holds_is_one_line(tmp_path):
    path = tmp_path / "counts.npy"
    path.write_bytes(hostile_npy_bytes())
    result = run_main(
        "--config=configs/counts_small.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.path={path}",
    )
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-2000:]
    assert f"{path}: the header claims shape (2147483648, 8, 8, 1)" in errors[0]
    assert "only 64 bytes" in errors[0] and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.npy"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("unthin", "['counts']: the header claims shape (2147483648, 8, 8, 1) of float64"),
        ("impute", " is a single .npy array; an .npz with arrays 'counts' and 'mask' is needed"),
    ],
)
def test_input_files_are_checked_before_any_work(trained_run, tmp_path, mode, expected):
    if mode == "unthin":
        path = tmp_path / "input.npz"
        write_hostile_npz(path, "counts")
    else:
        path = tmp_path / "input.npy"
        np.save(path, np.ones((2, 8, 8)))
    before = digest(trained_run)
    result = run_tiny(trained_run, f"--mode={mode}", f"--input={path}")
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and f"{path}{expected}" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and digest(trained_run) == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("raise RuntimeError('broken config')\n", "cannot be loaded: RuntimeError: broken config"),
        ("def get_config():\n    return 42\n", "its get_config() returned int 42"),
    ],
    ids=["raises at import", "get_config returns 42"],
)
def test_a_config_file_that_gives_no_config_is_one_line_naming_it(tmp_path, content, expected):
    path = tmp_path / "mine.py"
    path.write_text(content)
    result = run_main(f"--config={path}", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and f"--config={path}: " in errors[0], result.stderr[-2000:]
    assert expected in errors[0] and "Traceback" not in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mine.py"]


def test_a_config_outside_the_repository_imports_the_shipped_ones_under_the_console_command(
    tmp_path,
):
    """The console command runs with neither the repository nor the working folder holding
    ``configs/``: here the package alone is importable (through a link), as an install makes it,
    and the command starts in a folder outside the repository."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "blackout_jax").symlink_to(REPO_ROOT / "blackout_jax")
    path = tmp_path / "mine.py"
    path.write_text(
        "from configs import tiny\n\n\ndef get_config():\n"
        "    config = tiny.get_config()\n    config.model.nf = 4\n    return config\n"
    )
    program = (
        f"import sys; sys.path.insert(0, {str(site)!r}); from blackout_jax.main import run; "
        f"sys.argv = ['blackout-jax', '--config={path}', '--mode=show_config']; run()"
    )
    environment = cpu_environment()
    environment.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model.nf = 4" in [line.split("  # ")[0] for line in result.stdout.splitlines()]
