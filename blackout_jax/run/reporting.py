"""What a training run reports: metrics.jsonl, TensorBoard, PNG images.

* :class:`MetricsWriter` appends one JSON object per line to ``WORKDIR/metrics.jsonl``
  (training rows ``{"step", "split": "train", "loss", ...}`` once per log period, evaluation rows
  ``{"step", "split": "eval", "bits_per_dim", ...}``) and mirrors every value to TensorBoard
  event files in ``WORKDIR/tensorboard`` (tag ``<split>/<name>``). On resume it drops rows (and
  TensorBoard events) written after the restored step, so the record continues from there.
* :func:`save_sample_grid` writes its pixels as a PNG with Pillow; :func:`plot_loss_curve`
  draws with matplotlib's Agg canvas (no display, no global backend switch).
* :func:`write_atomically` is the one way every output file of a run is written (JSON, npz,
  PNG, sample chunks): into a temporary file in the same folder, then renamed over the target,
  so a reader, a full disk or a read-only folder never leaves a half-written or empty file
  where the result belongs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import numpy as np

from blackout_jax.run import safety
from blackout_jax.run.folder import METRICS_FILE, TENSORBOARD_DIR


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file (``[]`` if missing).

    Only JSON objects with an integer ``step`` are rows: other lines (a torn last line of a
    killed process, bytes that are not text, JSON of another shape) are skipped.
    """
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, "rb") as file:
        for line in file:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8 text
                continue
            if _is_row(row):
                rows.append(row)
    return rows


def _is_row(row: Any) -> bool:
    step = row.get("step") if isinstance(row, dict) else None
    return isinstance(step, int) and not isinstance(step, bool)


def plain_number(value: Any) -> Any:
    """NumPy scalars and 0-d arrays as Python numbers (JSON-serialisable)."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    return value


def write_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` as ``write(file)`` does, all or nothing.

    ``write`` gets an open binary file: a new temporary ``.<name>.<pid>.<random>.tmp`` in the
    target's folder (created if missing; the file's mode as ``open`` would give it). Once it
    returns, the file is flushed to disk and renamed over ``path`` (``os.replace``, atomic on
    one file system); on any error the temporary file is removed and ``path`` is left as it was
    (absent, or its previous content). A process ended at once by
    :class:`~blackout_jax.run.safety.StopAtOnce` removes the temporary file too
    (:func:`~blackout_jax.run.safety.unfinished_write`).

    Raises:
      OSError: the folder cannot be made or written, or the disk is full; ``filename`` is the
        folder that could not be made, else ``path``.
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    temporary = None
    try:
        os.makedirs(folder, exist_ok=True)
        name = f".{os.path.basename(target)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        temporary = os.path.join(folder, name)
        with safety.unfinished_write(temporary):
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(descriptor, "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
    except BaseException as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.remove(temporary)  # no partial file is left behind
        if isinstance(error, OSError) and error.filename in (None, temporary):
            error.filename = target
        raise


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented JSON with :func:`write_atomically`."""
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    write_atomically(path, lambda file: file.write(text.encode("utf-8")))


