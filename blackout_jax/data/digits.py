"""sklearn's digits: 1797 images of 8x8 pixels with counts 0..16, shipped with scikit-learn.

The embedded dataset of the default run; it needs no download. The train/test split is fixed
(independent of the run's seed): a permutation of the 1797 indices drawn with
:data:`SPLIT_SEED` and the last ``num_test`` of it held out (default 297, leaving 1500 for
training).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from blackout_jax.data import count_checks, pipeline

MAX_COUNT = 16
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
NUM_EXAMPLES = 1797
DEFAULT_NUM_TEST = 297
SPLIT_SEED = 0
SOURCE = "sklearn.datasets.load_digits"


def digits_csv_path() -> str | None:
    """The CSV file that ``sklearn.datasets.load_digits`` reads (``datasets/data/digits.csv.gz``
    in the installed scikit-learn, found without importing it), or ``None`` where it is not."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            return path
    return None


def _digits_table() -> np.ndarray:
    """sklearn's digits as one float64 table of shape (1797, 65): 64 pixels, then the digit.

    Read from :func:`digits_csv_path`, so that a run does not pay for importing scikit-learn
    (about 1.5 s on a CPU); where that file is not found, from ``load_digits`` itself.
    """
    path = digits_csv_path()
    if path is not None:
        return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.concatenate([digits.data, digits.target[:, None]], axis=1)


def load_digits_with_labels() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: counts ``np.int32`` of shape (1797, 8, 8, 1) with values 0..16, and the
    digit each shows (``np.int32`` in 0..9)."""
    table = _digits_table()
    images = table[:, :-1].reshape(NUM_EXAMPLES, *IMAGE_SHAPE[:2])
    counts = count_checks.check_count_values(images, source=SOURCE, max_count=MAX_COUNT)
    return counts, table[:, -1].astype(np.int32)


def split_indices(num_examples: int, num_test: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed split: ``(train_indices, test_indices)`` of a :data:`SPLIT_SEED` permutation.

    The test indices are the permutation's last ``num_test`` entries, the train indices the
    rest, both in permutation order (int64).
    """
    return pipeline.fixed_split(num_examples, num_test, source=SOURCE, split_seed=SPLIT_SEED)


def load_digits_labelled_split(
    num_test: int = DEFAULT_NUM_TEST,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((train, train_labels), (test, test_labels))``: the fixed split of :func:`split_indices`
    (counts int32 of shapes ``(1797 - num_test, 8, 8, 1)`` and ``(num_test, 8, 8, 1)``) with
    sklearn's targets (the digit shown, ``np.int32`` in 0..9) of the same examples."""
    counts, labels = load_digits_with_labels()
    train_indices, test_indices = split_indices(len(counts), num_test)
    return (
        (counts[train_indices], labels[train_indices]),
        (counts[test_indices], labels[test_indices]),
    )
