"""Boundary checks: every bad input is a ValueError naming the argument, the value and its index.

Values are checked only when they are concrete; under ``jax.jit`` the inputs are tracers and no
check runs (the last tests pin that behaviour down).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blackout_jax import (
    bridge_log_prob,
    bridge_sample,
    dataset_oracle,
    forward_log_prob,
    forward_sample,
    impute,
    nll_bound,
    observation_times,
    prior_kl,
    prior_sample,
    sample,
    training_loss,
)

KEY = jax.random.key(0)
GRID = observation_times(10, 15.0)


def message(*parts: str) -> str:
    """A regex for a message that starts with ``parts[0]`` and contains the others in order."""
    return "^" + ".*".join(re.escape(part) for part in parts)


def constant_predictor(counts, t):
    return jnp.ones(counts.shape, jnp.float32)


COUNT_CASES = [
    # (bad counts, the value named, its index)
    (np.array([0.0, 2.0, -1.0, 3.0]), "-1.0", "(2,)"),
    (np.array([[0, 1], [2, -3]]), "-3", "(1, 1)"),
    (np.array([0.0, 1.5, 2.0]), "1.5", "(1,)"),
    (np.array([1.0, np.nan]), "nan", "(1,)"),
    (np.array([1.0, np.inf]), "inf", "(1,)"),
]


@pytest.mark.parametrize(("bad", "value", "index"), COUNT_CASES)
def test_forward_functions_reject_bad_counts(bad, value: str, index: str) -> None:
    good = np.full(bad.shape, 5.0)
    with pytest.raises(ValueError, match=message("nt", value, index)):
        forward_log_prob(bad, good, 0.5)
    with pytest.raises(ValueError, match=message("n0", value, index)):
        forward_log_prob(np.zeros(bad.shape), bad, 0.5)
    with pytest.raises(ValueError, match=message("n0", value, index)):
        forward_sample(KEY, bad, 0.5)


@pytest.mark.parametrize(("bad", "value", "index"), COUNT_CASES)
def test_bridge_functions_reject_bad_counts(bad, value: str, index: str) -> None:
    zeros = np.zeros(bad.shape)
    full = np.full(bad.shape, 9.0)
    with pytest.raises(ValueError, match=message("ns", value, index)):
        bridge_log_prob(bad, zeros, full, 0.1, 0.5)
    with pytest.raises(ValueError, match=message("nt", value, index)):
        bridge_log_prob(zeros, bad, full, 0.1, 0.5)
    with pytest.raises(ValueError, match=message("n0", value, index)):
        bridge_log_prob(zeros, zeros, bad, 0.1, 0.5)
    with pytest.raises(ValueError, match=message("nt", value, index)):
        bridge_sample(KEY, bad, full, 0.1, 0.5)


def test_bridge_sample_rejects_more_noisy_than_clean_counts() -> None:
    with pytest.raises(ValueError, match=message("n0 - nt", "-2", "(1,)")):
        bridge_sample(KEY, np.array([1, 5, 2]), np.array([3, 3, 3]), 0.1, 0.5)


@pytest.mark.parametrize(("bad", "value", "index"), COUNT_CASES)
def test_dataset_oracle_rejects_bad_data(bad, value: str, index: str) -> None:
    if bad.ndim == 1:  # one example of shape (len,): the index gains the example axis
        bad, index = bad[None], "(0, " + index[1:-2] + ")"
    with pytest.raises(ValueError, match=message("data", value, index)):
        dataset_oracle(bad)


def test_counts_above_max_count_are_rejected() -> None:
    n0 = np.array([[3, 16], [17, 2]])
    with pytest.raises(ValueError, match=message("n0", "max_count=16", "17", "(1, 0)")):
        prior_kl(n0, t_end=15.0, max_count=16)
    with pytest.raises(ValueError, match=message("n0", "max_count=16", "17", "(1, 0)")):
        nll_bound(KEY, constant_predictor, n0, t_end=15.0, max_count=16, num_time_samples=2)
    counts = np.array([[1, 40], [2, 3]])
    observed = np.array([[True, True], [False, False]])
    with pytest.raises(ValueError, match=message("counts", "max_count=16", "40", "(0, 1)")):
        impute(KEY, constant_predictor, counts, observed, GRID, max_count=16)


def test_negative_times_are_rejected() -> None:
    t = np.array([0.1, 0.2, -0.5])
    with pytest.raises(ValueError, match=message("t", "-0.5", "(2,)")):
        forward_log_prob(1.0, 2.0, t)
    with pytest.raises(ValueError, match=message("t", "-0.5", "(2,)")):
        forward_sample(KEY, 2.0, t)
    with pytest.raises(ValueError, match=message("s", "-0.5", "(2,)")):
        bridge_log_prob(1.0, 1.0, 2.0, t, 1.0)
    with pytest.raises(ValueError, match=message("s", "-0.5", "(2,)")):
        bridge_sample(KEY, 1.0, 2.0, t, 1.0)
    with pytest.raises(ValueError, match=message("t", "nan", "(0,)")):
        forward_log_prob(1.0, 2.0, np.array([np.nan]))


def test_bridge_requires_s_before_t() -> None:
    s = np.array([0.1, 0.5, 0.9])
    t = np.array([0.2, 0.5, 0.3])
    with pytest.raises(ValueError, match=message("s", "0.5", "0.5", "(1,)")):
        bridge_log_prob(1.0, 1.0, 2.0, s, t)
    with pytest.raises(ValueError, match=message("s", "0.5", "0.5", "(1,)")):
        bridge_sample(KEY, 1.0, 2.0, s, t)
    with pytest.raises(ValueError, match=message("s", "2.0", "1.0")):
        bridge_log_prob(1.0, 1.0, 2.0, 2.0, 1.0)


GRID_CASES = [
    (np.array([]), "times", "shape (0,)"),
    (np.array([0.0]), "times", "shape (1,)"),
    (np.zeros((2, 3)), "times", "shape (2, 3)"),
    (np.array([0.1, 0.5, 1.0]), "times", "start at 0", "0.1", "(0,)"),
    (np.array([0.0, 0.5, 0.4, 1.0]), "times", "increasing", "0.4", "(2,)"),
    (np.array([0.0, 0.5, 0.5, 1.0]), "times", "increasing", "0.5", "(2,)"),
    (np.array([0.0, np.nan, 1.0]), "times", "nan", "(1,)"),
]


@pytest.mark.parametrize("case", GRID_CASES)
def test_bad_time_grids_are_rejected(case) -> None:
    times, *parts = case
    with pytest.raises(ValueError, match=message(*parts)):
        sample(KEY, constant_predictor, (2, 3), times, max_count=16)
    with pytest.raises(ValueError, match=message(*parts)):
        impute(
            KEY, constant_predictor, np.zeros((2, 3)), np.zeros((2, 3), bool), times, max_count=16
        )


@pytest.mark.parametrize("max_count", [0, -3, 2.5, True])
def test_bad_max_count_is_rejected(max_count) -> None:
    pattern = message("max_count", repr(max_count))
    with pytest.raises(ValueError, match=pattern):
        sample(KEY, constant_predictor, (2, 3), GRID, max_count=max_count)
    with pytest.raises(ValueError, match=pattern):
        prior_sample(KEY, (2,), t_end=15.0, max_count=max_count)
    with pytest.raises(ValueError, match=pattern):
        prior_kl(np.zeros(2), t_end=15.0, max_count=max_count)
    with pytest.raises(ValueError, match=pattern):
        nll_bound(
            KEY,
            constant_predictor,
            np.zeros((2, 2)),
            t_end=15.0,
            max_count=max_count,
            num_time_samples=2,
        )


def test_other_sampler_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=message("method", "'euler'")):
        sample(KEY, constant_predictor, (2, 3), GRID, max_count=16, method="euler")
    with pytest.raises(ValueError, match=message("shape", "()")):
        sample(KEY, constant_predictor, (), GRID, max_count=16)
    with pytest.raises(ValueError, match=message("shape", "(2, 0)")):
        sample(KEY, constant_predictor, (2, 0), GRID, max_count=16)
    with pytest.raises(ValueError, match=message("observed", "(2, 3)", "(3, 2)")):
        impute(
            KEY, constant_predictor, np.zeros((2, 3)), np.zeros((3, 2), bool), GRID, max_count=16
        )
    with pytest.raises(ValueError, match=message("observed", "boolean", "int")):
        impute(KEY, constant_predictor, np.zeros((2, 3)), np.zeros((2, 3), int), GRID, max_count=16)
    with pytest.raises(ValueError, match=message("num_time_samples", "0")):
        nll_bound(
            KEY, constant_predictor, np.zeros((2, 2)), t_end=15.0, max_count=16, num_time_samples=0
        )


@pytest.mark.parametrize(
    ("num_steps", "t_end", "parts"),
    [
        (0, 15.0, ("num_steps", "0")),
        (-2, 15.0, ("num_steps", "-2")),
        (10, 0.0, ("t_end", "0.0")),
        (10, -1.0, ("t_end", "-1.0")),
        (10, float("nan"), ("t_end", "nan")),
    ],
)
def test_observation_times_arguments_are_checked(num_steps, t_end, parts) -> None:
    with pytest.raises(ValueError, match=message(*parts)):
        observation_times(num_steps, t_end)


def test_unknown_weighting_is_named() -> None:
    with pytest.raises(ValueError, match=message("weighting", "'uniform'")):
        training_loss(
            jax.random.split(KEY, 2),
            constant_predictor,
            np.zeros((2, 3)),
            weighting="uniform",
            t_end=15.0,
            num_steps=10,
        )


def test_values_are_not_checked_under_jit() -> None:
    """Traced inputs skip the checks: no error, and the result is computed from the values."""
    log_probs = jax.jit(forward_log_prob)(
        jnp.array([-1.0, 1.5, 7.0]), jnp.array([3.0, 3.0, 3.0]), 0.5
    )
    np.testing.assert_array_equal(np.asarray(log_probs), -np.inf)  # all off the support
    bridge = jax.jit(bridge_log_prob)(1.0, 1.0, 2.0, jnp.float32(0.9), jnp.float32(0.3))
    assert bridge.shape == ()

    def run(times):
        return sample(KEY, constant_predictor, (2, 3), times, max_count=16)

    bad_grid = jnp.array([0.0, 0.5, 0.4, 1.0])
    with pytest.raises(ValueError):
        run(bad_grid)
    draws = jax.jit(run)(bad_grid)  # traced grid: not checked
    assert draws.shape == (2, 3)
    assert draws.dtype == jnp.int32
