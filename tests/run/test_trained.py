"""Tests of blackout_jax.run.trained that need no trained network: the names of the samples a
trained run draws (sample_draws) and the stored optimised grid."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from blackout_jax import schedule
from blackout_jax.run import config as config_lib
from blackout_jax.run import folder, grid_files, trained
from configs import digits_conditional, tiny

TINY = config_lib.parse(tiny.get_config())
MODEL = trained.TrainedModel(step=6, predict_for=None, max_count=16, image_shape=(8, 8, 1))


def _draws(base=tiny.get_config, model=MODEL, times=None, **fields):
    values = base()
    for name, value in fields.items():
        section, field = name.split("__") if "__" in name else (None, name)
        (values if section is None else values[section])[field] = value
    config = config_lib.parse(values)
    grid = config_lib.fixed_sampling_times(config) if times is None else times
    return trained.sample_draws(config, model, grid)


def test_the_name_of_the_draws_changes_with_everything_that_changes_them():
    base = _draws()
    assert base.startswith("binomial_bridge_4steps_logit_seed0_")
    assert base == _draws()  # the same settings, the same name (a rerun resumes its chunks)
    changed = {
        "seed": _draws(seed=1),
        "method": _draws(sampling__method="tau_leaping"),
        "steps": _draws(sampling__num_steps=5),
        "grid": _draws(sampling__grid="subgrid"),
        "times": _draws(times=config_lib.fixed_sampling_times(TINY) * 0.5),
        "start": _draws(sampling__start="zeros"),
        "dropout": _draws(sampling__dropout=True),
        "chunk size": _draws(sampling__batch_size=2),
        "number": _draws(sampling__num_samples=8),
        "max_count": _draws(model=dataclasses.replace(MODEL, max_count=17)),
    }
    assert changed["seed"].startswith("binomial_bridge_4steps_logit_seed1_")
    assert len({base, *changed.values()}) == 1 + len(changed), changed


def test_a_conditional_model_names_its_labels_and_guidance():
    base = _draws(digits_conditional.get_config)
    assert _draws(digits_conditional.get_config, sampling__guidance_scale=1.5) != base
    assert _draws(digits_conditional.get_config, sampling__labels="3") != base


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
