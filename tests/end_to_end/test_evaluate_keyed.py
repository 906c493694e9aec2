"""Evaluations with other settings are kept side by side; the plain file is the latest."""

from __future__ import annotations

import json

import pytest

from tests.cli import run_main

pytestmark = pytest.mark.slow


def _evaluate(workdir, num_steps):
    return run_main(
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        "--mode=evaluate",
        "--config.sampling.num_samples=4",
        f"--config.sampling.num_steps={num_steps}",
        "--config.eval.num_time_samples=1",
    )


def test_two_evaluations_with_other_samplers_leave_two_files_and_the_latest(run_copy):
    results = {}
    for num_steps in (3, 4):
        result = _evaluate(run_copy, num_steps)
        assert result.returncode == 0, result.stderr[-2000:]
        results[num_steps] = json.loads(_keyed(run_copy, num_steps).read_text())
    keyed = sorted(p.name for p in (run_copy / "eval").glob("metrics_6_*.json"))
    assert len(keyed) == 2, keyed
    assert keyed[0].startswith("metrics_6_binomial_bridge_3steps_logit_seed0_")
    assert keyed[1].startswith("metrics_6_binomial_bridge_4steps_logit_seed0_")
    assert results[3]["sampler"]["num_steps"] == 3 and results[4]["sampler"]["num_steps"] == 4
    latest = (run_copy / "eval" / "metrics_6.json").read_text()
    assert json.loads(latest) == results[4]
    assert latest == _keyed(run_copy, 4).read_text()


def _keyed(workdir, num_steps):
    (path,) = (workdir / "eval").glob(f"metrics_6_binomial_bridge_{num_steps}steps_*.json")
    return path
