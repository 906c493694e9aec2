"""The Poisson-style loss, the three time weightings and the per-example training loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from blackout_jax import (
    WEIGHTINGS,
    continuous_time,
    example_keys,
    observation_times,
    poisson_divergence,
    poisson_loss,
    sample_time_and_weight,
    training_loss,
)

T_END = 15.0
NUM_STEPS = 40
NUM_DRAWS = 200_000


def smooth_function_of_time(t: np.ndarray) -> np.ndarray:
    """A smooth, bounded function of time for the weighting expectations."""
    return 1.0 / (1.0 + t) + 0.5 * np.sin(t)


def assert_monte_carlo_mean(samples: np.ndarray, expected: float, num_errors: float = 5.0) -> None:
    """The sample mean is within ``num_errors`` standard errors of ``expected``."""
    samples = np.asarray(samples, np.float64)
    standard_error = samples.std(ddof=1) / np.sqrt(samples.size)
    assert abs(samples.mean() - expected) <= num_errors * standard_error, (
        f"mean {samples.mean()} vs {expected} (standard error {standard_error})"
    )


def test_poisson_loss_matches_its_formula(numpy_rng) -> None:
    pred = numpy_rng.uniform(0.01, 20.0, 500).astype(np.float32)
    target = numpy_rng.integers(0, 17, 500).astype(np.float32)
    expected = pred.astype(np.float64) - target * np.log(pred.astype(np.float64))
    actual = poisson_loss(pred, target)
    assert actual.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5, atol=1e-5)


def test_poisson_loss_with_zero_target_is_the_prediction() -> None:
    pred = jnp.array([0.0, 1e-30, 0.5, 7.0])
    np.testing.assert_array_equal(np.asarray(poisson_loss(pred, 0.0)), np.asarray(pred))


def test_poisson_loss_is_minimised_by_the_mean_target(numpy_rng) -> None:
    targets = numpy_rng.poisson(3.7, 5000).astype(np.float32)
    grid = jnp.linspace(0.5, 8.0, 751)
    expected_loss = jnp.mean(poisson_loss(grid[:, None], targets[None, :]), axis=1)
    best = float(grid[int(jnp.argmin(expected_loss))])
    assert abs(best - targets.mean()) <= 0.01


def test_poisson_divergence_is_nonnegative_and_zero_only_at_equality(numpy_rng) -> None:
    pred = numpy_rng.uniform(0.01, 20.0, 2000).astype(np.float32)
    target = numpy_rng.integers(0, 21, 2000).astype(np.float32)
    divergence = np.asarray(poisson_divergence(pred, target), np.float64)
    assert np.all(divergence >= 0.0)
    p, m = pred.astype(np.float64), target.astype(np.float64)
    expected = p - m + np.where(m > 0, m * np.log(np.where(m > 0, m, 1.0) / p), 0.0)
    np.testing.assert_allclose(divergence, expected, rtol=1e-4, atol=1e-5)
    clearly_different = np.abs(p - m) > 0.05 * np.maximum(m, 1.0)
    assert np.all(divergence[clearly_different] > 0.0)

    equal = jnp.array([0.0, 1.0, 3.0, 16.0, 255.0])
    np.testing.assert_allclose(np.asarray(poisson_divergence(equal, equal)), 0.0, atol=2e-5)


def test_poisson_divergence_is_the_excess_loss(numpy_rng) -> None:
    pred = numpy_rng.uniform(0.1, 10.0, 100).astype(np.float32)
    target = numpy_rng.integers(0, 11, 100).astype(np.float32)
    excess = poisson_loss(pred, target) - poisson_loss(target, target)
    np.testing.assert_allclose(
        np.asarray(poisson_divergence(pred, target)), np.asarray(excess), rtol=1e-4, atol=1e-5
    )


def grid_weights(weighting: str) -> tuple[np.ndarray, np.ndarray]:
    """``(t_k, w_k)`` for ``k = 1..T`` in float64 from the float32 grid."""
    times = np.asarray(observation_times(NUM_STEPS, T_END), np.float64)
    t, t_prev = times[1:], times[:-1]
    if weighting == "instantaneous":
        return t, NUM_STEPS * np.exp(-t) * (t - t_prev)
    return t, np.exp(-t_prev) - np.exp(-t)


@pytest.mark.parametrize("weighting", ["instantaneous", "finite_time"])
def test_grid_weightings_match_their_definition(chi_square_pvalue, weighting: str) -> None:
    t, weight = sample_time_and_weight(
        jax.random.key(11), (NUM_DRAWS,), weighting=weighting, t_end=T_END, num_steps=NUM_STEPS
    )
    assert t.shape == weight.shape == (NUM_DRAWS,)
    assert t.dtype == weight.dtype == jnp.float32
    grid_t, grid_w = grid_weights(weighting)
    t = np.asarray(t, np.float64)
    # Every time lies on the grid t_1..t_T and carries that grid point's weight.
    index = np.searchsorted(grid_t, t)
    assert np.all(index < NUM_STEPS)
    np.testing.assert_array_equal(grid_t[index], t)
    np.testing.assert_allclose(np.asarray(weight, np.float64), grid_w[index], rtol=1e-5)
    # k is uniform on 1..T.
    uniform = np.full(NUM_STEPS, 1.0 / NUM_STEPS)
    assert chi_square_pvalue(index, np.arange(NUM_STEPS), uniform) > 1e-3
    # E[w g(t)] = (1/T) sum_k w_k g(t_k).
    expected = np.mean(grid_w * smooth_function_of_time(grid_t))
    assert_monte_carlo_mean(np.asarray(weight, np.float64) * smooth_function_of_time(t), expected)


def test_elbo_weighting_matches_its_integral() -> None:
    t, weight = sample_time_and_weight(
        jax.random.key(12), (NUM_DRAWS,), weighting="elbo", t_end=T_END, num_steps=NUM_STEPS
    )
    t = np.asarray(t, np.float64)
    weight = np.asarray(weight, np.float64)
    t_min = float(continuous_time(0.0, T_END))
    assert np.all((t >= t_min * (1 - 1e-6)) & (t <= T_END * (1 + 1e-6)))
    big_l = np.log(np.expm1(T_END))
    np.testing.assert_allclose(weight, 2.0 * big_l * np.exp(-t), rtol=1e-5)

    # E_u[2L p_t g(t)] = int_{t_min}^{t_end} g(t) p_t / (1 - p_t) dt, integrated over log t.
    def integrand(log_t: float) -> float:
        time = np.exp(log_t)
        return smooth_function_of_time(time) * time / np.expm1(time)

    expected, _ = integrate.quad(integrand, np.log(t_min), np.log(T_END), limit=200)
    assert_monte_carlo_mean(weight * smooth_function_of_time(t), expected)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_sample_time_and_weight_shapes_and_keys(weighting: str) -> None:
    def draw(key):
        return sample_time_and_weight(
            key, (3, 5), weighting=weighting, t_end=T_END, num_steps=NUM_STEPS
        )

    t, weight = draw(jax.random.key(0))
    assert t.shape == weight.shape == (3, 5)
    assert np.all(np.asarray(weight) > 0)
    t_again, _ = draw(jax.random.key(0))
    t_other, _ = draw(jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(t), np.asarray(t_again))
    assert np.any(np.asarray(t) != np.asarray(t_other))
    t_jit, weight_jit = jax.jit(draw)(jax.random.key(0))
    np.testing.assert_allclose(np.asarray(t_jit), np.asarray(t), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(weight_jit), np.asarray(weight), rtol=1e-6)
    t_mapped, _ = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.key(0), 4))
    assert t_mapped.shape == (4, 3, 5)


def test_example_keys_fold_in_the_global_index() -> None:
    key = jax.random.key(21)
    indices = jnp.array([0, 5, 3, 5])
    keys = example_keys(key, indices)
    assert keys.shape == (4,)
    data = jax.random.key_data
    for i, index in enumerate([0, 5, 3, 5]):
        np.testing.assert_array_equal(
            np.asarray(data(keys[i])), np.asarray(data(jax.random.fold_in(key, index)))
        )
    assert np.any(np.asarray(data(keys[0])) != np.asarray(data(keys[1])))
    jitted = jax.jit(example_keys)(key, indices)
    np.testing.assert_array_equal(np.asarray(data(jitted)), np.asarray(data(keys)))


MAX_COUNT = 16


def clean_batch(batch: int = 8) -> jnp.ndarray:
    return jax.random.randint(jax.random.key(30), (batch, 4, 4, 1), 0, MAX_COUNT + 1)


def smooth_predictor(nt, t):
    """A per-example predictor: depends on the example's own counts and time only."""
    t = t.reshape((-1,) + (1,) * (nt.ndim - 1))
    return 0.3 * (MAX_COUNT - nt) * (1.0 - jnp.exp(-t)) + 0.05


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_training_loss_composes_weight_draw_and_poisson_loss(weighting: str) -> None:
    n0 = clean_batch()
    seen = {}

    def recording_predictor(nt, t):
        seen["nt"], seen["t"] = np.asarray(nt), np.asarray(t)
        return smooth_predictor(nt, t)

    keys = example_keys(jax.random.key(31), jnp.arange(n0.shape[0]))
    loss = training_loss(
        keys, recording_predictor, n0, weighting=weighting, t_end=T_END, num_steps=NUM_STEPS
    )
    assert loss.shape == (n0.shape[0],)
    assert loss.dtype == jnp.float32
    nt, t = seen["nt"], seen["t"].astype(np.float64)
    assert t.shape == (n0.shape[0],)
    clean = np.asarray(n0)
    assert np.all((nt >= 0) & (nt <= clean))
    if weighting == "elbo":
        weight = 2.0 * np.log(np.expm1(T_END)) * np.exp(-t)
    else:
        grid_t, grid_w = grid_weights(weighting)
        index = np.searchsorted(grid_t, t)
        np.testing.assert_array_equal(grid_t[index], t)
        weight = grid_w[index]
    pred = np.asarray(smooth_predictor(jnp.asarray(nt), jnp.asarray(t, jnp.float32)), np.float64)
    target = clean - nt
    per_count = pred - target * np.log(pred)
    expected = weight * per_count.reshape(len(t), -1).mean(axis=1)
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_training_loss_is_smallest_at_the_exact_target(weighting: str) -> None:
    n0 = clean_batch()
    keys = example_keys(jax.random.key(32), jnp.arange(n0.shape[0]))

    def exact(nt, t):
        return (n0 - nt).astype(jnp.float32)

    def perturbed(nt, t):
        return 1.3 * exact(nt, t) + 0.2

    kwargs = {"weighting": weighting, "t_end": T_END, "num_steps": NUM_STEPS}
    exact_loss = np.asarray(training_loss(keys, exact, n0, **kwargs), np.float64)
    perturbed_loss = np.asarray(training_loss(keys, perturbed, n0, **kwargs), np.float64)
    # Same keys, same draws: the exact target is the pointwise minimiser of yhat - m log yhat.
    assert np.all(exact_loss <= perturbed_loss + 1e-6 * np.abs(perturbed_loss))
    assert perturbed_loss.mean() > exact_loss.mean()


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_training_loss_of_an_example_depends_only_on_its_key(weighting: str) -> None:
    n0 = clean_batch(8)
    keys = example_keys(jax.random.key(33), jnp.arange(8))
    kwargs = {"weighting": weighting, "t_end": T_END, "num_steps": NUM_STEPS}
    loss = np.asarray(training_loss(keys, smooth_predictor, n0, **kwargs))
    permutation = np.array([3, 0, 7, 1, 6, 2, 5, 4])
    permuted = np.asarray(
        training_loss(keys[permutation], smooth_predictor, n0[permutation], **kwargs)
    )
    np.testing.assert_allclose(permuted, loss[permutation], rtol=1e-6)
    # Changing another example's key leaves example 0 unchanged and changes example 5.
    other_keys = keys.at[5].set(jax.random.key(999))
    changed = np.asarray(training_loss(other_keys, smooth_predictor, n0, **kwargs))
    np.testing.assert_allclose(np.delete(changed, 5), np.delete(loss, 5), rtol=1e-6)
    assert changed[5] != loss[5]


def test_training_loss_under_jit_and_grad() -> None:
    n0 = clean_batch(8)
    keys = example_keys(jax.random.key(34), jnp.arange(8))

    def mean_loss(scale):
        def predictor(nt, t):
            return scale * smooth_predictor(nt, t)

        losses = training_loss(keys, predictor, n0, weighting="elbo", t_end=T_END, num_steps=10)
        return jnp.mean(losses)

    eager = mean_loss(1.0)
    jitted = jax.jit(mean_loss)
    np.testing.assert_allclose(float(jitted(1.0)), float(eager), rtol=1e-5)
    gradient = jax.jit(jax.grad(mean_loss))(1.0)
    step = 1e-2
    finite_difference = (jitted(1.0 + step) - jitted(1.0 - step)) / (2 * step)
    assert np.isfinite(float(gradient))
    np.testing.assert_allclose(float(gradient), float(finite_difference), rtol=1e-2, atol=1e-4)


def test_training_loss_under_vmap_over_groups() -> None:
    n0 = clean_batch(8).reshape(2, 4, 4, 4, 1)
    keys = example_keys(jax.random.key(35), jnp.arange(8)).reshape(2, 4)

    def group_loss(group_keys, group_n0):
        return training_loss(
            group_keys, smooth_predictor, group_n0, weighting="elbo", t_end=T_END, num_steps=10
        )

    mapped = jax.jit(jax.vmap(group_loss))(keys, n0)
    flat = group_loss(keys.reshape(8), n0.reshape(8, 4, 4, 1))
    np.testing.assert_allclose(np.asarray(mapped).reshape(8), np.asarray(flat), rtol=1e-5)


