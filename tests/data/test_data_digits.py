"""sklearn's digits: the embedded default dataset with a fixed split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from blackout_jax.data import digits, load_dataset
from blackout_jax.run.config import DataConfig


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
