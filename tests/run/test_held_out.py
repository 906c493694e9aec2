"""Tests of blackout_jax.run.held_out: the one loop over a held-out dataset, and the baseline."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import blackout_jax as bj
from blackout_jax.run import held_out

DATA = np.random.default_rng(2).integers(0, 5, size=(7, 2, 2, 1))


def test_loss_over_keys_each_example_by_its_index_whatever_its_batch():
    key = jax.random.key(5)
    oracle = jax.tree_util.Partial(bj.dataset_oracle(DATA))
    values = held_out.loss_over(
        key, oracle, DATA, batch_size=3, weighting="elbo", t_end=8.0, num_steps=100
    )
    assert values.shape == (7,)  # three batches of 3, the last padded, padding dropped
    expected = bj.training_loss(
        bj.example_keys(key, jnp.arange(7, dtype=jnp.uint32)),
        oracle,
        jnp.asarray(DATA),
        weighting="elbo",
        t_end=8.0,
        num_steps=100,
    )
    np.testing.assert_allclose(values, np.asarray(expected), rtol=1e-5)


BOUND = dict(t_end=8.0, max_count=4, num_time_samples=3)


def _bounds_batch_by_batch(key, predict_for, labels=None):
    """``nll_bound`` of the batches of 4 of ``DATA`` (the last padded with a zero example of
    label 0), batch ``i`` keyed ``fold_in(key, i)``, padding dropped."""
    padded = np.concatenate([DATA, np.zeros((1, 2, 2, 1), DATA.dtype)])
    padded_labels = None if labels is None else np.concatenate([labels, [0]]).astype(np.int32)
    bounds = []
    for index in range(2):
        rows = slice(4 * index, 4 * index + 4)
        batch_labels = None if labels is None else jnp.asarray(padded_labels[rows])
        predict_fn = predict_for(labels=batch_labels)
        bounds.append(
            bj.nll_bound(jax.random.fold_in(key, index), predict_fn, padded[rows], **BOUND)
        )
    return np.concatenate(bounds)[:7]


def test_bound_over_is_the_bound_of_each_batch_with_its_own_key():
    key = jax.random.key(4)
    oracle = bj.dataset_oracle(DATA)
    nats = held_out.bound_over(key, lambda labels: oracle, DATA, batch_size=4, **BOUND)
    np.testing.assert_allclose(nats, _bounds_batch_by_batch(key, lambda labels: oracle), rtol=1e-6)


def test_bound_over_gives_each_batch_the_predict_function_of_its_labels():
    key = jax.random.key(6)
    oracle = bj.dataset_oracle(DATA)
    labels = np.arange(7) % 3

    def labelled(batch_labels, counts, t):  # the label adds births, capped at the room left
        return jnp.minimum(oracle(counts, t) + batch_labels[:, None, None, None], 4 - counts)

    def predict_for(labels):
        return jax.tree_util.Partial(labelled, labels)

    nats = held_out.bound_over(key, predict_for, DATA, batch_size=4, labels=labels, **BOUND)
    expected = _bounds_batch_by_batch(key, predict_for, labels)
    np.testing.assert_allclose(nats, expected, rtol=1e-6)
    unlabelled = held_out.bound_over(key, lambda labels: oracle, DATA, batch_size=4, **BOUND)
    assert not np.allclose(nats, unlabelled)  # the labels reached the batches


def test_histogram_baseline_in_closed_form():
    train = np.array([0, 1, 1]).reshape(3, 1, 1, 1)
    test = np.array([1, 0]).reshape(2, 1, 1, 1)
    # add-one smoothing over {0, 1}: p(0) = 2/5, p(1) = 3/5.
    expected = -(math.log2(3 / 5) + math.log2(2 / 5)) / 2
    assert math.isclose(held_out.histogram_bits_per_dim(train, test, 1), expected)
    # positions are separate histograms
    train = np.array([[0, 1], [0, 1]]).reshape(2, 1, 2, 1)
    test = np.array([[0, 1]]).reshape(1, 1, 2, 1)
    assert math.isclose(held_out.histogram_bits_per_dim(train, test, 1), -math.log2(3 / 4))
