"""TFDS datasets of the paper, read offline from a data_dir (array_record; no TensorFlow needed).

``tfds.data_source(name, split=..., data_dir=..., download=False)`` gives random access by
index to a dataset prepared once, on a machine with internet and TensorFlow, with

    tfds build cifar10 --data_dir=/path/to/tensorflow_datasets --file_format=array_record

Nothing here ever downloads: a dataset missing from the data_dir raises
:class:`MissingDatasetError`, naming the directory searched and the command that prepares it.

Conversions to counts (``np.int32`` (H, W, C)):

* ``cifar10``: the 8-bit pixels, 32x32x3, max count 255; test split ``test``.
* ``binarized_mnist``: MNIST's 28x28 images resized to 32x32 with the antialiased bilinear
  filter below (on ``pixel / 255``, as ``tf.image.resize(..., antialias=True)``), then
  thresholded ``> 0.5`` -> {0, 1}: 32x32x1, max count 1; test split ``test``. This is the
  reference's preprocessing (lanl/Blackout-Diffusion, ``loadDataPipeline.py`` and the
  ``> 0.5`` of its training notebook).
* ``celeba64``: CelebA's 218x178 images centre-cropped to 140x140 (rows 39..178, columns
  19..158: offsets ``(218 - 140) // 2`` and ``(178 - 140) // 2``) and resized to 64x64 with an
  antialiased bilinear filter (the triangle kernel stretched by the 140/64 downscale factor,
  as ``tf.image.resize(..., antialias=True)`` computes it), rounded to the nearest integer;
  max count 255; test split ``test``. This is the CelebA preprocessing of score_sde
  (Song et al., 2021) on unscaled 8-bit values.

Class labels (conditional training): the ``label`` feature of cifar10 and MNIST (10 classes);
celeba64 has none.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from blackout_jax.data.pipeline import MAX_READ_THREADS

CELEBA_CROP = 140
CELEBA_SIZE = 64
MNIST_SIZE = 32


class MissingDatasetError(FileNotFoundError):
    """A TFDS dataset is not prepared (in array_record format) under the data_dir."""


def resize_mnist(image: np.ndarray) -> np.ndarray:
    """MNIST pixels (uint8 (H, W, C)) -> ``pixel / 255`` resized to (32, 32, C), float64.

    Both axes use :func:`antialiased_bilinear_weights` ``(28, 32)``: for this upscale, plain
    bilinear interpolation with pixel centres aligned and the edge pixels repeated.
    """
    image = np.asarray(image, np.float64) / 255.0
    return _resize_2d(image, MNIST_SIZE)


def binarize_mnist(image: np.ndarray) -> np.ndarray:
    """MNIST pixels (uint8 (28, 28, 1)) -> counts ``resize_mnist(image) > 0.5``, int32.

    The result has shape (32, 32, 1) and values in {0, 1}.
    """
    return (resize_mnist(image) > 0.5).astype(np.int32)


def identity_counts(image: np.ndarray) -> np.ndarray:
    """8-bit pixels as counts 0..255, int32 (same shape)."""
    return np.asarray(image, np.int32)


def antialiased_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Resampling matrix (out_size, in_size) of an antialiased bilinear resize (rows sum to 1).

    Output pixel ``x`` samples the input at ``s = (x + 0.5) * in_size / out_size`` (pixel
    centres aligned) with the triangle kernel ``max(0, 1 - |d|)``, where ``d = (j + 0.5 - s)
    / max(in_size / out_size, 1)`` for input pixel ``j``; the weights are normalised to sum 1.
    For downscaling the kernel is stretched, which low-pass filters before sampling.
    """
    ratio = in_size / out_size
    kernel_scale = max(ratio, 1.0)
    sample_points = (np.arange(out_size, dtype=np.float64) + 0.5) * ratio
    centres = np.arange(in_size, dtype=np.float64) + 0.5
    distance = (centres[None, :] - sample_points[:, None]) / kernel_scale
    weights = np.maximum(0.0, 1.0 - np.abs(distance))
    return weights / weights.sum(axis=1, keepdims=True)


@functools.cache
def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
    weights = antialiased_bilinear_weights(in_size, out_size)
    weights.setflags(write=False)
    return weights


def _resize_2d(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) float64 -> (size, size, C): :func:`antialiased_bilinear_weights` on each axis."""
    rows = np.tensordot(_resize_weights(image.shape[0], size), image, axes=(1, 0))
    return np.tensordot(_resize_weights(image.shape[1], size), rows, axes=(1, 1)).transpose(1, 0, 2)


def celeba_crop_resize(image: np.ndarray) -> np.ndarray:
    """CelebA (uint8 (218, 178, 3)) -> centre crop 140x140 -> 64x64 counts 0..255, int32.

    The crop starts at row ``(H - 140) // 2`` and column ``(W - 140) // 2``; the resize is
    :func:`antialiased_bilinear_weights` along both axes, rounded to the nearest integer.
    """
    image = np.asarray(image)
    top = (image.shape[0] - CELEBA_CROP) // 2
    left = (image.shape[1] - CELEBA_CROP) // 2
    if top < 0 or left < 0:
        raise ValueError(
            f"CelebA images must be at least {CELEBA_CROP}x{CELEBA_CROP}, got shape {image.shape}"
        )
    crop = image[top : top + CELEBA_CROP, left : left + CELEBA_CROP].astype(np.float64)
    resized = _resize_2d(crop, CELEBA_SIZE)
    return np.clip(np.floor(resized + 0.5), 0, 255).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
    """How one of the paper's datasets is read from TFDS and turned into counts."""

    name: str
    tfds_name: str
    train_split: str
    test_split: str
    image_shape: tuple[int, int, int]
    max_count: int
    random_flip: bool
    to_counts: Callable[[np.ndarray], np.ndarray]
    num_classes: int = 0  # classes of the ``label`` feature (0: the dataset has no labels)


