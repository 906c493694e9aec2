"""Fixtures of the end-to-end tests: a trained tiny run and a copy of it per test."""

from __future__ import annotations

import shutil

import pytest

from blackout_jax.run import config as config_lib
from blackout_jax.run import train
from configs import tiny


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A 6-step run of configs/tiny.py with checkpoints at steps 3 and 6."""
    workdir = tmp_path_factory.mktemp("base") / "run"
    train.train_and_evaluate(config_lib.parse(tiny.get_config()), workdir)
    return workdir


@pytest.fixture
def run_copy(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy
