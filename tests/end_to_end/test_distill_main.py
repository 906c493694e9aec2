"""--mode=distill and --mode=sample --config.sampling.student_calls through the command line, on
the tiny run of conftest.py: the student is trained, resumed, and samples into the usual npz."""

from __future__ import annotations

import json

import numpy as np

from tests.cli import only_output, run_main

_SMALL = (
    "--config.distill.num_trajectories=8",
    "--config.distill.teacher_steps=4",
    "--config.distill.teacher_method=binomial_bridge",
    "--config.distill.num_components=3",
    "--config.distill.hidden=16",
    "--config.distill.batch_size=4",
    "--config.distill.log_every=2",
    "--config.distill.checkpoint_every=2",
    "--config.distill.grid=logit",
    "--config.sampling.batch_size=4",
)


def test_distill_trains_resumes_and_samples(run_copy):
    workdir = f"--workdir={run_copy}"
    first = run_main(
        "--config=configs/tiny.py",
        workdir,
        "--mode=distill",
        "--config.distill.num_calls=2",
        "--config.distill.num_steps=2",
        *_SMALL,
    )
    assert first.returncode == 0, first.stderr
    student = run_copy / "students" / "2calls"
    with np.load(student / "teacher_states.npz") as stored:
        assert stored["states"].shape == (3, 8, 8, 8, 1)
        assert np.all(np.diff(stored["states"].astype(int), axis=0) <= 0)
    assert sorted(p.name for p in (student / "checkpoints").iterdir()) == ["2"]

    resumed = run_main(
        "--config=configs/tiny.py",
        workdir,
        "--mode=distill",
        "--config.distill.num_calls=2",
        "--config.distill.num_steps=4",
        *_SMALL,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the 2-call student at step 2" in resumed.stdout
    rows = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4]
    assert all(np.isfinite(row["loss"]) for row in rows)

    sampled = run_main(
        "--config=configs/tiny.py", workdir, "--mode=sample", "--config.sampling.student_calls=2"
    )
    assert sampled.returncode == 0, sampled.stderr
    path = only_output(run_copy / "samples", "samples")
    assert "student_2steps" in path.name
    with np.load(path) as result:
        samples = result["samples"]
        assert str(result["method"]) == "student"
        assert int(result["student_step"]) == 4
        assert len(result["grid"]) == 3
    assert samples.shape == (4, 8, 8, 1)
    assert samples.min() >= 0 and samples.max() <= 16


def test_sampling_with_a_missing_student_names_the_command(run_copy):
    result = run_main(
        "--config=configs/tiny.py",
        f"--workdir={run_copy}",
        "--mode=sample",
        "--config.sampling.student_calls=3",
    )
    assert result.returncode == 2
    assert "--mode=distill" in result.stderr
    assert "num_calls=3" in result.stderr
