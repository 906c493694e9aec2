"""Tests of the run folder's layout (blackout_jax.run.folder)."""

from __future__ import annotations

import json

import pytest

from blackout_jax.run import config as config_lib
from blackout_jax.run import folder


def test_grids_after_the_restart_step_are_removed(tmp_path):
    samples = tmp_path / folder.SAMPLES_DIR
    samples.mkdir()
    for name in ("grid_3.png", "grid_6.png", "grid_9.png", "samples_9.png", "grid_x.png"):
        (samples / name).write_bytes(b"png")
    folder.remove_later_grids(tmp_path, 6)
    assert sorted(p.name for p in samples.iterdir()) == [
        "grid_3.png",
        "grid_6.png",
        "grid_x.png",
        "samples_9.png",
    ]


def test_command_outputs_are_named_by_mode_and_step(tmp_path):
    assert folder.command_output(tmp_path, "sample", 3) == tmp_path / "samples" / "samples_3.npz"
    assert folder.command_output(tmp_path, "evaluate", 3) == tmp_path / "eval" / "metrics_3.json"
    assert folder.grid_image(tmp_path, 5) == tmp_path / "samples" / "grid_5.png"


def test_stored_config_overrides_all_but_the_inference_fields(tmp_path, capsys):
    stored = config_lib.default_dict()
    stored["model"]["nf"] = 8
    stored["sampling"]["num_steps"] = 7
    (tmp_path / folder.CONFIG_FILE).write_text(json.dumps(stored))
    values = config_lib.default_dict()
    values["sampling"]["num_steps"] = 5
    merged = folder.with_stored_config(values, tmp_path)
    assert merged["model"]["nf"] == 8 and merged["sampling"]["num_steps"] == 5
    assert "model.nf = 8 (command line: 32)" in capsys.readouterr().err
    assert folder.with_stored_config(values, tmp_path / "none") == values


def test_an_unreadable_stored_config_is_named(tmp_path):
    (tmp_path / folder.CONFIG_FILE).write_text("{")
    assert folder.read_stored_config(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="config.json cannot be read"):
        folder.read_stored_config(tmp_path)