def write_npz(path: str | os.PathLike[str], **arrays: Any) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` with :func:`write_atomically`."""
    write_atomically(path, lambda file: np.savez(file, **arrays))


class MetricsWriter:
    """Append metrics rows to ``WORKDIR/metrics.jsonl`` and TensorBoard; resume-aware.

    Args:
      workdir: the run folder.
      resume_step: the step training restarts from (0 for a fresh run). Rows with a larger
        step (written after the checkpoint a killed run was restored from) are removed, and
        TensorBoard events from ``resume_step + 1`` on are purged.
      tensorboard: also write TensorBoard event files.
    """

    def __init__(
        self, workdir: str | os.PathLike[str], *, resume_step: int = 0, tensorboard: bool = True
    ) -> None:
        self.path = os.path.join(os.fspath(workdir), METRICS_FILE)
        rows = read_metrics(self.path)
        kept = [row for row in rows if row["step"] <= resume_step]
        if len(kept) != len(rows) or (rows and not self._ends_with_newline()):
            with open(self.path, "w", encoding="utf-8") as file:
                for row in kept:
                    file.write(json.dumps(row) + "\n")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._tensorboard = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(
                os.path.join(os.fspath(workdir), TENSORBOARD_DIR), purge_step=resume_step + 1
            )

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as file:
            file.seek(0, os.SEEK_END)
            if file.tell() == 0:
                return True
            file.seek(-1, os.SEEK_END)
            return file.read(1) == b"\n"

    def write(self, step: int, scalars: Mapping[str, Any], *, split: str = "train") -> None:
        """Append ``{"step": step, "split": split, **scalars}``; each scalar also to TensorBoard.

        A value that is not finite (NaN, +-inf: a period whose every update was skipped) is
        written as JSON ``null`` and left out of TensorBoard, so every line is valid JSON.
        """
        row: dict[str, Any] = {"step": int(step), "split": split}
        for name, value in scalars.items():
            value = plain_number(value)
            row[name] = None if isinstance(value, float) and not math.isfinite(value) else value
        try:
            self._file.write(json.dumps(row, allow_nan=False) + "\n")
            self._file.flush()
        except OSError as error:
            error.filename = error.filename or self.path
            raise
        if self._tensorboard is not None:
            for name, value in row.items():
                if name in ("step", "split") or not isinstance(value, (int, float)):
                    continue
                self._tensorboard.add_scalar(f"{split}/{name}", value, int(step))
            self._tensorboard.flush()

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def vector_tiles(examples: np.ndarray, fill: Any = 0) -> np.ndarray:
    """Examples as images: vectors ``(N, D)`` folded row by row into ``(N, R, C, 1)`` tiles,
    ``R = ceil(sqrt(D))``, ``C = ceil(D / R)``, the last ``R C - D`` places ``fill``; examples
    of any other rank (images ``(N, H, W, C)``) are returned unchanged."""
    examples = np.asarray(examples)
    if examples.ndim != 2:
        return examples
    num, size = examples.shape
    rows = max(1, math.ceil(math.sqrt(size)))
    cols = max(1, math.ceil(size / rows))
    tiles = np.full((num, rows * cols), fill, examples.dtype)
    tiles[:, :size] = examples
    return tiles.reshape(num, rows, cols, 1)


def sample_grid_image(
    samples: np.ndarray,
    max_count: int,
    *,
    border: int = 1,
    border_value: int = 128,
    columns: int | None = None,
    log_counts: bool | None = None,
) -> np.ndarray:
    """Tile samples ``(N, H, W, C)`` or vectors ``(N, D)`` (as :func:`vector_tiles`) into one
    uint8 image, counts scaled ``0..max_count -> 0..255``: linearly, or with ``log_counts``
    as ``255 log1p(n) / log1p(max_count)``, which shows counts spanning 0 to thousands
    (the default for vectors, linear for images).

    ``C = 1`` gives a grey ``(rows, cols)`` image, ``C = 3`` an RGB ``(rows, cols, 3)`` image;
    any other ``C`` shows the first channel. The grid is ``columns`` (default ``ceil(sqrt(N))``)
    samples wide, with a ``border``-pixel grey (``border_value``) frame around every sample.
    """
    samples = np.asarray(samples)
    if log_counts is None:
        log_counts = samples.ndim == 2
    samples = vector_tiles(samples)
    if samples.ndim != 4:
        raise ValueError(f"samples must have shape (N, H, W, C) or (N, D), got {samples.shape}")
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")
    if samples.shape[-1] not in (1, 3):
        samples = samples[..., :1]
    num, height, width, channels = samples.shape
    values = np.maximum(samples.astype(np.float64), 0.0)
    if log_counts:
        values = np.log1p(values) * 255.0 / math.log1p(max_count)
    else:
        values = values * 255.0 / max_count
    scaled = np.clip(np.rint(values), 0, 255)
    cols = columns or max(1, math.ceil(math.sqrt(num)))
    rows = max(1, math.ceil(num / cols))
    canvas = np.full(
        (rows * (height + border) + border, cols * (width + border) + border, channels),
        border_value,
        np.uint8,
    )
    for index in range(num):
        row, col = divmod(index, cols)
        top, left = border + row * (height + border), border + col * (width + border)
        canvas[top : top + height, left : left + width] = scaled[index]
    return canvas[..., 0] if channels == 1 else canvas


def save_sample_grid(
    samples: np.ndarray,
    max_count: int,
    path: str | os.PathLike[str],
    *,
    min_size: int = 256,
    columns: int | None = None,
    log_counts: bool | None = None,
) -> None:
    """Write a PNG grid of ``samples`` (see :func:`sample_grid_image`), upscaled by whole pixels
    (nearest neighbour) until the image is at least ``min_size`` pixels on its shorter side: an
    8-bit grey PNG for one channel, RGB for three."""
    from PIL import Image

    grid = sample_grid_image(samples, max_count, columns=columns, log_counts=log_counts)
    scale = max(1, math.ceil(min_size / min(grid.shape[:2])))
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    write_atomically(path, lambda file: Image.fromarray(grid).save(file, format="PNG"))


def rows_by_label(
    samples: np.ndarray, labels: np.ndarray, per_class: int = 10
) -> tuple[np.ndarray, int]:
    """Samples arranged for a grid with one row per class present in ``labels`` (in class
    order): the first ``k = min(per_class, most samples of one class)`` samples of each, padded
    with all-zero images where a class has fewer. Returns ``(images (R k, ...), k)``."""
    samples, labels = np.asarray(samples), np.asarray(labels)
    classes = np.unique(labels)
    columns = int(min(per_class, max(int(np.sum(labels == c)) for c in classes)))
    rows = []
    for label in classes:
        chosen = samples[labels == label][:columns]
        padding = np.zeros((columns - len(chosen), *samples.shape[1:]), samples.dtype)
        rows.append(np.concatenate([chosen, padding]))
    return np.concatenate(rows), columns


def imputation_pairs(counts: np.ndarray, mask: np.ndarray, completed: np.ndarray, max_count: int):
    """``(2N, H, W, 3)`` counts for a two-column grid: each observed input (missing entries red)
    beside its completion (grey, or the image's own colours). Vectors ``(N, D)`` are shown as
    :func:`vector_tiles`."""
    counts, completed = vector_tiles(counts), vector_tiles(completed)
    mask = vector_tiles(mask, fill=True)

    def as_rgb(values: np.ndarray) -> np.ndarray:
        return np.repeat(values, 3, axis=-1) if values.shape[-1] == 1 else values[..., :3]

    observed = as_rgb(np.where(mask, counts, 0)).astype(np.int64)
    missing = ~np.all(mask, axis=-1)
    observed[missing] = (max_count, 0, 0)
    pairs = np.stack([observed, as_rgb(completed).astype(np.int64)], axis=1)
    return pairs.reshape(-1, *pairs.shape[2:])


def unthinning_rows(
    counts: np.ndarray,
    survival: np.ndarray,
    samples: np.ndarray,
    mean: np.ndarray,
    truth: np.ndarray | None = None,
) -> np.ndarray:
    """``(N, columns, H, W, C)`` float images for a grid with one row per example: ``truth``
    (when given) | the observation ``y`` | ``y / q`` | the ``S`` samples | their mean.

    Args:
      counts: ``(N, H, W, C)`` observations ``y``; survival: ``(N,)``; samples:
        ``(N, S, H, W, C)``; mean: ``(N, H, W, C)``; truth: ``(N, H, W, C)`` or ``None``.
    """
    rescaled = counts / survival.reshape(-1, *([1] * (counts.ndim - 1)))
    columns = [] if truth is None else [truth[:, None]]
    columns += [counts[:, None], rescaled[:, None], samples, mean[:, None]]
    return np.concatenate([np.asarray(c, np.float64) for c in columns], axis=1)


def plot_loss_curve(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write a PNG of the training loss against the step (from metrics rows) and, on a second
    axis, the held-out bits/dim of the evaluation rows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [
        (row["step"], row["loss"]) for row in rows if row.get("split") == "train" and "loss" in row
    ]
    evals = [
        (row["step"], row["bits_per_dim"])
        for row in rows
        if row.get("split") == "eval" and "bits_per_dim" in row
    ]
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(1, 1, 1)
    if train:
        steps, values = zip(*train, strict=True)
        axis.plot(steps, values, color="tab:blue", label="training loss")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss", color="tab:blue")
    if evals:
        second = axis.twinx()
        steps, values = zip(*evals, strict=True)
        second.plot(steps, values, "o-", color="tab:red", label="held-out bits/dim")
        second.set_ylabel("held-out bits/dim (bound)", color="tab:red")
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    write_atomically(path, lambda file: figure.savefig(file, format="png"))
