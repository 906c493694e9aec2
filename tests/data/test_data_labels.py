"""Class labels through the data layer: digits targets, TFDS ``label``, own ``labels`` arrays,
their validation, and the labelled training stream (host split, resume)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from blackout_jax.data import digits, load_dataset, stream_indices, tfds_source
from blackout_jax.run.config import DataConfig
from tests.data.test_data_arrays import counts_config, random_counts
from tests.data.test_data_tfds import mocked_tfds, tfds_config  # noqa: F401 - a fixture

NUM_CLASSES = 3


def labelled_npz(tmp_path, labels, num_examples=20):
    path = tmp_path / "c.npz"
    np.savez(path, counts=random_counts((num_examples, 4, 4, 1)), labels=np.asarray(labels))
    return path


def test_digits_labels_are_sklearn_targets_of_the_same_examples():
    config = DataConfig(prefetch=0)
    dataset = load_dataset(config, seed=0, num_classes=10)
    everything = load_digits()
    train_indices, test_indices = digits.split_indices(len(everything.target), config.num_test)
    np.testing.assert_array_equal(dataset.test_labels(), everything.target[test_indices])
    counts, labels = dataset.train_source.read_labelled(np.arange(5))
    np.testing.assert_array_equal(labels, everything.target[train_indices[:5]])
    np.testing.assert_array_equal(counts, everything.images[train_indices[:5], :, :, None])


def test_unconditional_stream_and_state_are_unchanged_by_labels():
    config = DataConfig(prefetch=0)
    plain = load_dataset(config, seed=4).train_iterator(global_batch_size=6)
    labelled = load_dataset(config, seed=4, num_classes=10).train_iterator(global_batch_size=6)
    for _ in range(3):
        batch = next(plain)
        counts, labels = next(labelled)
        assert isinstance(batch, np.ndarray) and labels.shape == (6,) and labels.dtype == np.int32
        np.testing.assert_array_equal(batch, counts)
    state = plain.get_state()
    assert "labels" not in state
    assert labelled.get_state() == state | {"labels": True}
    with pytest.raises(ValueError, match="labels=False, but this stream has labels=True"):
        labelled.set_state(state)


def test_labelled_stream_splits_over_hosts_and_resumes(tmp_path):
    labels = np.arange(20) % NUM_CLASSES
    path = labelled_npz(tmp_path, labels)
    dataset = load_dataset(counts_config(path), seed=2, num_classes=NUM_CLASSES)
    whole = dataset.train_iterator(global_batch_size=4, process_index=0, process_count=1)
    next(whole)
    state = whole.get_state()
    want_counts, want_labels = next(whole)
    halves = []
    for process in range(2):
        part = dataset.train_iterator(global_batch_size=4, process_index=process, process_count=2)
        part.set_state(state)
        halves.append(next(part))
    np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), want_counts)
    np.testing.assert_array_equal(np.concatenate([h[1] for h in halves]), want_labels)
    # Each label is the file's label of the example the stream put there.
    positions = np.arange(4, 8)
    indices = stream_indices(positions, seed=2, num_examples=dataset.num_train)
    counts, labels_read = dataset.train_source.read_labelled(indices)
    np.testing.assert_array_equal(labels_read, want_labels)
    np.testing.assert_array_equal(counts, want_counts)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            np.r_[np.zeros(7), 3, np.zeros(12)].astype(int),
            r"\['labels'\]\[7\] = 3: labels must be in \[0, 3\)",
        ),
        (
            np.r_[np.zeros(4), -1, np.zeros(15)].astype(int),
            r"\['labels'\]\[4\] = -1: labels must be",
        ),
        (
            np.r_[np.zeros(2), 1.5, np.zeros(17)],
            r"\['labels'\]\[2\] = 1.5: labels must be integers",
        ),
        (
            np.zeros(19, int),
            r"\['labels'\] has shape \(19,\); expected one label per example, shape \(20,\)",
        ),
        (np.array(["a"] * 20), r"\['labels'\] must hold integers, got dtype <U1"),
    ],
)
def test_bad_labels_name_the_file_array_index_and_value(tmp_path, labels, message):
    path = labelled_npz(tmp_path, labels)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        load_dataset(counts_config(path), seed=0, num_classes=NUM_CLASSES)


def test_missing_labels_are_named(tmp_path):
    np.savez(tmp_path / "c.npz", counts=random_counts((20, 4, 4, 1)))
    with pytest.raises(ValueError, match=r"c\.npz has no array 'labels' \(it holds \['counts'\]\)"):
        load_dataset(counts_config(tmp_path / "c.npz"), seed=0, num_classes=NUM_CLASSES)
    np.save(tmp_path / "c.npy", random_counts((20, 4, 4, 1)))
    with pytest.raises(ValueError, match=r"c\.npy' holds no class labels"):
        load_dataset(counts_config(tmp_path / "c.npy"), seed=0, num_classes=NUM_CLASSES)
    # Unconditional runs ignore a labels array.
    dataset = load_dataset(counts_config(labelled_npz(tmp_path, np.full(20, 9))), seed=0)
    assert dataset.num_classes == 0 and isinstance(
        next(dataset.train_iterator(global_batch_size=2)), np.ndarray
    )


def test_fixed_datasets_need_their_number_of_classes(tmp_path):
    with pytest.raises(ValueError, match="model.num_classes = 7, but digits has 10 classes"):
        load_dataset(DataConfig(prefetch=0), seed=0, num_classes=7)
    with pytest.raises(ValueError, match="celeba64 has no class labels"):
        load_dataset(tfds_config("celeba64", tmp_path), seed=0, num_classes=10)


def test_cifar10_labels_are_the_tfds_label_feature(tmp_path, mocked_tfds):  # noqa: F811
    dataset = load_dataset(tfds_config("cifar10", tmp_path), seed=3, num_classes=10)
    source = tfds.data_source("cifar10", split="test", download=False)
    assert dataset.test_labels(1).tolist() == [int(source[0]["label"])]
    iterator = dataset.train_iterator(global_batch_size=4, process_index=0, process_count=1)
    counts, labels = next(iterator)
    indices = stream_indices(np.arange(4), seed=3, num_examples=dataset.num_train)
    train = tfds.data_source("cifar10", split="train", download=False)
    assert labels.tolist() == [int(train[int(i)]["label"]) for i in indices]
    assert tfds_source.TFDS_DATASETS["cifar10"].num_classes == 10
