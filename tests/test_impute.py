"""Imputation with the dataset oracle: observed entries kept, missing ones recovered."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

import blackout_jax as bj


@pytest.fixture(scope="module")
def digits():
    images = load_digits().images.astype(np.int32).reshape(-1, 64)
    return np.unique(images, axis=0)[:400].reshape(-1, 8, 8, 1)  # distinct examples


def _impute(digits, truth, observed, seed=0, method="binomial_bridge"):
    return np.asarray(
        bj.impute(
            jax.random.key(seed),
            bj.dataset_oracle(digits),
            jnp.asarray(truth),
            jnp.asarray(observed),
            bj.observation_times(300, 15.0),
            max_count=16,
            method=method,
        )
    )


@pytest.mark.parametrize("method", bj.METHODS)
def test_observed_entries_are_kept_and_missing_recovered(digits, method):
    rng = np.random.default_rng(1)
    truth = digits[rng.choice(len(digits), 40, replace=False)]
    observed = rng.random(truth.shape) < 0.97
    completed = _impute(digits, truth, observed, method=method)
    assert completed.dtype == np.int32 and completed.min() >= 0 and completed.max() <= 16
    np.testing.assert_array_equal(completed[observed], truth[observed])
    # Nearly all of each example is observed, which singles out one dataset member: most
    # completions must be that member (measured: about 90% of them with either sampler).
    exact = (completed.reshape(40, -1) == truth.reshape(40, -1)).all(axis=1)
    assert exact.mean() >= 0.7
    # Without conditioning the same entries are far off.
    unconditional = np.asarray(
        bj.sample(
            jax.random.key(0),
            bj.dataset_oracle(digits),
            truth.shape,
            bj.observation_times(300, 15.0),
            max_count=16,
        )
    )
    error = np.abs(completed - truth)[~observed].mean()
    assert error < 0.5 * np.abs(unconditional - truth)[~observed].mean()


def test_fully_observed_returns_the_input(digits):
    truth = digits[:5]
    completed = _impute(digits, truth, np.ones(truth.shape, bool))
    np.testing.assert_array_equal(completed, truth)


def test_impute_checks_its_inputs(digits):
    truth = digits[:2]
    with pytest.raises(ValueError, match="observed must have the shape"):
        _impute(digits, truth, np.ones((2, 8, 8), bool))
    with pytest.raises(ValueError, match="boolean mask"):
        _impute(digits, truth, np.ones(truth.shape, np.int32))
    bad = truth.copy()
    bad[1, 2, 3, 0] = 17
    with pytest.raises(
        ValueError, match=r"counts must be <= max_count=16; found 17 at index \(1, 2, 3, 0\)"
    ):
        _impute(digits, bad, np.ones(truth.shape, bool))
