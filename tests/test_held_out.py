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


def test_bound_over_is_the_bound_of_each_batch_with_its_own_key():
    key = jax.random.key(4)
    oracle = bj.dataset_oracle(DATA)
    nats = held_out.bound_over(
        key, oracle, DATA, batch_size=4, t_end=8.0, max_count=4, num_time_samples=3
    )
    padded = np.concatenate([DATA, np.zeros((1, 2, 2, 1), DATA.dtype)])
    expected = np.concatenate(
        [
            np.asarray(
                bj.nll_bound(
                    jax.random.fold_in(key, index),
                    oracle,
                    padded[4 * index : 4 * index + 4],
                    t_end=8.0,
                    max_count=4,
                    num_time_samples=3,
                )
            )
            for index in range(2)
        ]
    )[:7]
    np.testing.assert_allclose(nats, expected, rtol=1e-6)


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
