"""Tests of blackout_jax.run.trained that need no trained network: the stored optimised grid."""

from __future__ import annotations

import types

import numpy as np
import pytest

from blackout_jax import schedule
from blackout_jax.run import config as config_lib
from blackout_jax.run import folder, grid_files, trained


def _optimised_config():
    values = config_lib.default_dict()
    values["sampling"] |= {"grid": config_lib.OPTIMISED_GRID, "num_steps": 4}
    return config_lib.parse(values)


def test_a_stored_optimised_grid_of_this_checkpoint_is_read_without_fitting(tmp_path):
    config = _optimised_config()
    model = types.SimpleNamespace(step=3)  # nothing else is touched when the grid is stored
    path = folder.optimised_grid_file(tmp_path, 3, 4)
    path.parent.mkdir()
    stored = np.asarray(schedule.observation_times(4, config.diffusion.t_end))
    grid_files.save_grid(path, stored)
    times = trained.model_sampling_times(config, tmp_path, model, dataset=None)
    np.testing.assert_array_equal(np.asarray(times), stored)


def test_a_folder_where_the_grid_file_goes_is_one_line_before_any_fitting(tmp_path):
    path = folder.optimised_grid_file(tmp_path, 3, 4)
    path.mkdir(parents=True)
    model = types.SimpleNamespace(step=3)
    with pytest.raises(ValueError, match=f"{path} is a folder where the fitted grid is kept"):
        trained.model_sampling_times(_optimised_config(), tmp_path, model, dataset=None)
    assert path.is_dir() and not any(path.iterdir())
