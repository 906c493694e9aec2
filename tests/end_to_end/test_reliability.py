"""Damaged, mismatched or shared run folders, a full disk and signals, met where a user meets
them.

Each case asserts the exit status, a single-line message naming the thing, and that nothing the
user had is lost or overwritten (checkpoint bytes unchanged, metrics rows unique).
"""

from __future__ import annotations

import errno
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from blackout_jax.run import config as config_lib
from blackout_jax.run import reporting, safety, train
from blackout_jax.run.lock import RunFolderLock
from configs import tiny
from tests.cli import REPO_ROOT, cpu_environment, only_output, run_main
from tests.end_to_end.reliability import NO_GRID, digest, error_lines, run_tiny, train_rows

pytestmark = pytest.mark.slow


def _truncate_array_files(step_dir: pathlib.Path) -> None:
    """Cuts every OCDBT data file of the state in half.

    Not one file alone: a restore does not read every data file of a save (in one tiny-config
    checkpoint, 4 of the 7 restored without error when halved singly), and which one is
    largest varies from save to save.
    """
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty_folder(folder: pathlib.Path) -> None:
    for path in folder.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


DAMAGES = {
    "truncated array files": _truncate_array_files,
    "emptied data_iterator JSON": lambda d: (d / "data_iterator" / "metadata").write_text(""),
    "deleted manifest": lambda d: [p.unlink() for p in (d / "state").rglob("manifest.ocdbt")],
    "state folder missing": lambda d: shutil.rmtree(d / "state"),
    "empty step folder": _empty_folder,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_training_falls_back_to_the_newest_checkpoint_that_restores(run_copy, damage):
    DAMAGES[damage](run_copy / "checkpoints" / "6")
    result = run_tiny(run_copy, "--config.training.num_steps=8", NO_GRID)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "checkpoint 6" in warnings[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert (run_copy / "checkpoints" / "6.damaged").is_dir()  # set aside, never deleted
    assert "resumed from the checkpoint of step 3" in result.stdout
    assert train_rows(run_copy) == [2, 4, 6, 8]


def test_inference_reads_only_what_it_needs_and_falls_back_without_moving(run_copy):
    DAMAGES["emptied data_iterator JSON"](run_copy / "checkpoints" / "6")  # not needed to sample
    before = digest(run_copy / "checkpoints")
    result = run_tiny(run_copy, "--mode=sample")
    assert result.returncode == 0, result.stderr[-3000:]
    assert only_output(run_copy / "samples", "samples_6").exists()
    DAMAGES["state folder missing"](run_copy / "checkpoints" / "6")
    before = digest(run_copy / "checkpoints")
    result = run_tiny(run_copy, "--mode=sample")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint 6" in result.stderr and only_output(run_copy / "samples", "samples_3")
    assert digest(run_copy / "checkpoints") == before  # inference only reads


def test_no_checkpoint_restores_is_one_line_naming_the_folder(run_copy):
    for step in ("3", "6"):
        DAMAGES["state folder missing"](run_copy / "checkpoints" / step)
    result = run_tiny(run_copy, "--config.training.num_steps=8")
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and str(run_copy / "checkpoints") in errors[0]
    assert "Traceback" not in result.stderr


def test_resuming_with_another_network_names_the_changed_fields(run_copy):
    before = digest(run_copy)
    result = run_tiny(run_copy, "--config.model.nf=16", "--config.seed=1")
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-2000:]
    assert "model.nf: 8 -> 16" in errors[0] and "seed: 0 -> 1" in errors[0]
    assert "new --workdir" in errors[0] and "Traceback" not in result.stderr
    assert digest(run_copy) == before


def test_a_second_trainer_stops_at_once_naming_the_holder(run_copy):
    before = digest(run_copy)
    with RunFolderLock(run_copy):
        result = run_tiny(run_copy, "--config.training.num_steps=8")
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "is being trained by pid" in errors[0]
    after = digest(run_copy)
    after.pop(".lock", None)
    before.pop(".lock", None)
    assert after == before


def test_a_lock_left_by_a_dead_trainer_does_not_block(run_copy):
    (run_copy / ".lock").write_text("pid 999999 on elsewhere (since long ago)")
    result = run_tiny(run_copy, "--config.training.num_steps=8", NO_GRID)
    assert result.returncode == 0, result.stderr[-3000:]
    assert train_rows(run_copy) == [2, 4, 6, 8]
    assert (  # the split and the max count, said at the start of training
        "data: 1500 training and 297 held-out examples (data.num_test, 17% held out); max count "
        "16 (fixed by digits)"
    ) in result.stdout.splitlines()


def test_more_than_half_held_out_is_refused_naming_the_field_and_counts(tmp_path):
    path = tmp_path / "counts.npz"
    np.savez(path, counts=np.ones((20, 8, 8, 1), np.int32))
    result = run_main(
        "--config=configs/counts.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.path={path}",
        "--config.data.num_test=12",
    )
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "data.num_test = 12 holds out 60% of the 20 examples" in errors[0], errors
    assert "leaving 8 for training" in errors[0] and "data.allow_large_test_share" in errors[0]
    assert not (tmp_path / "run").exists()


def test_disk_full_is_one_message_naming_the_file_and_the_last_checkpoint(tmp_path, monkeypatch):
    config = tiny.get_config()
    config.training.num_steps = 8
    original_init = reporting.MetricsWriter.__init__

    class FullAfterStep4:
        """The metrics file's handle on a disk that fills up after the row of step 4."""

        def __init__(self, file):
            self.file = file

        def write(self, text):
            if json.loads(text)["step"] > 4:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(text)

        def __getattr__(self, name):
            return getattr(self.file, name)

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._file = FullAfterStep4(self._file)

    monkeypatch.setattr(reporting.MetricsWriter, "__init__", init)
    with pytest.raises(safety.DiskFullError) as info:
        train.train_and_evaluate(config_lib.parse(config), tmp_path / "run")
    message = str(info.value)
    assert "metrics.jsonl" in message and "step 3 in" in message
    assert len(message.splitlines()) == 1
    leftovers = [p for p in (tmp_path / "run").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [] and (tmp_path / "run" / "checkpoints" / "3").is_dir()


def test_disk_full_inside_a_checkpoint_save_is_one_message_and_leaves_no_partial_folder(
    tmp_path, monkeypatch, caplog
):
    """The checkpoint of step 6 meets a full disk in orbax's background save of a JSON item."""
    config = tiny.get_config()
    config.training.num_steps = 6
    handler = ocp.handlers.JsonCheckpointHandler
    original_save = handler._save_fn
    metadata_saves = []

    async def save(self, item, directory):
        if directory.name.split(".")[0] == "metadata":  # metadata.orbax-checkpoint-tmp
            metadata_saves.append(directory)
            if len(metadata_saves) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))
        return await original_save(self, item, directory)

    monkeypatch.setattr(handler, "_save_fn", save)
    with pytest.raises(safety.DiskFullError) as info:
        train.train_and_evaluate(config_lib.parse(config), tmp_path / "run")
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "step 3 in" in message, message
    assert "metadata.orbax-checkpoint-tmp/metadata" in message, message
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []  # no orbax tracebacks
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["3"]  # no half-written folder
    monkeypatch.undo()  # space freed: the same command resumes from step 3
    assert train.train_and_evaluate(config_lib.parse(config), tmp_path / "run").step == 6
    assert train_rows(tmp_path / "run") == [2, 4, 6]


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        (
            {"counts": np.zeros((5, 8, 8)), "mask": np.ones((4, 8, 8), bool)},
            "'counts' has 5 examples but 'mask' has 4",
        ),
        (
            {"counts": np.zeros((5, 8, 8)), "mask": np.full((5, 8, 8), 2)},
            "['mask'][0, 0, 0, 0] = 2",
        ),
        (
            {
                "counts": np.concatenate([np.zeros((4, 8, 8)), np.full((1, 8, 8), 40.0)]),
                "mask": np.ones((5, 8, 8), bool),
            },
            "['counts'][4, 0, 0, 0] = 40",
        ),
        (
            {"counts": np.array([None] * 5, dtype=object), "mask": np.ones((5, 8, 8), bool)},
            "['counts'] cannot be read",
        ),
    ],
)
def test_imputation_input_is_checked_whole_before_any_work(trained_run, tmp_path, arrays, expected):
    path = _write_npz(tmp_path / "input.npz", **arrays)
    result = run_tiny(
        trained_run, "--mode=impute", f"--input={path}", "--config.sampling.batch_size=4"
    )
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and expected in errors[0] and str(path) in errors[0], result.stderr
    assert not (trained_run / "imputed").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_before_the_first_step_exits_at_once_with_one_line(tmp_path, signum):
    """While nothing is new since the last checkpoint (start-up, data loading, the first
    compilation) a signal ends the process within moments, even inside the compilation, with
    one line and status 128 + the signal's number; nothing is written to the checkpoints."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "blackout_jax.main",
            "--config=configs/tiny.py",
            f"--workdir={tmp_path / 'run'}",
        ],
        cwd=REPO_ROOT,
        env=cpu_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:  # the first compilation has begun
        if line.startswith("compiling the training step"):
            break
    time.sleep(1.0)
    signalled = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    waited = time.monotonic() - signalled
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert waited < 10, waited  # not at the end of the compilation
    name = signal.Signals(signum).name
    lines = [line for line in stderr.splitlines() if name in line]
    assert lines == [f"{name} received: stopped at once, with nothing unsaved"], stderr[-2000:]
    assert "Traceback" not in stderr
    assert not list((tmp_path / "run" / "checkpoints").glob("[0-9]*"))


def _checkpoint_names(workdir) -> list[str]:
    return sorted(path.name for path in (workdir / "checkpoints").iterdir())


def test_another_network_without_config_json_is_a_mismatch_named_in_the_checkpoint(run_copy):
    """The config stored in the checkpoint is the authority when config.json is missing; an
    intact checkpoint is never set aside because the command differs."""
    (run_copy / "config.json").unlink()
    before = digest(run_copy / "checkpoints")
    result = run_tiny(run_copy, "--config.model.nf=16")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "model.nf: 8 -> 16" in errors[0], result.stderr
    assert "checkpoint 6" in errors[0]
    assert digest(run_copy / "checkpoints") == before
    again = run_tiny(run_copy)  # the original command: nothing was lost
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already reached step 6" in again.stdout
    assert _checkpoint_names(run_copy) == ["3", "6"]
    assert json.loads((run_copy / "config.json").read_text())["model"]["nf"] == 8


def _counts_file(path, num_examples):
    counts = np.random.default_rng(0).integers(0, 17, (num_examples, 8, 8, 1))
    np.save(path, counts.astype(np.int32))
    return path


def test_own_data_with_more_examples_is_a_mismatch_and_the_original_data_resumes(tmp_path):
    workdir = tmp_path / "run"
    own_data = (
        "--config.data.name=counts",
        "--config.data.max_count=16",
        "--config.data.num_test=16",
        "--config.training.num_steps=3",
        "--config.training.eval_every=3",
        NO_GRID,
    )
    first = run_tiny(
        workdir, *own_data, f"--config.data.path={_counts_file(tmp_path / 'a.npy', 300)}"
    )
    assert first.returncode == 0, first.stderr[-2000:]
    before = digest(workdir / "checkpoints")
    larger = _counts_file(tmp_path / "b.npy", 330)
    result = run_tiny(
        workdir, *own_data, f"--config.data.path={larger}", "--config.training.num_steps=6"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "num_train: 284 -> 314" in errors[0], result.stderr
    assert digest(workdir / "checkpoints") == before
    resumed = run_tiny(
        workdir,
        *own_data,
        f"--config.data.path={tmp_path / 'a.npy'}",
        "--config.training.num_steps=6",
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from the checkpoint of step 3" in resumed.stdout
    assert _checkpoint_names(workdir) == ["3", "6"]


def test_arrays_corrupted_on_disk_are_detected_and_training_falls_back(run_copy, trained_run):
    """A flipped bit in the newest checkpoint's largest array file decodes without error (the
    compressed frames stay valid); the digests saved with it catch it."""
    data_files = sorted(
        (run_copy / "checkpoints" / "6" / "state").rglob("d/*"), key=lambda p: p.stat().st_size
    )
    content = bytearray(data_files[-1].read_bytes())
    content[len(content) // 2] ^= 0x10
    data_files[-1].write_bytes(bytes(content))
    result = run_tiny(run_copy, "--config.training.num_steps=6", NO_GRID)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "checkpoint 6" in warnings[0], result.stderr
    assert "does not match the digest" in warnings[0] or "does not restore" in warnings[0]
    assert _checkpoint_names(run_copy) == ["3", "6", "6.damaged"]
    rows = reporting.read_metrics(run_copy / reporting.METRICS_FILE)
    final = [row["bits_per_dim"] for row in rows if row["split"] == "eval" and row["step"] == 6]
    assert np.isfinite(final[-1])
    original = reporting.read_metrics(trained_run / reporting.METRICS_FILE)
    assert final[-1] == [r for r in original if r["split"] == "eval"][-1]["bits_per_dim"]