TFDS_DATASETS: dict[str, TfdsDataset] = {
    "cifar10": TfdsDataset(
        "cifar10", "cifar10", "train", "test", (32, 32, 3), 255, True, identity_counts, 10
    ),
    "binarized_mnist": TfdsDataset(
        "binarized_mnist",
        "mnist",
        "train",
        "test",
        (MNIST_SIZE, MNIST_SIZE, 1),
        1,
        False,
        binarize_mnist,
        10,
    ),
    "celeba64": TfdsDataset(
        "celeba64", "celeb_a", "train", "test", (64, 64, 3), 255, True, celeba_crop_resize
    ),
}


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> str:
    """``data_dir``, or TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
    if data_dir:
        return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    default = os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
    return os.path.abspath(os.path.expanduser(default))


def prepare_command(tfds_name: str, data_dir: str) -> str:
    """The shell command that prepares ``tfds_name`` under ``data_dir`` for random access."""
    return f"tfds build {tfds_name} --data_dir={data_dir} --file_format=array_record"


def _missing(tfds_name: str, split: str, data_dir: str, reason: str) -> MissingDatasetError:
    return MissingDatasetError(
        f"TFDS dataset {tfds_name!r} (split {split!r}) is not available in array_record format "
        f"under data.data_dir = {data_dir!r} ({reason}). Nothing is downloaded at run time: "
        "prepare it once on a machine with internet access and TensorFlow installed,\n"
        f"    {prepare_command(tfds_name, data_dir)}\n"
        "then copy the folder to this machine (if needed) and set "
        "--config.data.data_dir to it (see docs/data.md)."
    )


def open_split(tfds_name: str, split: str, data_dir: str | os.PathLike[str] | None) -> Any:
    """A random-access TFDS data source of one split, read offline (``download=False``).

    Returns:
      The object of ``tfds.data_source``: ``len(source)`` and ``source[i]`` -> feature dict.

    Raises:
      MissingDatasetError: the dataset or split cannot be opened under ``data_dir``; the
        message names the directory and the ``tfds build`` command that prepares it.
    """
    directory = resolve_data_dir(data_dir)
    if not os.path.isdir(directory):
        raise _missing(tfds_name, split, directory, "the directory does not exist")
    dataset_folder = os.path.join(directory, tfds_name)
    if not os.path.isdir(dataset_folder):
        raise _missing(tfds_name, split, directory, f"there is no folder {dataset_folder!r}")
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(tfds_name, split=split, data_dir=directory, download=False)
    except Exception as error:  # noqa: BLE001 - every TFDS failure means: not prepared here
        reason = f"TFDS said: {type(error).__name__}: {error}".replace("\n", " ")
        raise _missing(tfds_name, split, directory, reason) from error


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """One split of a TFDS data source as an :class:`~blackout_jax.data.pipeline.ExampleSource`.

    ``read(indices)`` reads and converts only the requested records, int32 (n, H, W, C).
    """

    data_source: Any
    to_counts: Callable[[np.ndarray], np.ndarray]
    image_shape: tuple[int, int, int]
    label: str
    image_key: str = "image"
    read_threads: int = MAX_READ_THREADS
    label_key: str = "label"

    def __len__(self) -> int:
        return len(self.data_source)

    def read_one(self, index: int) -> np.ndarray:
        return self._convert(index, self.data_source[int(index)])

    def _convert(self, index: int, record: Mapping[str, Any]) -> np.ndarray:
        counts = self.to_counts(record[self.image_key])
        if counts.shape != self.image_shape:
            raise ValueError(
                f"{self.label}[{int(index)}]: expected an image of shape {self.image_shape} "
                f"after conversion, got {counts.shape}"
            )
        return counts

    def read(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, np.int64).reshape(-1)
        batch = np.empty((len(indices), *self.image_shape), np.int32)
        for row, index in enumerate(indices):
            batch[row] = self.read_one(int(index))
        return batch

    def read_labelled(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Counts as :meth:`read` and the records' ``label_key`` feature, ``np.int32`` (n,)."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        batch = np.empty((len(indices), *self.image_shape), np.int32)
        labels = np.empty(len(indices), np.int32)
        for row, index in enumerate(indices):
            record = self.data_source[int(index)]
            batch[row] = self._convert(int(index), record)
            labels[row] = int(record[self.label_key])
        return batch, labels


def load_tfds_splits(
    name: str, data_dir: str | os.PathLike[str] | None
) -> tuple[TfdsDataset, TfdsSource, TfdsSource]:
    """Opens the train and test splits of one of :data:`TFDS_DATASETS` and checks them.

    Returns:
      ``(spec, train_source, test_source)``.

    Raises:
      ValueError: an unknown ``name``, or an empty split / first example of the wrong shape.
      MissingDatasetError: the dataset is not prepared under ``data_dir``.
    """
    if name not in TFDS_DATASETS:
        raise ValueError(f"data.name must be one of {sorted(TFDS_DATASETS)}, got {name!r}")
    spec = TFDS_DATASETS[name]
    directory = resolve_data_dir(data_dir)
    sources = []
    for split in (spec.train_split, spec.test_split):
        label = f"{directory}/{spec.tfds_name}[{split!r}]"
        source = TfdsSource(
            open_split(spec.tfds_name, split, directory), spec.to_counts, spec.image_shape, label
        )
        if len(source) == 0:
            raise ValueError(f"{label}: the split is empty")
        source.read_one(0)  # the image feature exists and converts to image_shape
        sources.append(source)
    return spec, sources[0], sources[1]
