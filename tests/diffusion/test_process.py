"""The forward pure-death process and its binomial bridge: scipy parity, identities, sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from blackout_jax import (
    birth_rate,
    bridge_log_prob,
    bridge_probability,
    bridge_sample,
    forward_log_prob,
    forward_sample,
    survival_probability,
)

# float32 log-probabilities: relative error ~1e-6 of the value, plus the rounding of the
# log-factorials that cancel inside log C(n, k) (a few float32 ulps of log(n!)).
LOG_PROB_RTOL = 1e-5
LOG_FACTORIAL_ATOL = 1e-6


def assert_log_prob_close(actual, expected, n) -> None:
    """``|actual - expected| <= rtol |expected| + atol log(n!)``; ``-inf`` must match exactly."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    actual, expected, n = np.broadcast_arrays(actual, expected, np.asarray(n, np.float64))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(actual), finite)
    np.testing.assert_array_equal(actual[~finite], expected[~finite])
    tolerance = LOG_PROB_RTOL * np.abs(expected) + LOG_FACTORIAL_ATOL * special.gammaln(n + 1.0)
    with np.errstate(invalid="ignore"):
        error = np.abs(actual - expected)
    worst = np.argmax(np.where(finite, error - tolerance, -np.inf))
    assert np.all(error[finite] <= tolerance[finite]), (
        f"log-prob {actual[worst]} vs scipy {expected[worst]} (n={n[worst]})"
    )


def reference_bridge_probability(s, t) -> np.ndarray:
    """``r = exp(-s) (1 - exp(-(t - s))) / (1 - exp(-t))`` in float64 with expm1."""
    s = np.asarray(s, np.float64)
    t = np.asarray(t, np.float64)
    return np.exp(-s) * np.expm1(-(t - s)) / np.expm1(-t)


def reference_log_bridge_one_minus_probability(s, t) -> np.ndarray:
    """``log(1 - r)`` in float64 from ``1 - r = expm1(-s) / expm1(-t)`` (``log1p(-r)`` near 1)."""
    s = np.asarray(s, np.float64)
    t = np.asarray(t, np.float64)
    one_minus_r = np.expm1(-s) / np.expm1(-t)
    with np.errstate(divide="ignore"):
        return np.where(
            one_minus_r < 0.5, np.log(one_minus_r), np.log1p(-reference_bridge_probability(s, t))
        )


def random_forward_points(rng: np.random.Generator, size: int, max_count: int):
    """Random ``(n_t, n_0, t)`` in float32 with ``0 <= n_t <= n_0`` and ``t`` log-uniform."""
    n0 = rng.integers(0, max_count + 1, size).astype(np.float32)
    nt = np.floor(rng.uniform(0, 1, size) * (n0 + 1)).astype(np.float32)
    t = np.exp(rng.uniform(np.log(1e-7), np.log(20.0), size)).astype(np.float32)
    return nt, n0, t


@pytest.mark.parametrize("max_count", [1, 16, 255])
def test_forward_log_prob_matches_scipy_at_random_points(numpy_rng, max_count: int) -> None:
    nt, n0, t = random_forward_points(numpy_rng, 4000, max_count)
    expected = stats.binom.logpmf(nt, n0, np.exp(-t.astype(np.float64)))
    actual = forward_log_prob(jnp.asarray(nt), jnp.asarray(n0), jnp.asarray(t))
    assert actual.dtype == jnp.float32
    assert_log_prob_close(actual, expected, n0)


EDGE_TIMES = [0.0, 1e-7, 1e-3, 0.5, float(np.log(2.0)), 0.7, 5.0, 15.0, 20.0]


