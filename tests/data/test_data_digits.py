"""sklearn's digits: the embedded default dataset with a fixed split."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from blackout_jax.data import digits, load_dataset
from blackout_jax.run.config import DataConfig
from tests.cli import cpu_environment


def digits_config(**overrides) -> DataConfig:
    fields = {
        "name": "digits",
        "data_dir": "",
        "path": "",
        "array_key": "",
        "max_count": 16,
        "num_test": 297,
        "random_flip": False,
        "prefetch": 2,
    }
    return DataConfig(**(fields | overrides))


def test_default_split_is_1500_train_297_test_covering_every_digit_once():
    train_indices, test_indices = digits.split_indices(1797, 297)
    assert len(train_indices) == 1500 and len(test_indices) == 297
    assert sorted(np.concatenate([train_indices, test_indices]).tolist()) == list(range(1797))
    again = digits.split_indices(1797, 297)
    np.testing.assert_array_equal(again[1], test_indices)


def test_loaded_digits_are_sklearn_images_as_counts():
    dataset = load_dataset(digits_config(), seed=5)
    assert dataset.name == "digits"
    assert dataset.image_shape == (8, 8, 1)
    assert dataset.max_count == 16
    assert dataset.num_train == 1500
    test = dataset.test_examples()
    images = load_digits().images.astype(np.int32)
    _, test_indices = digits.split_indices(1797, 297)
    np.testing.assert_array_equal(test[..., 0], images[test_indices])
    assert test.dtype == np.int32 and test.min() == 0 and test.max() == 16


@pytest.mark.parametrize("from_csv_file", [True, False])
def test_digits_and_labels_equal_sklearns_whether_read_from_its_file_or_not(
    monkeypatch, from_csv_file
):
    if from_csv_file:
        assert digits.digits_csv_path() is not None
    else:
        monkeypatch.setattr(digits, "digits_csv_path", lambda: None)
    counts, labels = digits.load_digits_with_labels()
    reference = load_digits()
    assert counts.shape == (1797, 8, 8, 1) and counts.dtype == np.int32
    np.testing.assert_array_equal(counts[..., 0], reference.images)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, reference.target)


def test_loading_the_digits_does_not_import_scikit_learn():
    code = (
        "import sys\n"
        "from blackout_jax.data import digits\n"
        "digits.load_digits_labelled_split()\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'sklearn'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=cpu_environment(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_test_split_does_not_depend_on_the_seed():
    one = load_dataset(digits_config(), seed=0).test_examples()
    two = load_dataset(digits_config(), seed=99).test_examples()
    np.testing.assert_array_equal(one, two)


def test_digits_are_never_flipped():
    dataset = load_dataset(digits_config(random_flip=True), seed=0)
    assert not dataset.random_flip
    iterator = dataset.train_iterator(global_batch_size=1500, process_index=0, process_count=1)
    batch = next(iterator)
    train = dataset.train_source.read(np.arange(1500))
    assert sorted(map(bytes, batch)) == sorted(map(bytes, train))


def test_digits_errors():
    with pytest.raises(ValueError, match=r"num_test = 1797.*1797 examples"):
        load_dataset(digits_config(num_test=1797), seed=0)
    with pytest.raises(ValueError, match=r"data.max_count = 255.*digits.*0\.\.16"):
        load_dataset(digits_config(max_count=255), seed=0)
    with pytest.raises(ValueError, match="data.name"):
        load_dataset(digits_config(name="imagenet"), seed=0)
