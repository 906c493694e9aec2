"""Reverse-time samplers: update rules, exact marginals, keys, jit/vmap, progress, imputation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from blackout_jax import (
    METHODS,
    dataset_oracle,
    impute,
    observation_times,
    sample,
    sampling,
    subgrid,
)
from tests.sampling import exact_kernels

MAX_COUNT = 16
T_END = 15.0
TIMES = observation_times(50, T_END)
SHAPE = (6, 3, 3, 1)


def room_left(counts, t):
    """``N - n_t``: the exact conditional mean when every clean count is ``N``."""
    return (MAX_COUNT - counts).astype(jnp.float32)


def _room_until(stop_time, counts, t):
    active = (t > stop_time).reshape((-1,) + (1,) * (counts.ndim - 1))
    return jnp.where(active, room_left(counts, t), 0.0)


def room_until(stop_time: float) -> jax.tree_util.Partial:
    """Predict the room left while ``t > stop_time`` and nothing afterwards.

    A ``Partial`` whose argument is the stop time: every stop time shares one compilation.
    """
    return jax.tree_util.Partial(_room_until, jnp.float32(stop_time))


def _constant(value, counts, t):
    return jnp.full(counts.shape, value, jnp.float32)


# Stops the births at t = 1: the result is random, about Binomial(N, e^{-1}) per count.
RANDOM_PREDICTOR = room_until(1.0)


@pytest.mark.parametrize("method", METHODS)
def test_sample_shape_dtype_range_and_keys(method: str) -> None:
    def draw(key):
        return sample(key, RANDOM_PREDICTOR, SHAPE, TIMES, max_count=MAX_COUNT, method=method)

    first = draw(jax.random.key(0))
    assert first.shape == SHAPE
    assert first.dtype == jnp.int32
    values = np.asarray(first)
    assert values.min() >= 0
    assert values.max() <= MAX_COUNT
    assert values.min() < values.max()
    np.testing.assert_array_equal(values, np.asarray(draw(jax.random.key(0))))
    assert np.any(values != np.asarray(draw(jax.random.key(1))))


@pytest.mark.parametrize("method", ["binomial_bridge", "tau_leaping"])
def test_samplers_take_keys_of_any_implementation(method: str) -> None:
    """An ``rbg`` key (``jax.random.poisson`` accepts threefry keys only) draws the prior, the
    binomials and the capped Poisson births alike."""

    def draw(seed):
        key = jax.random.key(seed, impl="rbg")
        return np.asarray(
            sample(key, RANDOM_PREDICTOR, SHAPE, TIMES, max_count=MAX_COUNT, method=method)
        )

    first = draw(0)
    assert first.shape == SHAPE and first.min() >= 0 and first.max() <= MAX_COUNT
    np.testing.assert_array_equal(first, draw(0))
    assert np.any(first != draw(1))


# One step from t_end to 0 has r = 1: the bridge adds clip(round(yhat), 0, N - n) exactly;
# tau-leaping adds Poisson(yhat) (clipped), which is 0 for yhat = 0 and N for yhat = 40 (with
# probability 1 - 1e-5 per count). A zero prediction leaves the prior draw, empty at t_end = 15.
SINGLE_STEP_CASES = {
    "binomial_bridge": [(3.4, 3), (3.6, 4), (40.0, MAX_COUNT), (-2.0, 0), (0.0, 0)],
    "tau_leaping": [(0.0, 0), (40.0, MAX_COUNT)],
    # Two stages t_end -> t_end / 2 -> 0: the first has r ~ e^{-7.5}, the second r = 1.
    "trapezoidal_bridge": [(40.0, MAX_COUNT), (-2.0, 0), (0.0, 0)],
    "trapezoidal_leaping": [(0.0, 0), (40.0, MAX_COUNT)],
}


@pytest.mark.parametrize("method", METHODS)
def test_single_step_from_the_prior(method: str) -> None:
    times = jnp.array([0.0, T_END])
    for prediction, expected in SINGLE_STEP_CASES[method]:
        constant = jax.tree_util.Partial(_constant, jnp.float32(prediction))
        draws = sample(
            jax.random.key(3), constant, (4, 5), times, max_count=MAX_COUNT, method=method
        )
        np.testing.assert_array_equal(np.asarray(draws), expected)


def test_bridge_with_the_exact_mean_of_a_full_image_fills_it() -> None:
    times = subgrid(observation_times(1000, T_END), 10)
    draws = sample(jax.random.key(2), room_left, (8, 4, 4), times, max_count=MAX_COUNT)
    np.testing.assert_array_equal(np.asarray(draws), MAX_COUNT)


@pytest.mark.parametrize("stop_index", [5, 30, 45])
def test_bridge_walk_has_the_exact_forward_marginal(chi_square_pvalue, stop_index: int) -> None:
    """Exact bridges towards a full image, stopped at t_j: n_{t_j} ~ Binomial(N, p_{t_j})."""
    predictor = room_until(float(TIMES[stop_index]) * (1 + 1e-4))  # t_j itself is not active
    draws = sample(
        jax.random.key(4 + stop_index), predictor, (1000, 20), TIMES, max_count=MAX_COUNT
    )
    support = np.arange(MAX_COUNT + 1)
    pmf = stats.binom.pmf(support, MAX_COUNT, np.exp(-np.float64(TIMES[stop_index])))
    assert chi_square_pvalue(np.asarray(draws), support, pmf) > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_single_step_law_of_each_method(chi_square_pvalue, method: str) -> None:
    """From the empty start, one step t_end -> s with yhat = N - n: its exact law.

    Binomial(N, r) for both bridges (the trapezoidal one extrapolates exactly N - n_mid here),
    clipped Poisson(N r) for tau-leaping, the two-stage mixture for trapezoidal leaping.
    """
    s = 0.5
    times = jnp.array([0.0, s, T_END])
    draws = sample(
        jax.random.key(5),
        room_until(s * 1.001),
        (1000, 20),
        times,
        max_count=MAX_COUNT,
        method=method,
    )
    r = np.exp(-s) * np.expm1(-(T_END - s)) / np.expm1(-T_END)
    support = np.arange(MAX_COUNT + 1)
    if method in ("binomial_bridge", "trapezoidal_bridge"):
        pmf = stats.binom.pmf(support, MAX_COUNT, r)
    elif method == "tau_leaping":  # clip(Poisson(N r), 0, N)
        pmf = stats.poisson.pmf(support, MAX_COUNT * r)
        pmf[-1] += stats.poisson.sf(MAX_COUNT, MAX_COUNT * r)
    else:
        kernel = exact_kernels.step_kernel(
            method, lambda states, t: MAX_COUNT - states, T_END, s, MAX_COUNT
        )
        pmf = kernel[0]
    assert chi_square_pvalue(np.asarray(draws), support, pmf) > 1e-3


def test_sample_under_jit() -> None:
    static = jax.jit(sample, static_argnames=("predict_fn", "shape", "max_count", "method"))
    jitted = static(
        jax.random.key(9),
        predict_fn=RANDOM_PREDICTOR,
        shape=SHAPE,
        times=TIMES,
        max_count=MAX_COUNT,
    )
    eager = sample(jax.random.key(9), RANDOM_PREDICTOR, SHAPE, TIMES, max_count=MAX_COUNT)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))

    def with_grid(key, times):  # the grid is traced: its values are not checked, only used
        return sample(
            key, RANDOM_PREDICTOR, SHAPE, times, max_count=MAX_COUNT, method="tau_leaping"
        )

    traced = jax.jit(with_grid)(jax.random.key(9), TIMES)
    np.testing.assert_array_equal(
        np.asarray(traced), np.asarray(with_grid(jax.random.key(9), TIMES))
    )


def test_sample_under_vmap_over_keys() -> None:
    def draw(key):
        return sample(key, RANDOM_PREDICTOR, SHAPE, TIMES, max_count=MAX_COUNT)

    keys = jax.random.split(jax.random.key(10), 3)
    mapped = jax.jit(jax.vmap(draw))(keys)
    assert mapped.shape == (3, *SHAPE)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(mapped[i]), np.asarray(draw(keys[i])))


def test_sample_with_parameters_in_a_partial() -> None:
    def apply(params, counts, t):
        return params["scale"] * (MAX_COUNT - counts).astype(jnp.float32)

    shape = (2, 3)
    full = jax.tree_util.Partial(apply, {"scale": jnp.float32(1.0)})
    none = jax.tree_util.Partial(apply, {"scale": jnp.float32(0.0)})
    draws_full = sample(jax.random.key(12), full, shape, TIMES, max_count=MAX_COUNT)
    draws_none = sample(jax.random.key(12), none, shape, TIMES, max_count=MAX_COUNT)
    np.testing.assert_array_equal(np.asarray(draws_full), MAX_COUNT)
    np.testing.assert_array_equal(np.asarray(draws_none), 0)


def test_progress_callback_does_not_change_the_draws() -> None:
    reports: list[tuple[int, int]] = []

    def progress(steps_done: int, total: int) -> None:
        reports.append((steps_done, total))

    shape = SHAPE
    quiet = sample(jax.random.key(13), RANDOM_PREDICTOR, shape, TIMES, max_count=MAX_COUNT)
    loud = sample(
        jax.random.key(13), RANDOM_PREDICTOR, shape, TIMES, max_count=MAX_COUNT, progress=progress
    )
    loud.block_until_ready()
    jax.effects_barrier()
    np.testing.assert_array_equal(np.asarray(loud), np.asarray(quiet))
    assert reports[-1] == (50, 50)
    assert all(isinstance(done, int) and total == 50 for done, total in reports)
    assert 15 <= len(reports) <= 25


def test_the_same_progress_callback_compiles_once() -> None:
    def progress(steps_done: int, total: int) -> None:
        del steps_done, total

    def run(key: int) -> None:
        sample(
            jax.random.key(key),
            RANDOM_PREDICTOR,
            SHAPE,
            TIMES,
            max_count=MAX_COUNT,
            progress=progress,
        )

    run(14)
    compiled = sampling._run_sampler._cache_size()
    run(15)
    assert sampling._run_sampler._cache_size() == compiled


def test_progress_must_be_a_callable() -> None:
    with pytest.raises(ValueError, match="progress must be a callable"):
        sample(
            jax.random.key(0), RANDOM_PREDICTOR, SHAPE, TIMES, max_count=MAX_COUNT, progress=True
        )


def test_methods_are_the_steps_in_order() -> None:
    assert tuple(sampling.STEPS) == METHODS
    assert METHODS == (
        "binomial_bridge",
        "tau_leaping",
        "trapezoidal_bridge",
        "trapezoidal_leaping",
    )


def small_dataset() -> np.ndarray:
    rng = np.random.default_rng(3)
    data = rng.integers(0, MAX_COUNT + 1, (6, 2, 3))
    assert len(np.unique(data.reshape(6, -1), axis=0)) == 6
    return data


def test_impute_keeps_observations_and_completes_a_member() -> None:
    # Every method's imputation is checked against the digits in tests/sampling/test_impute.py;
    # this one, with the default bridge sampler, also runs under jit with the counts traced.
    data = small_dataset()
    oracle = dataset_oracle(data)
    observed = np.zeros((2, 3), bool)
    observed[0, :] = True  # the first row of each example is known
    counts = np.repeat(data, 10, axis=0)  # 60 examples, 10 copies of each member
    mask = np.broadcast_to(observed, counts.shape)

    def fill(key, known_counts):
        return impute(key, oracle, known_counts, mask, TIMES, max_count=MAX_COUNT)

    filled = np.asarray(fill(jax.random.key(14), np.where(mask, counts, 0)))
    assert filled.dtype == np.int32
    np.testing.assert_array_equal(filled[mask], counts[mask])
    # The first rows of the dataset are distinct, so the observed row identifies the member.
    # Imputation is approximate: with the exact oracle about 70-90% of the bridge sampler's
    # completions are that member (measured over seeds and 50-200 steps); chance is about 1/6.
    assert len(np.unique(data[:, 0, :], axis=0)) == 6
    members = np.mean(np.all(filled == counts, axis=(1, 2)))
    assert members >= 0.5
    jitted = jax.jit(fill)(jax.random.key(14), np.where(mask, counts, 0))
    np.testing.assert_array_equal(np.asarray(jitted), filled)


def _first_state_recorder(counts, t):
    """Predicts nothing: one step ``[0, t_end]`` then returns the initial state unchanged."""
    return jnp.zeros(counts.shape, jnp.float32)


# The start is drawn before the loop by the same code for every method: one of each family.
@pytest.mark.parametrize("method", ["binomial_bridge", "tau_leaping"])
def test_zero_start_begins_from_an_all_zero_state(method: str) -> None:
    times = jnp.array([0.0, 0.5])  # prior rate (N/2) e^-0.5 ~ 4.9: the prior draw is not zero
    shape = (64, 4, 4, 1)
    zero = sample(
        jax.random.key(5),
        _first_state_recorder,
        shape,
        times,
        max_count=MAX_COUNT,
        method=method,
        start="zeros",
    )
    np.testing.assert_array_equal(np.asarray(zero), 0)
    prior = np.asarray(
        sample(
            jax.random.key(5),
            _first_state_recorder,
            shape,
            times,
            max_count=MAX_COUNT,
            method=method,
        )
    )
    rate = MAX_COUNT / 2 * np.exp(-0.5)
    assert abs(prior.mean() - rate) < 5 * np.sqrt(rate / prior.size)


def test_zero_start_of_impute_keeps_the_observed_marginal() -> None:
    times = jnp.array([0.0, 0.5])
    counts = np.full((32, 4, 4, 1), 7, np.int32)
    mask = np.zeros(counts.shape, bool)
    mask[:, :2] = True
    filled = np.asarray(
        impute(
            jax.random.key(6),
            _first_state_recorder,
            counts * mask,
            mask,
            times,
            max_count=MAX_COUNT,
            start="zeros",
        )
    )
    np.testing.assert_array_equal(filled[mask], 7)  # the bridge reaches the observed value
    np.testing.assert_array_equal(filled[~mask], 0)


def test_sampler_start_is_checked() -> None:
    with pytest.raises(ValueError, match=r"start must be one of \('prior', 'zeros'\), got 'black'"):
        sample(jax.random.key(0), room_left, SHAPE, TIMES, max_count=MAX_COUNT, start="black")