def test_unknown_weighting_is_rejected() -> None:
    with pytest.raises(ValueError, match="weighting"):
        sample_time_and_weight(
            jax.random.key(0), (2,), weighting="uniform", t_end=15.0, num_steps=4
        )


def test_elbo_weighting_needs_no_num_steps() -> None:
    keys = example_keys(jax.random.key(5), jnp.arange(4))
    n0 = jnp.full((4, 3), 7, jnp.int32)

    def predictor(counts, t):
        return jnp.ones(counts.shape, jnp.float32)

    without = training_loss(keys, predictor, n0, weighting="elbo", t_end=T_END)
    with_steps = training_loss(keys, predictor, n0, weighting="elbo", t_end=T_END, num_steps=9)
    np.testing.assert_array_equal(without, with_steps)
    t, weight = sample_time_and_weight(jax.random.key(1), (3,), weighting="elbo", t_end=T_END)
    assert t.shape == weight.shape == (3,)


@pytest.mark.parametrize("weighting", ["instantaneous", "finite_time"])
def test_grid_weightings_require_num_steps(weighting: str) -> None:
    keys = example_keys(jax.random.key(5), jnp.arange(2))
    n0 = jnp.ones((2, 3), jnp.int32)
    with pytest.raises(ValueError, match=f"num_steps.*{weighting}"):
        training_loss(keys, lambda c, t: c.astype(jnp.float32), n0, weighting=weighting, t_end=1.0)
    with pytest.raises(ValueError, match=f"num_steps.*{weighting}"):
        sample_time_and_weight(jax.random.key(0), (2,), weighting=weighting, t_end=1.0)
