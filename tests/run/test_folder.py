"""Tests of the run folder's layout (blackout_jax.run.folder)."""

from __future__ import annotations

import json

import numpy as np
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


def test_command_outputs_are_named_by_mode_step_and_draws(tmp_path):
    draws = folder.draws_name(
        method="tau_leaping", num_steps=20, grid="optimised", seed=1, settings={"start": "prior"}
    )
    assert draws.startswith("tau_leaping_20steps_optimised_seed1_") and len(draws) == 44
    assert folder.command_output(tmp_path, "sample", 3, draws) == (
        tmp_path / "samples" / f"samples_3_{draws}.npz"
    )
    assert (
        folder.sample_chunks_dir(tmp_path, 3, draws) == tmp_path / "samples" / f"chunks_3_{draws}"
    )
    assert folder.command_output(tmp_path, "evaluate", 3) == tmp_path / "eval" / "metrics_3.json"
    assert folder.grid_image(tmp_path, 5) == tmp_path / "samples" / "grid_5.png"
    with pytest.raises(ValueError, match="--mode=unthin"):
        folder.command_output(tmp_path, "unthin", 3)
    unthinned = folder.draws_name(method="m", num_steps=5, grid=None, seed=0, settings={})
    assert unthinned.startswith("m_5steps_seed0_")


def test_the_digest_of_draws_covers_every_setting_and_array():
    base = {"times": np.linspace(0, 1, 5, dtype=np.float32), "start": "prior", "labels": None}
    digest = folder.settings_digest(base)
    assert digest == folder.settings_digest(dict(reversed(base.items())))  # order-free
    assert len(digest) == 8 and int(digest, 16) >= 0
    changed = [
        {**base, "times": base["times"] * 0.5},
        {**base, "times": base["times"].astype(np.float64)},
        {**base, "start": "zeros"},
        {**base, "labels": np.zeros(4, np.int32)},
        {**base, "chunk_size": 4},
    ]
    assert len({digest, *(folder.settings_digest(c) for c in changed)}) == 1 + len(changed)


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


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"[1, 2, 3]", "holds JSON a list, not an object"),
        (b"42", "holds JSON a number, not an object"),
        (b"null", "holds JSON null, not an object"),
        (bytes(range(256)), "cannot be read ('utf-8' codec"),
        (b'{"model": ', "cannot be read (Expecting value"),
    ],
    ids=["list", "number", "null", "binary junk", "invalid JSON"],
)
def test_a_stored_config_that_is_not_an_object_is_one_line_naming_it(tmp_path, content, expected):
    path = tmp_path / folder.CONFIG_FILE
    path.write_bytes(content)
    (tmp_path / folder.CHECKPOINTS_DIR).mkdir()
    config = config_lib.parse(config_lib.default_dict())
    for read in (
        lambda: folder.read_stored_config(tmp_path),
        lambda: folder.with_stored_config(config_lib.default_dict(), tmp_path),
        lambda: folder.check_resumable(config, str(tmp_path)),
    ):
        with pytest.raises(ValueError) as info:
            read()
        message = str(info.value)
        assert str(path) in message and expected in message and "\n" not in message
    assert path.read_bytes() == content


def test_layout_problem_names_a_part_of_the_wrong_kind(tmp_path):
    assert folder.layout_problem(tmp_path) is None
    for name in folder.FOLDERS:
        (tmp_path / name).mkdir()
    for name in folder.FILES:
        (tmp_path / name).write_text("x")
    assert folder.layout_problem(tmp_path) is None
    for name in folder.FILES:
        (tmp_path / name).unlink()
    for name in ("checkpoints", "samples", "eval", "grids", "imputed", "unthinned", "tensorboard"):
        (tmp_path / name).rmdir()
        (tmp_path / name).write_text("x")
        problem = folder.layout_problem(tmp_path)
        assert problem == (
            f"{tmp_path / name} is a file, but the run folder keeps a folder of that name; "
            "move the file aside or use another --workdir"
        )
        (tmp_path / name).unlink()
        (tmp_path / name).mkdir()
    for name in folder.FILES:
        (tmp_path / name).mkdir()
        assert f"{tmp_path / name} is a folder, but the run folder keeps a file" in (
            folder.layout_problem(tmp_path)
        )
        (tmp_path / name).rmdir()
