"""The training stream: epochs, host sharding, flips and exact resumption."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blackout_jax.data import (
    ArraySource,
    CountDataset,
    TrainIterator,
    epoch_permutation,
    flip_decisions,
    stream_indices,
)

NUM_EXAMPLES = 24


def labelled_counts(num_examples: int = NUM_EXAMPLES, width: int = 3) -> np.ndarray:
    """(N, 2, width, 1) counts whose first column holds the example's index and the rest 0.

    An example's index can be read back after a left-right flip (it then sits in the last
    column).
    """
    counts = np.zeros((num_examples, 2, width, 1), np.int32)
    counts[:, :, 0, 0] = np.arange(num_examples)[:, None]
    return counts


def example_ids(batch: np.ndarray) -> np.ndarray:
    """Index of each example of a batch made from :func:`labelled_counts` (flipped or not)."""
    return batch[:, 0, :, 0].max(axis=1)


def make_iterator(
    global_batch_size: int, *, process_index: int = 0, process_count: int = 1, **kwargs
) -> TrainIterator:
    options = {"seed": 7, "random_flip": False, "prefetch": 2} | kwargs
    return TrainIterator(
        ArraySource(labelled_counts()),
        dataset_name="labelled",
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
        **options,
    )


def take(iterator: TrainIterator, num_batches: int) -> list[np.ndarray]:
    return [next(iterator) for _ in range(num_batches)]


def test_epoch_permutation_is_a_seeded_permutation():
    first = epoch_permutation(3, 0, 50)
    assert sorted(first.tolist()) == list(range(50))
    np.testing.assert_array_equal(first, epoch_permutation(3, 0, 50))
    assert not np.array_equal(first, epoch_permutation(3, 1, 50))
    assert not np.array_equal(first, epoch_permutation(4, 0, 50))


def test_stream_concatenates_epoch_permutations():
    positions = np.arange(3 * NUM_EXAMPLES)
    indices = stream_indices(positions, seed=5, num_examples=NUM_EXAMPLES)
    expected = np.concatenate([epoch_permutation(5, e, NUM_EXAMPLES) for e in range(3)])
    np.testing.assert_array_equal(indices, expected)


def test_batches_are_consecutive_slices_of_the_stream_and_cross_epochs():
    # 24 examples, batches of 10: batch 2 spans the end of epoch 0 and the start of epoch 1.
    batches = take(make_iterator(10), 5)
    ids = np.concatenate([example_ids(b) for b in batches])
    expected = stream_indices(np.arange(50), seed=7, num_examples=NUM_EXAMPLES)
    np.testing.assert_array_equal(ids, expected)
    assert all(b.dtype == np.int32 and b.shape == (10, 2, 3, 1) for b in batches)


def test_two_processes_cover_an_epoch_once_without_overlap():
    global_batch_size = 8  # 3 global batches = exactly one epoch of 24
    first = take(make_iterator(global_batch_size, process_index=0, process_count=2), 3)
    second = take(make_iterator(global_batch_size, process_index=1, process_count=2), 3)
    first_ids = np.concatenate([example_ids(b) for b in first])
    second_ids = np.concatenate([example_ids(b) for b in second])
    assert all(b.shape[0] == 4 for b in first + second)
    assert not set(first_ids.tolist()) & set(second_ids.tolist())
    assert sorted(np.concatenate([first_ids, second_ids]).tolist()) == list(range(NUM_EXAMPLES))


@pytest.mark.parametrize("random_flip", [False, True])
def test_global_batches_do_not_depend_on_the_process_count(random_flip):
    single = take(make_iterator(12, random_flip=random_flip), 4)
    for process_count in (2, 3, 4):
        parts = [
            take(
                make_iterator(
                    12,
                    process_index=p,
                    process_count=process_count,
                    random_flip=random_flip,
                ),
                4,
            )
            for p in range(process_count)
        ]
        for k, whole in enumerate(single):
            rows = np.concatenate([parts[p][k] for p in range(process_count)])
            np.testing.assert_array_equal(rows, whole)


def test_global_batch_matches_the_union_of_process_slices():
    iterator = make_iterator(12, process_index=1, process_count=3, random_flip=True)
    whole = iterator.global_batch()
    np.testing.assert_array_equal(next(iterator), whole[4:8])


def test_random_flips_flip_about_half_and_only_left_right():
    iterator = make_iterator(NUM_EXAMPLES, random_flip=True)
    batch = next(iterator)
    flipped = batch[:, 0, 0, 0] == 0
    flipped &= example_ids(batch) != 0  # example 0 looks the same either way
    positions = np.arange(NUM_EXAMPLES)
    decisions = flip_decisions(positions, seed=7)
    ids = example_ids(batch)
    np.testing.assert_array_equal(flipped, decisions & (ids != 0))
    np.testing.assert_array_equal(batch[decisions][:, :, ::-1], labelled_counts()[ids[decisions]])
    many = flip_decisions(np.arange(20_000), seed=1)
    assert 0.48 < many.mean() < 0.52
    assert not np.array_equal(many, flip_decisions(np.arange(20_000), seed=2))


def test_no_flips_without_random_flip():
    batch = next(make_iterator(NUM_EXAMPLES))
    np.testing.assert_array_equal(batch, labelled_counts()[example_ids(batch)])


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resumed_iterator_yields_exactly_the_uninterrupted_batches(prefetch):
    uninterrupted = take(make_iterator(10, random_flip=True, prefetch=prefetch), 9)

    interrupted = make_iterator(10, random_flip=True, prefetch=prefetch)
    take(interrupted, 4)
    state = json.loads(json.dumps(interrupted.get_state()))  # as stored in a checkpoint
    interrupted.close()

    resumed = make_iterator(10, random_flip=True, prefetch=prefetch)
    resumed.set_state(state)
    assert resumed.get_state() == state
    for expected, got in zip(uninterrupted[4:], take(resumed, 5), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_resume_on_another_process_count_continues_the_same_global_batches():
    uninterrupted = take(make_iterator(8, random_flip=True), 6)
    single = make_iterator(8, random_flip=True)
    take(single, 2)
    state = single.get_state()
    parts = []
    for p in range(2):
        resumed = make_iterator(8, process_index=p, process_count=2, random_flip=True)
        resumed.set_state(state)
        parts.append(take(resumed, 4))
    for k in range(4):
        np.testing.assert_array_equal(
            np.concatenate([parts[0][k], parts[1][k]]), uninterrupted[2 + k]
        )


def test_state_is_json_and_counts_the_position():
    iterator = make_iterator(6)
    take(iterator, 3)
    state = iterator.get_state()
    assert json.loads(json.dumps(state)) == state
    assert state["batches_consumed"] == 3
    assert state["examples_consumed"] == 18
    assert state["seed"] == 7


def test_set_state_in_the_middle_of_iteration_restarts_at_the_saved_position():
    iterator = make_iterator(5)
    batches = take(iterator, 3)
    state_after_one = {**iterator.get_state(), "examples_consumed": 5, "batches_consumed": 1}
    iterator.set_state(state_after_one)
    np.testing.assert_array_equal(next(iterator), batches[1])


@pytest.mark.parametrize(("field", "value"), [("seed", 8), ("num_train", 23), ("dataset", "other")])
def test_set_state_refuses_a_state_of_another_stream(field, value):
    iterator = make_iterator(6)
    state = {**iterator.get_state(), field: value}
    with pytest.raises(ValueError, match=field):
        iterator.set_state(state)


def test_set_state_refuses_malformed_states():
    iterator = make_iterator(6)
    with pytest.raises(ValueError, match="examples_consumed"):
        iterator.set_state({"batches_consumed": 3})
    with pytest.raises(ValueError, match="examples_consumed"):
        iterator.set_state({**iterator.get_state(), "examples_consumed": -1})


def test_batch_size_must_divide_among_processes():
    with pytest.raises(ValueError, match="divisible by process_count"):
        make_iterator(10, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="process_index"):
        make_iterator(10, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="global_batch_size"):
        make_iterator(0)


def test_count_dataset_test_examples_are_fixed_and_capped():
    counts = labelled_counts()
    dataset = CountDataset(
        name="labelled",
        image_shape=(2, 3, 1),
        max_count=NUM_EXAMPLES,
        train_source=ArraySource(counts[:20]),
        test_source=ArraySource(counts[20:]),
        origin="test",
    )
    np.testing.assert_array_equal(dataset.test_examples(), counts[20:])
    np.testing.assert_array_equal(dataset.test_examples(2), counts[20:22])
    assert dataset.test_examples(100).shape == (4, 2, 3, 1)
    assert dataset.num_train == 20 and dataset.num_test == 4
    with pytest.raises(ValueError, match="num"):
        dataset.test_examples(-1)
    iterator = dataset.train_iterator(global_batch_size=4, process_index=0, process_count=1)
    assert set(example_ids(next(iterator)).tolist()) <= set(range(20))
