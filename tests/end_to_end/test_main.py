"""Tests of the command line: usage errors exit 2 in one line naming the cause and write nothing;
``--help``, ``--mode=show_config`` and the ``blackout-jax`` console command."""

from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys

import pytest

from blackout_jax.run import config as config_lib
from blackout_jax.run import folder
from configs import tiny
from tests.cli import REPO_ROOT, cpu_environment
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


def _files_under(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _assert_one_error_line(result, *names):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for name in names:
        assert name in lines[0]


def test_an_empty_npy_file_is_one_line_naming_it(tmp_path):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    workdir = tmp_path / "run"
    result = _main(
        "--config=configs/counts.py", f"--workdir={workdir}", f"--config.data.path={empty}"
    )
    _assert_one_error_line(result, str(empty), "empty (0 bytes)")
    assert _files_under(tmp_path) == ["empty.npy"]


@pytest.mark.parametrize(
    ("arguments", "names"),
    [
        (["--config=configs/tiny.py", "--config.training.foo=1"], ["training.foo", "batch_size"]),
        (["--config=configs/tiny.py", "--config.trainin.num_steps=1"], ["'trainin'", "training"]),
        (["--config=configs/tiny.py", "--config.model.ch_mult.x=1"], ["model.ch_mult.x"]),
        (["--config=configs/nope.py"], ["configs/nope.py", "no such file"]),
        (["--config=configs/nope.py", "--config.training.num_steps=1"], ["configs/nope.py"]),
        (["--config=configs/tiny.py", "--mode=bogus"], ["--mode=bogus"]),
        (["--config=configs/tiny.py", "--config.training.num_steps=abc"], ["num_steps=abc"]),
        (["--mode=train"], ["--config is required"]),
    ],
)
def test_flag_and_config_file_errors_are_one_line(tmp_path, arguments, names):
    workdir = tmp_path / "run"
    result = _main(f"--workdir={workdir}", *arguments)
    _assert_one_error_line(result, *names)
    assert _files_under(tmp_path) == []


def test_a_workdir_below_a_file_is_one_line_naming_the_file(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("kept\n")
    for workdir, message in ((blocker / "run", "is a file"), (blocker, "is a file, not a folder")):
        result = _main("--config=configs/tiny.py", f"--workdir={workdir}")
        _assert_one_error_line(result, str(blocker), message)
        assert blocker.read_text() == "kept\n"
        assert _files_under(tmp_path) == ["notes.txt"]


def _config_summaries():
    summaries = {}
    for path in sorted((REPO_ROOT / "configs").glob("[!_]*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        summaries[f"configs/{path.name}"] = docstring.splitlines()[0].replace("``", "")
    return summaries


@pytest.mark.parametrize("flag", ["--help", "--helpfull"])
def test_help_is_plain_text_listing_every_config_and_exits_0(flag):
    result = _main(flag)
    assert result.returncode == 0, result.stderr
    assert "``" not in result.stdout
    assert ":mod:" not in result.stdout
    lines = result.stdout.splitlines()
    for path, summary in _config_summaries().items():
        listed = [line.split() for line in lines if line.split()[:1] == [path]]
        assert listed == [[path, *summary.split()]]
    for mode in ("train", "sample", "evaluate", "impute", "unthin", "show_config"):
        assert any(line.split()[:1] == [mode] for line in lines), mode
    config_help = next(line for line in lines if line.strip().startswith("--config:"))
    assert "None" not in config_help and "configs/digits.py" in config_help
    assert ("--verbosity" in result.stdout) == (flag == "--helpfull")  # absl's own flags


def test_show_config_prints_every_field_after_the_overrides():
    result = _main("--config=configs/tiny.py", "--mode=show_config", "--config.model.nf=16")
    assert result.returncode == 0, result.stderr
    config = tiny.get_config()
    config.model.nf = 16
    typed = config_lib.parse(config)
    expected = [f"{name} = {value!r}" for name, value in folder.flatten(typed.to_dict()).items()]
    lines = result.stdout.splitlines()
    assert [line.split("  # ")[0] for line in lines] == expected
    assert all("  # " in line for line in lines)  # each field with its meaning
    assert "model.nf = 16" in [line.split("  # ")[0] for line in lines]


def test_the_console_command_named_in_setup_cfg_runs_main():
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    scripts = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    assert [line.split("=")[0].strip() for line in scripts] == ["blackout-jax"]
    module, function = scripts[0].split("=")[1].strip().split(":")
    program = (
        f"import sys; from {module} import {function}; sys.argv[1:] = ['--help']; {function}()"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO_ROOT,
        env=cpu_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("blackout-jax: ")
    installed = shutil.which("blackout-jax", path=os.path.dirname(sys.executable))
    if installed:  # an install of this checkout (CI's) also has the script itself
        result = subprocess.run(
            [installed, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("blackout-jax: ")
