"""sklearn's digits: 1797 images of 8x8 pixels with counts 0..16, shipped with scikit-learn.

The embedded dataset of the default run; it needs no download. The train/test split is fixed
(independent of the run's seed): a permutation of the 1797 indices drawn with
:data:`SPLIT_SEED` and the last ``num_test`` of it held out (default 297, leaving 1500 for
training).
"""

from __future__ import annotations

import numpy as np

from blackout_jax.data import count_checks, pipeline

MAX_COUNT = 16
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
NUM_EXAMPLES = 1797
DEFAULT_NUM_TEST = 297
SPLIT_SEED = 0
SOURCE = "sklearn.datasets.load_digits"


def load_digit_counts() -> np.ndarray:
    """All 1797 digits as ``np.int32`` counts of shape (1797, 8, 8, 1), values 0..16."""
    from sklearn.datasets import load_digits

    images = load_digits().images  # float64 (1797, 8, 8), whole numbers 0..16
    return count_checks.check_count_values(images, source=SOURCE, max_count=MAX_COUNT)


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
    from sklearn.datasets import load_digits

    counts = load_digit_counts()
    labels = load_digits().target.astype(np.int32)
    train_indices, test_indices = split_indices(len(counts), num_test)
    return (
        (counts[train_indices], labels[train_indices]),
        (counts[test_indices], labels[test_indices]),
    )
