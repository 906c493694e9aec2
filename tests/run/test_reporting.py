"""Tests of blackout_jax.run.reporting: metrics.jsonl, TensorBoard files, PNGs."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from blackout_jax.run import reporting


def _steps(rows: list[dict]) -> list[tuple[int, str]]:
    return [(row["step"], row["split"]) for row in rows]


def test_metrics_writer_appends_rows_and_tensorboard_events(tmp_path):
    writer = reporting.MetricsWriter(tmp_path)
    writer.write(10, {"loss": np.float32(1.5), "grad_norm": 0.25})
    writer.write(10, {"bits_per_dim": 2.0}, split="eval")
    writer.close()
    rows = reporting.read_metrics(tmp_path / reporting.METRICS_FILE)
    assert rows == [
        {"step": 10, "split": "train", "loss": 1.5, "grad_norm": 0.25},
        {"step": 10, "split": "eval", "bits_per_dim": 2.0},
    ]
    events = os.listdir(tmp_path / reporting.TENSORBOARD_DIR)
    assert any(name.startswith("events.out.tfevents") for name in events)


def test_metrics_writer_on_resume_drops_rows_after_the_restored_step(tmp_path):
    writer = reporting.MetricsWriter(tmp_path, tensorboard=False)
    for step in (10, 20, 30, 40):
        writer.write(step, {"loss": float(step)})
    writer.close()
    path = tmp_path / reporting.METRICS_FILE
    with open(path, "a", encoding="utf-8") as file:
        file.write('{"step": 50, "split": "tra')  # a line cut short by SIGKILL

    resumed = reporting.MetricsWriter(tmp_path, resume_step=20, tensorboard=False)
    resumed.write(30, {"loss": 3.0})
    resumed.close()
    rows = reporting.read_metrics(path)
    assert _steps(rows) == [(10, "train"), (20, "train"), (30, "train")]
    assert rows[-1]["loss"] == 3.0
    assert path.read_text(encoding="utf-8").endswith("\n")


@pytest.mark.parametrize(
    "line",
    [b"[1, 2]", b'{"step": null}', b'{"step": "3"}', b'{"step": true}', b"7", bytes(range(256))],
    ids=["list", "null step", "text step", "boolean step", "number", "binary junk"],
)
def test_lines_that_are_not_rows_are_skipped_and_resuming_goes_on(tmp_path, line):
    path = tmp_path / reporting.METRICS_FILE
    path.write_bytes(b'{"step": 2, "split": "train", "loss": 1.0}\n' + line + b"\n")
    assert reporting.read_metrics(path) == [{"step": 2, "split": "train", "loss": 1.0}]
    writer = reporting.MetricsWriter(tmp_path, resume_step=2, tensorboard=False)
    writer.write(4, {"loss": 0.5})
    writer.close()
    assert [row["step"] for row in reporting.read_metrics(path)] == [2, 4]
    reporting.plot_loss_curve(
        [*reporting.read_metrics(path), {"step": 6, "split": "train"}], tmp_path / "curve.png"
    )


def test_read_metrics_of_a_missing_file_is_empty(tmp_path):
    assert reporting.read_metrics(tmp_path / "nothing.jsonl") == []


def test_sample_grid_image_layout_and_scaling():
    samples = np.zeros((5, 2, 3, 1), np.int32)
    samples[0] = 16  # the first sample at max_count -> white
    samples[4, 1, 2, 0] = 8  # half of max_count -> 128
    grid = reporting.sample_grid_image(samples, 16, border=1, border_value=7)
    # 5 samples -> 3 columns, 2 rows; each cell (2 + 1) x (3 + 1) plus the outer border.
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1)
    assert grid.dtype == np.uint8
    assert np.all(grid[1:3, 1:4] == 255)
    assert grid[0, 0] == 7
    # sample 4 is row 1, column 1: top-left pixel at (1 + 3, 1 + 4).
    assert grid[4 + 1, 5 + 2] == 128
    assert grid[4, 5] == 0


def test_sample_grid_image_rgb_and_bad_input():
    samples = np.full((4, 2, 2, 3), 255, np.int32)
    assert reporting.sample_grid_image(samples, 255).shape == (7, 7, 3)
    with pytest.raises(ValueError, match="shape"):
        reporting.sample_grid_image(np.zeros((2, 2, 2)), 16)
    with pytest.raises(ValueError, match="max_count"):
        reporting.sample_grid_image(np.zeros((1, 2, 2, 1)), 0)


def test_save_sample_grid_writes_an_upscaled_png(tmp_path):
    path = tmp_path / "samples" / "grid_5.png"
    samples = np.arange(4 * 8 * 8).reshape(4, 8, 8, 1) % 17
    reporting.save_sample_grid(samples, 16, path, min_size=64)
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image)
    # grid of 2 x 2 cells of 9 pixels + 1 border = 19 pixels, upscaled 4x to >= 64.
    assert (width, height) == (76, 76)
    grid = reporting.sample_grid_image(samples, 16)
    np.testing.assert_array_equal(pixels, np.repeat(np.repeat(grid, 4, axis=0), 4, axis=1))


def test_plot_loss_curve_writes_a_png(tmp_path):
    rows = [
        {"step": 10, "split": "train", "loss": 3.0},
        {"step": 20, "split": "train", "loss": 2.0},
        {"step": 20, "split": "eval", "bits_per_dim": 2.5, "loss": 2.1},
    ]
    path = tmp_path / "loss_curve.png"
    reporting.plot_loss_curve(rows, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 100


def test_metrics_rows_are_json_lines(tmp_path):
    writer = reporting.MetricsWriter(tmp_path, tensorboard=False)
    writer.write(1, {"loss": 0.5, "num_examples": 3})
    writer.close()
    line = (tmp_path / reporting.METRICS_FILE).read_text(encoding="utf-8").strip()
    assert json.loads(line) == {"step": 1, "split": "train", "loss": 0.5, "num_examples": 3}


def test_non_finite_metrics_are_written_as_json_null(tmp_path):
    writer = reporting.MetricsWriter(tmp_path, tensorboard=False)
    writer.write(5, {"loss": float("nan"), "grad_norm": float("inf"), "learning_rate": 0.1})
    writer.close()
    line = (tmp_path / reporting.METRICS_FILE).read_text().strip()
    assert json.loads(line) == {
        "step": 5,
        "split": "train",
        "loss": None,
        "grad_norm": None,
        "learning_rate": 0.1,
    }
    assert "NaN" not in line and "Infinity" not in line


def test_rows_by_label_puts_each_class_on_its_own_row_in_order():
    samples = np.arange(7)[:, None, None, None] * np.ones((7, 2, 2, 1), np.int32)
    labels = np.array([3, 1, 3, 1, 3, 3, 0])
    images, columns = reporting.rows_by_label(samples, labels, per_class=3)
    assert columns == 3
    firsts = images[:, 0, 0, 0].tolist()
    assert firsts == [6, 0, 0, 1, 3, 0, 0, 2, 4]  # class 0: sample 6; 1: 1, 3; 3: 0, 2, 4
    assert not images[1:3].any() and not images[5].any()  # padding is blank


def test_write_atomically_writes_whole_files_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out" / "result.npz"
    reporting.write_npz(path, samples=np.arange(3))
    with np.load(path) as archive:
        np.testing.assert_array_equal(archive["samples"], np.arange(3))
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    before = path.read_bytes()

    def full_disk(file):
        file.write(b"half of it")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        reporting.write_atomically(path, full_disk)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == before  # the previous result is kept whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.npz"]  # no temporary file


def test_json_and_png_outputs_go_through_the_atomic_write(tmp_path, monkeypatch):
    written = []
    original = reporting.write_atomically

    def recording(path, write):
        written.append(os.path.basename(path))
        original(path, write)

    monkeypatch.setattr(reporting, "write_atomically", recording)
    reporting.write_json(tmp_path / "a.json", {"x": 1})
    reporting.save_sample_grid(np.zeros((2, 4, 4, 1)), 4, tmp_path / "b.png")
    reporting.plot_loss_curve([{"step": 1, "split": "train", "loss": 1.0}], tmp_path / "c.png")
    assert written == ["a.json", "b.png", "c.png"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert Image.open(tmp_path / "b.png").size[0] >= 256


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
