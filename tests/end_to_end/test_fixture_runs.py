"""Run folders made by an earlier release keep working, with the same figures.

``fixtures/tiny_run`` and ``fixtures/tiny_conditional_run`` beside this file were written by
the training command of the release before the run layer's renovation (``configs/tiny.py`` with
``--config.training.num_steps=3``; the conditional one with ``--config.model.num_classes=10
--config.training.label_dropout=0.1``), less their TensorBoard files, loss curve, sample grids
and lock. Each test works on a copy. The pinned figures are what that release wrote from
these folders: the samples' SHA-256 and the held-out bound must stay bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import numpy as np
import pytest

from tests.cli import only_output, run_main

pytestmark = pytest.mark.slow

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
BOUND_AT_6 = 14.424293518066406  # the bound of the uninterrupted 6-step run
CONDITIONAL = ("--config.model.num_classes=10", "--config.training.label_dropout=0.1")


def _copy(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    workdir = tmp_path / name
    shutil.copytree(FIXTURES / name, workdir)
    return workdir


def _run(workdir: pathlib.Path, *arguments: str) -> None:
    result = run_main("--config=configs/tiny.py", f"--workdir={workdir}", *arguments)
    assert result.returncode == 0, result.stderr[-3000:]


def _samples_digest(path: pathlib.Path) -> str:
    samples = np.load(path)["samples"]
    assert samples.dtype == np.int32
    return hashlib.sha256(samples.tobytes()).hexdigest()


def test_unconditional_run_samples_and_bound_are_unchanged(tmp_path):
    workdir = _copy("tiny_run", tmp_path)
    _run(workdir, "--mode=sample")
    assert _samples_digest(only_output(workdir / "samples", "samples_3")) == (
        "962c608143dd0ace5bad1613b77010f70e834ef9ed50443772e53b3811a484b3"
    )
    _run(workdir, "--mode=evaluate")
    metrics = json.loads((workdir / "eval" / "metrics_3.json").read_text())
    assert metrics["bits_per_dim"] == 17.10691261291504
    assert metrics["num_test_examples"] == 297


def test_conditional_run_samples_and_bounds_are_unchanged(tmp_path):
    workdir = _copy("tiny_conditional_run", tmp_path)
    sampling = ("--config.sampling.num_samples=10", "--config.sampling.batch_size=4")
    _run(workdir, "--mode=sample", *CONDITIONAL, *sampling, "--config.sampling.guidance_scale=1.5")
    stored = np.load(only_output(workdir / "samples", "samples_3"))
    np.testing.assert_array_equal(stored["labels"], np.arange(10))
    assert _samples_digest(only_output(workdir / "samples", "samples_3")) == (
        "2dcd8305670d18cbe232ad15bb3abfede4855799edde9c46531f696d22004433"
    )
    _run(workdir, "--mode=evaluate", *CONDITIONAL)
    metrics = json.loads((workdir / "eval" / "metrics_3.json").read_text())
    assert metrics["bits_per_dim"] == 17.10797119140625
    assert metrics["conditional_bits_per_dim"] == 17.107519149780273


def test_earlier_run_resumes_to_the_configured_step(tmp_path):
    workdir = _copy("tiny_run", tmp_path)
    _run(workdir)  # configs/tiny.py trains 6 steps; the fixture stopped at 3
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6"]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [row["step"] for row in rows if row["split"] == "train"]
    assert train_steps == [2, 3, 4, 6]
    held_out = [row["bits_per_dim"] for row in rows if row["split"] == "eval"]
    assert held_out == [14.648974418640137, BOUND_AT_6]
