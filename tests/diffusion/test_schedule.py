"""Observation-time grids: the reference construction, its continuous version and sub-grids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blackout_jax import (
    GRIDS,
    continuous_time,
    grid_position,
    observation_times,
    sampling_times,
    subgrid,
)


def logit_survival(t: np.ndarray) -> np.ndarray:
    """``logit(exp(-t)) = -log(expm1(t))`` in float64."""
    return -np.log(np.expm1(t))


def reference_times_by_bisection(num_steps: int, t_end: float) -> np.ndarray:
    """The reference grid in float64, solving ``logit(exp(-t_k)) = f_k`` by bisection.

    ``L = log(exp(t_end) - 1)``, ``f_k = L - 2L (k - 1) / (T - 1)`` for ``k = 1..T``; ``t_0 = 0``.
    ``logit(exp(-t))`` decreases in ``t``, so the root is bracketed by ``[0, t_end + 1]``.
    """
    big_l = np.log(np.expm1(t_end))
    k = np.arange(1, num_steps + 1, dtype=np.float64)
    f = big_l - 2.0 * big_l * (k - 1.0) / (num_steps - 1.0)
    low = np.full_like(f, 1e-30)
    high = np.full_like(f, t_end + 1.0)
    for _ in range(200):
        middle = 0.5 * (low + high)
        too_early = logit_survival(middle) > f
        low = np.where(too_early, middle, low)
        high = np.where(too_early, high, middle)
    return np.concatenate([[0.0], 0.5 * (low + high)])


@pytest.mark.parametrize(("num_steps", "t_end"), [(1000, 15.0), (1000, 20.0), (50, 10.0), (7, 1.0)])
def test_observation_times_match_bisection_reference(num_steps: int, t_end: float) -> None:
    times = observation_times(num_steps, t_end)
    reference = reference_times_by_bisection(num_steps, t_end)
    assert times.shape == (num_steps + 1,)
    assert times.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(times, np.float64), reference, rtol=4e-6, atol=0.0)


@pytest.mark.parametrize("t_end", [10.0, 15.0, 20.0])
def test_observation_times_ends(t_end: float) -> None:
    times = np.asarray(observation_times(1000, t_end), np.float64)
    assert times[0] == 0.0
    # t_1 = softplus(-L) = -log(1 - exp(-t_end)) = exp(-t_end) (1 + O(exp(-t_end)))
    np.testing.assert_allclose(times[1], -np.log1p(-np.exp(-t_end)), rtol=2e-6)
    np.testing.assert_allclose(times[1], np.exp(-t_end), rtol=1e-4)
    np.testing.assert_allclose(times[-1], t_end, rtol=1e-6)
    assert np.all(np.diff(times) > 0.0)


def test_observation_times_single_step_is_zero_and_end() -> None:
    np.testing.assert_allclose(np.asarray(observation_times(1, 15.0)), [0.0, 15.0], rtol=1e-6)


def test_logit_of_survival_is_linear_in_the_index() -> None:
    times = np.asarray(observation_times(200, 15.0), np.float64)[1:]
    logits = logit_survival(times)
    steps = np.diff(logits)
    np.testing.assert_allclose(steps, steps.mean(), rtol=2e-3)
    np.testing.assert_allclose(logits[0], -logits[-1], rtol=1e-4)


@pytest.mark.parametrize(("num_steps", "t_end"), [(1000, 15.0), (30, 20.0)])
def test_continuous_time_meets_the_grid(num_steps: int, t_end: float) -> None:
    times = observation_times(num_steps, t_end)
    u = jnp.arange(num_steps, dtype=jnp.float32) / (num_steps - 1)
    np.testing.assert_allclose(
        np.asarray(continuous_time(u, t_end)), np.asarray(times[1:]), rtol=1e-6
    )


def test_continuous_time_ends_and_monotonicity() -> None:
    u = jnp.linspace(0.0, 1.0, 10001)
    t = np.asarray(continuous_time(u, 15.0), np.float64)
    np.testing.assert_allclose(t[0], np.exp(-15.0), rtol=1e-5)
    np.testing.assert_allclose(t[-1], 15.0, rtol=1e-6)
    assert np.all(np.diff(t) > 0.0)


def test_continuous_time_keeps_shape() -> None:
    u = jax.random.uniform(jax.random.key(0), (3, 4))
    t = continuous_time(u, 15.0)
    assert t.shape == (3, 4)
    assert t.dtype == jnp.float32


def test_grid_position_is_the_index_on_the_grid() -> None:
    num_steps = 100
    times = observation_times(num_steps, 15.0)
    positions = np.asarray(grid_position(times[1:], 15.0, num_steps))
    np.testing.assert_allclose(positions, np.arange(1, num_steps + 1), atol=2e-3)


def test_subgrid_every_kth_point() -> None:
    times = observation_times(1000, 15.0)
    coarse = subgrid(times, 10)
    assert coarse.shape == (11,)
    np.testing.assert_array_equal(np.asarray(coarse), np.asarray(times)[::100])


@pytest.mark.parametrize("num_steps", [1, 3, 7, 999, 1000])
def test_subgrid_keeps_both_ends_and_order(num_steps: int) -> None:
    times = np.asarray(observation_times(1000, 15.0))
    coarse = np.asarray(subgrid(times, num_steps))
    assert coarse.shape == (num_steps + 1,)
    assert coarse[0] == 0.0
    assert coarse[-1] == times[-1]
    assert np.all(np.diff(coarse) > 0)
    assert np.all(np.isin(coarse, times))


@pytest.mark.parametrize("num_steps", [0, 11, 2.5])
def test_subgrid_rejects_bad_step_counts(num_steps) -> None:
    with pytest.raises(ValueError, match="num_steps"):
        subgrid(observation_times(10, 15.0), num_steps)


def test_sampling_times_logit_is_a_fresh_k_point_grid() -> None:
    times = sampling_times("logit", 10, t_end=15.0, diffusion_steps=1000)
    np.testing.assert_array_equal(np.asarray(times), np.asarray(observation_times(10, 15.0)))


@pytest.mark.parametrize("num_steps", [1, 10, 250, 1000])
def test_sampling_times_subgrid_walks_the_reference_skip_loop(num_steps: int) -> None:
    """The times of the reference loop ``t = obs[i + 1], s = obs[i + 1 - d]``, i = T-1, T-1-d."""
    training = np.asarray(observation_times(1000, 15.0))
    skip = 1000 // num_steps
    visited = set()
    for i in range(1000 - 1, -1, -skip):
        visited.update((training[i + 1], training[i + 1 - skip]))
    times = np.asarray(sampling_times("subgrid", num_steps, t_end=15.0, diffusion_steps=1000))
    assert times.shape == (num_steps + 1,)
    np.testing.assert_array_equal(times, np.sort(np.array(sorted(visited))))
    np.testing.assert_array_equal(times, training[::skip])


def test_sampling_grids_agree_at_the_training_step_count() -> None:
    logit = sampling_times("logit", 100, t_end=10.0, diffusion_steps=100)
    sub = sampling_times("subgrid", 100, t_end=10.0, diffusion_steps=100)
    np.testing.assert_array_equal(np.asarray(logit), np.asarray(sub))


def test_sampling_grids_differ_below_the_training_step_count() -> None:
    training = np.asarray(observation_times(1000, 15.0))
    logit = np.asarray(sampling_times("logit", 10, t_end=15.0, diffusion_steps=1000))
    sub = np.asarray(sampling_times("subgrid", 10, t_end=15.0, diffusion_steps=1000))
    np.testing.assert_allclose(logit[-1], sub[-1], rtol=1e-6)
    # the logit grid starts at t_1 ~ e^-15; the sub-grid's first step ends at t_100
    np.testing.assert_allclose(logit[1], training[1], rtol=1e-5)
    assert sub[1] == training[100]
    assert logit[1] < sub[1]


@pytest.mark.parametrize(
    ("grid", "num_steps", "diffusion_steps", "parts"),
    [
        (
            "subgrid",
            300,
            1000,
            r"num_steps must divide diffusion_steps = 1000, got num_steps = 300",
        ),
        ("subgrid", 2000, 1000, r"num_steps must divide"),
        ("subgrid", 10, 0, r"diffusion_steps must be an int >= 1, got 0"),
        ("optimal", 10, 1000, r"grid must be one of \('logit', 'subgrid'\), got 'optimal'"),
        ("logit", 0, 1000, r"num_steps must be >= 1, got 0"),
        ("logit", 2.0, 1000, r"num_steps must be a Python int, got 2.0"),
    ],
)
def test_sampling_times_rejects_bad_arguments(grid, num_steps, diffusion_steps, parts) -> None:
    assert GRIDS == ("logit", "subgrid")
    with pytest.raises(ValueError, match=parts):
        sampling_times(grid, num_steps, t_end=15.0, diffusion_steps=diffusion_steps)


def test_schedule_under_jit_and_vmap() -> None:
    u = jnp.linspace(0.0, 1.0, 9)
    eager = continuous_time(u, 15.0)
    jitted = jax.jit(continuous_time)(u, 15.0)
    mapped = jax.vmap(continuous_time, in_axes=(0, None))(u, 15.0)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(eager), rtol=1e-6)

    grid = jax.jit(observation_times, static_argnums=0)(20, 15.0)
    np.testing.assert_allclose(np.asarray(grid), np.asarray(observation_times(20, 15.0)), rtol=1e-6)
    grids = jax.vmap(observation_times, in_axes=(None, 0))(5, jnp.array([10.0, 15.0]))
    assert grids.shape == (2, 6)
    np.testing.assert_allclose(np.asarray(grids[1]), np.asarray(observation_times(5, 15.0)))

    positions = jax.jit(grid_position, static_argnums=2)(grid[1:], 15.0, 20)
    np.testing.assert_allclose(np.asarray(positions), np.arange(1, 21), atol=2e-3)
