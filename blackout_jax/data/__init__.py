"""Count datasets for training and evaluation, validated before a run writes anything.

:func:`load_dataset` turns the ``config.data`` section into a :class:`CountDataset`:

* ``digits``: sklearn's digits (8x8x1, counts 0..16), embedded, fixed train/test split;
* ``cifar10``, ``binarized_mnist``, ``celeba64``: TFDS datasets read offline from
  ``data.data_dir`` (see :mod:`blackout_jax.data.tfds_source` and docs/data.md);
* ``synthetic_cells``: 1,200 cells x 64 genes drawn from a known negative-binomial mixture
  (:mod:`blackout_jax.data.synthetic_cells`), generated on the fly; examples of shape (D,);
* ``counts``: your own ``.npy``/``.npz`` array or folder of PNGs at ``data.path``
  (see :mod:`blackout_jax.data.arrays`), or count vectors (cells x genes) from one or several
  count-matrix files: 10x HDF5, Matrix Market, CSV/TSV, ``.h5ad``, scipy sparse or dense
  (N, D) arrays (see :mod:`blackout_jax.data.count_matrices`); examples of shape (D,).

Random left-right flips (``data.random_flip``) apply to cifar10 and celeba64 only, as in the
reference experiments; digits, binarized MNIST and own counts are never flipped. The training
stream (:class:`TrainIterator`) is described in :mod:`blackout_jax.data.pipeline`.

Class labels (``num_classes > 0``, conditional training): sklearn's digit targets, the TFDS
``label`` feature (cifar10, binarized MNIST), the ``labels`` array of an own ``.npz``, or the
``obs`` column ``data.label_key`` of an ``.h5ad``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from blackout_jax.data import arrays, count_matrices, digits, synthetic_cells, tfds_source
from blackout_jax.data.anndata_files import write_count_matrix
from blackout_jax.data.pipeline import (
    COUNTS_SPLIT_SEED,
    ArraySource,
    CountDataset,
    DataShape,
    ExampleSource,
    FeatureSet,
    TrainIterator,
    epoch_permutation,
    fixed_split,
    flip_decisions,
    stream_indices,
)
from blackout_jax.data.sparse_source import FEATURE_SELECTIONS, SparseSource
from blackout_jax.data.tfds_source import TFDS_DATASETS, MissingDatasetError

DATASET_NAMES = ("digits", "cifar10", "binarized_mnist", "celeba64", "synthetic_cells", "counts")

__all__ = [
    "COUNTS_SPLIT_SEED",
    "DATASET_NAMES",
    "FEATURE_SELECTIONS",
    "TFDS_DATASETS",
    "ArraySource",
    "CountDataset",
    "DataShape",
    "ExampleSource",
    "FeatureSet",
    "MissingDatasetError",
    "SparseSource",
    "TrainIterator",
    "epoch_permutation",
    "fixed_split",
    "flip_decisions",
    "load_dataset",
    "stream_indices",
    "write_count_matrix",
]


def _check_fixed_max_count(name: str, declared: int, fixed: int) -> None:
    if declared not in (0, fixed):
        raise ValueError(
            f"data.max_count = {declared} does not match {name}, whose counts are 0..{fixed}; "
            f"set data.max_count to {fixed} (or 0)"
        )


def _check_fixed_num_classes(name: str, num_classes: int, fixed: int) -> None:
    if num_classes and num_classes != fixed:
        labelled = f"has {fixed} classes" if fixed else "has no class labels"
        hint = f"set model.num_classes to {fixed} or 0" if fixed else "set model.num_classes to 0"
        raise ValueError(
            f"model.num_classes = {num_classes}, but {name} {labelled}; {hint} (unconditional)"
        )


def _check_image_fields(data_config: Any, what: str) -> None:
    """The count-vector fields (``num_features``, ``label_key``) must be unset for images."""
    if data_config.num_features or data_config.label_key:
        raise ValueError(
            f"data.num_features = {data_config.num_features} and data.label_key = "
            f"{data_config.label_key!r} apply to count vectors (cells x features), but "
            f"{what} holds images; set them to 0 and ''"
        )


def load_dataset(data_config: Any, *, seed: int, num_classes: int = 0) -> CountDataset:
    """Loads and validates the dataset of a ``config.data`` section.

    Args:
      data_config: the ``data`` section, read by attribute (the run layer's typed
        ``DataConfig``, or a ``ConfigDict``): ``name``, ``data_dir``, ``path``, ``array_key``,
        ``max_count``, ``num_test``, ``random_flip``, ``prefetch``, ``num_features``,
        ``feature_selection``, ``label_key``; their types and bounds are checked by the run
        layer's config (:mod:`blackout_jax.run.config`).
      seed: the default seed of the training stream (the held-out splits do not depend on it).
      num_classes: ``model.num_classes``: ``> 0`` loads class labels in ``[0, num_classes)``
        too (digits, cifar10 and binarized MNIST have exactly 10); 0 loads none.

    Returns:
      A :class:`CountDataset`; all checks have passed and nothing has been written anywhere.

    Raises:
      ValueError: a bad field, or bad data (naming the file, the index and the value).
      FileNotFoundError: a missing ``data.path``; :class:`MissingDatasetError` (a subclass)
        for a TFDS dataset that is not prepared under ``data.data_dir``.
    """
    name = data_config.name
    if name not in DATASET_NAMES:
        raise ValueError(f"data.name must be one of {list(DATASET_NAMES)}, got {name!r}")
    declared_max = data_config.max_count
    if name != "counts":
        _check_image_fields(data_config, repr(name))
    common = {"seed": seed, "prefetch": data_config.prefetch, "num_classes": num_classes}

    if name == "digits":
        _check_fixed_max_count(name, declared_max, digits.MAX_COUNT)
        num_test = data_config.num_test
        _check_fixed_num_classes(name, num_classes, digits.NUM_CLASSES)
        (train, train_labels), (test, test_labels) = digits.load_digits_labelled_split(num_test)
        if not num_classes:
            train_labels = test_labels = None
        dataset = CountDataset(
            name=name,
            image_shape=digits.IMAGE_SHAPE,
            max_count=digits.MAX_COUNT,
            train_source=ArraySource(train, labels=train_labels),
            test_source=ArraySource(test, labels=test_labels),
            origin=digits.SOURCE,
            **common,
        )
    elif name == "synthetic_cells":
        _check_fixed_max_count(name, declared_max, synthetic_cells.MAX_COUNT)
        _check_fixed_num_classes(name, num_classes, synthetic_cells.NUM_TYPES)
        counts, types = synthetic_cells.load_counts()
        train_indices, test_indices = fixed_split(
            len(counts),
            data_config.num_test,
            source=synthetic_cells.SOURCE,
            split_seed=COUNTS_SPLIT_SEED,
        )
        labelled = types if num_classes else None
        dataset = CountDataset(
            name=name,
            image_shape=(synthetic_cells.NUM_GENES,),
            max_count=synthetic_cells.MAX_COUNT,
            train_source=_split_source(counts, labelled, train_indices),
            test_source=_split_source(counts, labelled, test_indices),
            origin=synthetic_cells.SOURCE,
            **common,
        )
    elif name == "counts":
        path = data_config.path
        if not path:
            raise ValueError(
                "data.path must name your counts file (.npy/.npz), PNG folder or count-matrix "
                "files when data.name is 'counts', got ''"
            )
        paths = count_matrices.split_paths(path)
        if count_matrices.is_count_matrix_input(paths, data_config.array_key):
            return count_matrices.load_count_vectors(
                data_config,
                paths,
                num_classes=num_classes,
                seed=seed,
                prefetch=data_config.prefetch,
            )
        path = paths[0]
        _check_image_fields(data_config, repr(path))
        loaded = arrays.load_counts(
            path, array_key=data_config.array_key, max_count=declared_max, num_classes=num_classes
        )
        image_shape = tuple(int(d) for d in loaded.counts.shape[1:])
        num_test = data_config.num_test
        train_indices, test_indices = fixed_split(
            len(loaded.counts), num_test, source=loaded.source, split_seed=COUNTS_SPLIT_SEED
        )
        dataset = CountDataset(
            name=name,
            image_shape=image_shape,
            max_count=loaded.max_count,
            max_count_inferred=loaded.max_count_inferred,
            train_source=_split_source(loaded.counts, loaded.labels, train_indices),
            test_source=_split_source(loaded.counts, loaded.labels, test_indices),
            origin=loaded.source,
            **common,
        )
    else:
        spec = TFDS_DATASETS[name]
        _check_fixed_max_count(name, declared_max, spec.max_count)
        _check_fixed_num_classes(name, num_classes, spec.num_classes)
        data_dir = data_config.data_dir
        spec, train, test = tfds_source.load_tfds_splits(name, data_dir)
        dataset = CountDataset(
            name=name,
            image_shape=spec.image_shape,
            max_count=spec.max_count,
            train_source=train,
            test_source=test,
            origin=tfds_source.resolve_data_dir(data_dir),
            random_flip=data_config.random_flip and spec.random_flip,
            **common,
        )
    return dataset


def _split_source(
    counts: np.ndarray, labels: np.ndarray | None, indices: np.ndarray
) -> ArraySource:
    return ArraySource(counts[indices], labels=None if labels is None else labels[indices])