def test_forward_log_prob_edges_match_scipy() -> None:
    """n_0 in {0, 1, 2, 16, 255}, n_t at both ends, next to them and in the middle, every t."""
    points = [
        (nt, n0, t)
        for n0 in (0, 1, 2, 16, 255)
        for nt in sorted({0, 1, n0 // 2, max(n0 - 1, 0), n0})
        for t in EDGE_TIMES
    ]
    nt, n0, t = (np.array(column, np.float32) for column in zip(*points, strict=True))
    expected = stats.binom.logpmf(nt, n0, np.exp(-t.astype(np.float64)))
    assert_log_prob_close(forward_log_prob(nt, n0, t), expected, n0)


def test_forward_log_prob_is_exact_at_certain_outcomes() -> None:
    # n_0 = 0 forces n_t = 0; at t = 0 nothing has died yet.
    np.testing.assert_array_equal(np.asarray(forward_log_prob(0, 0, jnp.array([1e-7, 20.0]))), 0.0)
    np.testing.assert_array_equal(np.asarray(forward_log_prob(7, 7, 0.0)), 0.0)
    assert np.asarray(forward_log_prob(6, 7, 0.0)) == -np.inf


def test_forward_log_prob_off_support_is_minus_infinity() -> None:
    values = forward_log_prob(jnp.array([3.0, 6.0, 1.0]), jnp.array([2.0, 5.0, 0.0]), 0.3)
    np.testing.assert_array_equal(np.asarray(values), -np.inf)
    # Under jit values are not checked: negative or fractional counts are simply off the support.
    jitted = jax.jit(forward_log_prob)(jnp.array([-1.0, 1.5]), jnp.array([3.0, 3.0]), 0.3)
    np.testing.assert_array_equal(np.asarray(jitted), -np.inf)


def test_forward_log_prob_accepts_integer_counts() -> None:
    nt = jnp.array([0, 2, 5], jnp.int32)
    n0 = jnp.array([3, 4, 5], jnp.int32)
    as_int = forward_log_prob(nt, n0, 0.4)
    as_float = forward_log_prob(nt.astype(jnp.float32), n0.astype(jnp.float32), 0.4)
    np.testing.assert_array_equal(np.asarray(as_int), np.asarray(as_float))


@pytest.mark.parametrize("t", [1e-7, 0.3, 2.0, 20.0])
def test_forward_probabilities_sum_to_one_with_the_right_mean(t: float) -> None:
    n0 = 255.0
    nt = jnp.arange(256, dtype=jnp.float32)
    probabilities = np.exp(np.asarray(forward_log_prob(nt, n0, t), np.float64))
    np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-4)
    np.testing.assert_allclose(
        (probabilities * np.arange(256)).sum(), n0 * np.exp(-np.float32(t)), rtol=1e-4, atol=1e-6
    )


def random_bridge_points(rng: np.random.Generator, size: int, max_count: int):
    """Random float32 ``(n_s, n_t, n_0, s, t)`` with ``n_t <= n_s <= n_0`` and ``0 < s < t``."""
    n0 = rng.integers(0, max_count + 1, size).astype(np.float32)
    nt = np.floor(rng.uniform(0, 1, size) * (n0 + 1)).astype(np.float32)
    ns = nt + np.floor(rng.uniform(0, 1, size) * (n0 - nt + 1)).astype(np.float32)
    t = np.exp(rng.uniform(np.log(1e-7), np.log(20.0), size)).astype(np.float32)
    s = (t * rng.uniform(0.0, 1.0, size)).astype(np.float32)
    s = np.minimum(s, np.nextafter(t, np.float32(0)))
    return ns, nt, n0, s, t


@pytest.mark.parametrize("max_count", [1, 16, 255])
def test_bridge_log_prob_matches_scipy_at_random_points(numpy_rng, max_count: int) -> None:
    ns, nt, n0, s, t = random_bridge_points(numpy_rng, 4000, max_count)
    r = reference_bridge_probability(s, t)
    expected = stats.binom.logpmf(ns - nt, n0 - nt, r)
    actual = bridge_log_prob(ns, nt, n0, s, t)
    assert actual.dtype == jnp.float32
    assert_log_prob_close(actual, expected, n0 - nt)


# (s, t) pairs: tiny t, tiny t - s, tiny s, large t, s = 0.
EDGE_TIME_PAIRS = [
    (5e-8, 1e-7),
    (1e-8, 1e-7),
    (float(np.nextafter(np.float32(1.0), np.float32(0.0))), 1.0),
    (float(np.nextafter(np.float32(20.0), np.float32(0.0))), 20.0),
    (19.0, 20.0),
    (1e-7, 1.0),
    (1e-7, 20.0),
    (0.5, 0.7),
    (0.0, 1e-7),
    (0.0, 3.0),
]


@pytest.mark.parametrize(("s", "t"), EDGE_TIME_PAIRS)
def test_bridge_probability_is_accurate_at_the_edges(s: float, t: float) -> None:
    s32, t32 = np.float32(s), np.float32(t)
    r = np.asarray(bridge_probability(s32, t32), np.float64)
    np.testing.assert_allclose(r, reference_bridge_probability(s32, t32), rtol=1e-5)
    # log(1 - r) enters through bridge_log_prob(n_t, n_t, n_0): (n_0 - n_t) log(1 - r).
    log_stay = np.asarray(bridge_log_prob(2.0, 2.0, 3.0, s32, t32), np.float64)
    expected = reference_log_bridge_one_minus_probability(s32, t32)
    if s32 == 0:
        assert log_stay == -np.inf
    else:
        np.testing.assert_allclose(log_stay, expected, rtol=1e-5)


def test_bridge_log_prob_edges_match_scipy() -> None:
    """Every edge time pair with n_t = n_0, n_0 = 0, tiny and large n_0 - n_t."""
    points = [
        (ns, nt, n0, s, t)
        for nt, n0 in [(0, 0), (5, 5), (0, 1), (0, 16), (3, 16), (100, 255)]
        for ns in sorted({nt, nt + 1, (nt + n0) // 2, max(n0 - 1, nt), n0})
        for s, t in EDGE_TIME_PAIRS
    ]
    ns, nt, n0, s, t = (np.array(column, np.float32) for column in zip(*points, strict=True))
    r = reference_bridge_probability(s, t)
    expected = stats.binom.logpmf(ns - nt, n0 - nt, r)
    assert_log_prob_close(bridge_log_prob(ns, nt, n0, s, t), expected, n0 - nt)


def test_bridge_log_prob_off_support_is_minus_infinity() -> None:
    ns = jnp.array([1.0, 6.0, 4.0])
    nt = jnp.array([2.0, 1.0, 4.0])
    n0 = jnp.array([5.0, 5.0, 3.0])
    np.testing.assert_array_equal(np.asarray(bridge_log_prob(ns, nt, n0, 0.2, 0.9)), -np.inf)


def test_bridge_at_time_zero_restores_the_clean_counts() -> None:
    ns = jnp.arange(8, dtype=jnp.float32)
    log_probs = np.asarray(bridge_log_prob(ns, 2.0, 5.0, 0.0, 1.3))
    expected = np.where(np.arange(8) == 5, 0.0, -np.inf)
    np.testing.assert_array_equal(log_probs, expected)


@pytest.mark.parametrize(("s", "t"), [(1e-7, 2e-7), (0.3, 0.31), (1.0, 4.0), (14.9, 15.0)])
def test_bridge_probabilities_sum_to_one(s: float, t: float) -> None:
    n0, nt = 255.0, 37.0
    ns = jnp.arange(256, dtype=jnp.float32)
    probabilities = np.exp(np.asarray(bridge_log_prob(ns, nt, n0, s, t), np.float64))
    np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-4)
    r = reference_bridge_probability(np.float32(s), np.float32(t))
    np.testing.assert_allclose(
        (probabilities * np.arange(256)).sum(), nt + (n0 - nt) * r, rtol=1e-4
    )


def bridge_matrix(n0: int, s: float, t: float) -> np.ndarray:
    """``Q[a, b] = q(n_s = a | n_t = b, n_0)`` for ``a, b = 0..n_0`` in float64."""
    values = jnp.arange(n0 + 1, dtype=jnp.float32)
    log_q = bridge_log_prob(values[:, None], values[None, :], float(n0), s, t)
    return np.exp(np.asarray(log_q, np.float64))


@pytest.mark.parametrize(("s", "u", "t"), [(0.1, 0.5, 2.0), (1e-6, 1e-3, 15.0), (3.0, 3.2, 3.3)])
@pytest.mark.parametrize("n0", [1, 16])
def test_bridge_chapman_kolmogorov(n0: int, s: float, u: float, t: float) -> None:
    via_u = bridge_matrix(n0, s, u) @ bridge_matrix(n0, u, t)
    direct = bridge_matrix(n0, s, t)
    np.testing.assert_allclose(via_u, direct, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("s", "t"), [(0.1, 2.0), (1e-6, 15.0), (3.0, 3.2)])
@pytest.mark.parametrize("n0", [1, 16])
def test_bridge_averaged_over_the_forward_marginal_is_the_forward_marginal(
    n0: int, s: float, t: float
) -> None:
    values = jnp.arange(n0 + 1, dtype=jnp.float32)
    q_t = np.exp(np.asarray(forward_log_prob(values, float(n0), t), np.float64))
    q_s = np.exp(np.asarray(forward_log_prob(values, float(n0), s), np.float64))
    np.testing.assert_allclose(bridge_matrix(n0, s, t) @ q_t, q_s, rtol=1e-4, atol=1e-6)


FORWARD_CASES = [(1, 0.7), (16, 0.05), (16, 1.0), (255, 0.02), (255, 3.0), (16, 12.0)]


@pytest.mark.parametrize(("n0", "t"), FORWARD_CASES)
def test_forward_sample_goodness_of_fit(chi_square_pvalue, n0: int, t: float) -> None:
    key = jax.random.key(1000 + n0 + int(100 * t))
    draws = forward_sample(key, jnp.full((20000,), n0, jnp.int32), t)
    assert draws.dtype == jnp.int32
    support = np.arange(n0 + 1)
    pmf = stats.binom.pmf(support, n0, np.exp(-np.float64(np.float32(t))))
    assert chi_square_pvalue(np.asarray(draws), support, pmf) > 1e-3


BRIDGE_CASES = [(0, 1, 0.2, 0.9), (3, 16, 0.5, 2.0), (0, 16, 1e-4, 15.0), (10, 255, 0.3, 0.35)]


@pytest.mark.parametrize(("nt", "n0", "s", "t"), BRIDGE_CASES)
def test_bridge_sample_goodness_of_fit(chi_square_pvalue, nt: int, n0: int, s: float, t: float):
    key = jax.random.key(2000 + n0 + nt)
    draws = bridge_sample(key, jnp.full((20000,), nt, jnp.int32), n0, s, t)
    assert draws.dtype == jnp.int32
    support = np.arange(nt, n0 + 1)
    r = reference_bridge_probability(np.float32(s), np.float32(t))
    pmf = stats.binom.pmf(support - nt, n0 - nt, r)
    assert chi_square_pvalue(np.asarray(draws), support, pmf) > 1e-3


def test_forward_sample_broadcasts_and_keeps_dtype() -> None:
    n0 = jnp.array([[0.0, 4.0, 9.0]])
    t = jnp.array([[0.1], [2.0]])
    draws = forward_sample(jax.random.key(0), n0, t)
    assert draws.shape == (2, 3)
    assert draws.dtype == jnp.float32
    values = np.asarray(draws)
    assert np.all((values >= 0) & (values <= np.asarray(n0)) & (values == np.round(values)))


def test_bridge_sample_stays_between_noisy_and_clean_counts() -> None:
    nt = jnp.array([0, 3, 7, 16], jnp.int32)
    n0 = jnp.array([0, 9, 7, 16], jnp.int32)
    draws = bridge_sample(jax.random.key(3), jnp.tile(nt, (500, 1)), n0, 0.4, 1.0)
    values = np.asarray(draws)
    assert np.all((values >= np.asarray(nt)) & (values <= np.asarray(n0)))
    assert values[:, 1].min() < values[:, 1].max()  # the one uncertain entry actually varies


def test_bridge_sample_at_time_zero_gives_the_clean_counts() -> None:
    nt = jnp.array([0, 3, 7], jnp.int32)
    n0 = jnp.array([5, 9, 7], jnp.int32)
    draws = bridge_sample(jax.random.key(4), nt, n0, 0.0, 2.0)
    np.testing.assert_array_equal(np.asarray(draws), np.asarray(n0))


def test_survival_probability_and_birth_rate_match_float64() -> None:
    t = np.array([1e-7, 1e-3, 0.5, 3.0, 15.0, 20.0], np.float32)
    pred = np.array([1.0, 2.5, 0.0, 16.0, 255.0, 3.0], np.float32)
    t64 = t.astype(np.float64)
    np.testing.assert_allclose(np.asarray(survival_probability(t)), np.exp(-t64), rtol=1e-6)
    expected_rate = pred * np.exp(-t64) / -np.expm1(-t64)
    np.testing.assert_allclose(np.asarray(birth_rate(pred, t)), expected_rate, rtol=1e-5)


def test_process_functions_under_vmap_and_jit(numpy_rng) -> None:
    ns, nt, n0, s, t = random_bridge_points(numpy_rng, 12, 16)
    shape = (3, 4)
    ns, nt, n0, s, t = (x.reshape(shape) for x in (ns, nt, n0, s, t))
    cases = [
        (forward_log_prob, (nt, n0, t)),
        (bridge_log_prob, (ns, nt, n0, s, t)),
        (bridge_probability, (s, t)),
        (birth_rate, (n0, t)),
        (survival_probability, (t,)),
    ]
    for function, arguments in cases:
        direct = np.asarray(function(*arguments))
        assert direct.shape == shape
        jitted = jax.jit(function)(*arguments)
        mapped = jax.jit(jax.vmap(function))(*arguments)
        np.testing.assert_allclose(np.asarray(jitted), direct, rtol=1e-6, err_msg=function.__name__)
        np.testing.assert_allclose(np.asarray(mapped), direct, rtol=1e-6, err_msg=function.__name__)


@pytest.mark.parametrize("use_jit", [False, True])
def test_samplers_are_deterministic_per_key(use_jit: bool) -> None:
    n0 = jnp.full((4, 64), 16, jnp.int32)
    nt = jnp.full((4, 64), 3, jnp.int32)
    forward = jax.jit(forward_sample) if use_jit else forward_sample
    bridge = jax.jit(bridge_sample) if use_jit else bridge_sample
    key_a, key_b = jax.random.key(5), jax.random.key(6)
    t = jnp.float32(0.7)
    s = jnp.float32(0.2)
    np.testing.assert_array_equal(
        np.asarray(forward(key_a, n0, t)), np.asarray(forward(key_a, n0, t))
    )
    assert np.any(np.asarray(forward(key_a, n0, t)) != np.asarray(forward(key_b, n0, t)))
    np.testing.assert_array_equal(
        np.asarray(bridge(key_a, nt, n0, s, t)), np.asarray(bridge(key_a, nt, n0, s, t))
    )
    assert np.any(
        np.asarray(bridge(key_a, nt, n0, s, t)) != np.asarray(bridge(key_b, nt, n0, s, t))
    )


def test_samplers_under_vmap_over_keys() -> None:
    keys = jax.random.split(jax.random.key(7), 5)
    n0 = jnp.full((5, 32), 16, jnp.int32)
    t = jnp.linspace(0.1, 3.0, 5)
    forward = jax.jit(jax.vmap(forward_sample))(keys, n0, t)
    assert forward.shape == (5, 32)
    for i in range(5):
        np.testing.assert_array_equal(
            np.asarray(forward[i]), np.asarray(forward_sample(keys[i], n0[i], t[i]))
        )
    bridge = jax.jit(jax.vmap(bridge_sample, in_axes=(0, 0, 0, None, 0)))(
        keys, forward, n0, 0.05, t
    )
    assert bridge.shape == (5, 32)
    values = np.asarray(bridge)
    assert np.all((values >= np.asarray(forward)) & (values <= 16))
