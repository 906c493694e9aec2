"""The outputs of the inference commands: keyed and checked sample chunks, atomic writes, a
read-only run folder, a full disk, un-thinning without a survival array."""

from __future__ import annotations

import errno
import os
import pathlib

import numpy as np
import pytest

from blackout_jax.run import cli, folder, inference, trained
from blackout_jax.run import config as config_lib
from configs import tiny
from tests.cli import only_output
from tests.end_to_end.reliability import digest, error_lines, run_tiny

pytestmark = pytest.mark.slow


def _sample_chunks(workdir, **sampling) -> pathlib.Path:
    """The chunk folder that ``--mode=sample`` with these ``sampling`` fields (and ``seed``)
    keeps for the checkpoint of step 6: where an interrupted command leaves its chunks."""
    values = tiny.get_config()
    values.seed = sampling.pop("seed", 0)
    values.sampling.update(sampling)
    config = config_lib.parse(values)
    model = trained.TrainedModel(step=6, predict_for=None, max_count=16, image_shape=(8, 8, 1))
    draws = trained.sample_draws(config, model, config_lib.fixed_sampling_times(config))
    return folder.sample_chunks_dir(workdir, 6, draws)


def _warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_sample_chunks_are_keyed_by_the_seed_and_checked_before_reuse(run_copy):
    """Chunks of seed 0 (one marked, one holding -7.5 and NaN) are not taken by seed 1; seed 0
    takes the marked one, draws the bad one again, and both results stay side by side."""
    chunks = _sample_chunks(run_copy, num_samples=8)
    chunks.mkdir(parents=True)
    np.save(chunks / "chunk_00000.npy", np.full((4, 8, 8, 1), 3, np.int32))
    bad = np.zeros((4, 8, 8, 1))
    bad[0, 0, 0, 0], bad[1, 0, 0, 0] = -7.5, np.nan
    np.save(chunks / "chunk_00001.npy", bad)
    flags = ("--mode=sample", "--config.sampling.num_samples=8")

    result = run_tiny(run_copy, *flags, "--config.seed=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _warning_lines(result.stderr) == [] and "Traceback" not in result.stderr
    seed_one = only_output(run_copy / "samples", "samples_6")
    assert "_seed1_" in seed_one.name
    with np.load(seed_one) as archive:
        assert not (archive["samples"][:4] == 3).all()  # seed 0's chunk was not taken
        assert int(archive["seed"]) == 1
    kept = seed_one.read_bytes()

    result = run_tiny(run_copy, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = _warning_lines(result.stderr)
    assert len(warnings) == 1, result.stderr[-3000:]
    assert str(chunks / "chunk_00001.npy") in warnings[0] and "-7.5" in warnings[0]
    assert "Traceback" not in result.stderr
    seed_zero = next((run_copy / "samples").glob("samples_6_*_seed0_*.npz"))
    with np.load(seed_zero) as archive:
        samples = archive["samples"]
    assert (samples[:4] == 3).all()  # its own chunk, resumed
    assert samples.min() >= 0 and samples.max() <= 16
    assert seed_one.read_bytes() == kept  # the other result is not overwritten
    assert not chunks.exists()  # removed once the result is written


def test_disk_full_while_writing_samples_leaves_no_partial_file_and_resumes(run_copy, monkeypatch):
    values = tiny.get_config()
    values.sampling.num_samples = 8
    config, dataset, model = trained.open_trained_run(values, run_copy)

    def full_disk(file, **arrays):
        file.write(b"PK\x03\x04 the first bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError) as info:
        inference.sample_run(config, run_copy, dataset, model)
    line = cli.write_problem(info.value)
    assert len(line.splitlines()) == 1 and "the disk is full" in line, line
    assert f"{run_copy}/samples/samples_6_binomial_bridge_4steps_logit_seed0_" in line, line
    samples = run_copy / "samples"
    assert list(samples.glob("samples_6*")) == [] and list(samples.rglob("*.tmp")) == []
    assert len(list(_sample_chunks(run_copy, num_samples=8).glob("chunk_*.npy"))) == 2
    monkeypatch.undo()  # space freed: the same command finishes from the chunks it drew
    path = inference.sample_run(config, run_copy, dataset, model)
    with np.load(path) as archive:
        assert archive["samples"].shape == (8, 8, 8, 1)


def _make_read_only(top: pathlib.Path, writable: bool = False) -> None:
    for path in [top, *top.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o200 if writable else mode & ~0o222)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_one_line_naming_it(run_copy, tmp_path):
    thinned = tmp_path / "thinned.npz"
    np.savez(thinned, counts=np.ones((2, 8, 8), np.int32), survival=np.full(2, 0.5))
    before = digest(run_copy)
    _make_read_only(run_copy)
    try:
        for mode, where in (("sample", "samples"), ("unthin", "unthinned")):
            result = run_tiny(
                run_copy,
                f"--mode={mode}",
                f"--input={thinned}",
                "--config.sampling.num_posterior_samples=2",
            )
            assert result.returncode == 2, result.stderr[-3000:]
            errors = error_lines(result.stderr)
            assert len(errors) == 1 and str(run_copy / where) in errors[0], result.stderr
            assert "Traceback" not in result.stderr
    finally:
        _make_read_only(run_copy, writable=True)
    assert digest(run_copy) == before


def test_unthinning_without_survival_names_the_value_it_takes(run_copy, tmp_path):
    thinned = tmp_path / "thinned.npz"
    np.savez(thinned, counts=np.ones((2, 8, 8), np.int32))
    result = run_tiny(
        run_copy,
        "--mode=unthin",
        f"--input={thinned}",
        "--config.sampling.num_posterior_samples=2",
        "--config.sampling.survival=0.25",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = _warning_lines(result.stderr)
    assert len(warnings) == 1 and str(thinned) in warnings[0], result.stderr[-3000:]
    assert "survival q = 0.25, the config field sampling.survival" in warnings[0]
    with np.load(only_output(run_copy / "unthinned", "unthinned_6")) as archive:
        np.testing.assert_allclose(archive["survival"], [0.25, 0.25])
