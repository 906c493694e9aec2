"""Draws whose cost does not grow with the counts: goodness of fit at small and large counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from blackout_jax import draws, sampling

binomial = jax.jit(draws.binomial)
capped_poisson = jax.jit(draws.capped_poisson, static_argnames=("fallback_rate",))
capped_poisson_scaled = jax.jit(draws.capped_poisson_scaled, static_argnums=(4,))
NUM_DRAWS = 200_000


def capped_poisson_pmf(rate: float, cap: int) -> np.ndarray:
    """``P(min(Poisson(rate), cap) = k)`` for ``k = 0..cap`` in float64."""
    pmf = stats.poisson.pmf(np.arange(cap + 1), rate)
    pmf[cap] = stats.poisson.sf(cap - 1, rate)
    return pmf


def chi_square_pvalue(sample: np.ndarray, support: np.ndarray, pmf: np.ndarray) -> float:
    """Pooled chi-square p-value of integer draws against ``pmf`` on the sorted ``support``.

    The test of ``tests/conftest.py`` (neighbouring bins pooled until each expects 5 draws;
    0 for a draw off the support), with the counting done by ``searchsorted`` so that supports
    of 100,000 values stay fast.
    """
    sample = np.asarray(sample).ravel()
    position = np.searchsorted(support, sample)
    if np.any(position >= len(support)) or np.any(
        support[np.minimum(position, len(support) - 1)] != sample
    ):
        return 0.0
    counts = np.bincount(position, minlength=len(support)).astype(np.float64)
    expected = pmf / pmf.sum() * sample.size
    edges = [0]
    running = 0.0
    for index, value in enumerate(expected):
        running += value
        if running >= 5.0:
            edges.append(index + 1)
            running = 0.0
    edges[-1] = len(support)
    observed = np.add.reduceat(counts, edges[:-1])
    pooled = np.add.reduceat(expected, edges[:-1])
    if len(pooled) < 2:
        return 1.0
    return float(stats.chisquare(observed, pooled).pvalue)


def as_float64(value: float) -> float:
    return float(np.float64(np.float32(value)))


@pytest.mark.parametrize(
    ("n", "p"),
    [
        (16, 0.3),  # inversion
        (30, 0.2),
        (200, 0.6),  # BTRS on 1 - p (mean 80)
        (25, 0.5),  # BTRS near its smallest mean
        (50_000, 0.3),
        (50_000, 1e-4),  # inversion, mean 5
        (50_000, 0.9999),
        (100_000, 0.5),
    ],
)
def test_binomial_goodness_of_fit(n, p):
    sample = np.asarray(binomial(jax.random.key(n), jnp.full((NUM_DRAWS,), n), jnp.float32(p)))
    assert sample.dtype == np.int32
    assert sample.min() >= 0 and sample.max() <= n
    support = np.arange(n + 1)
    pmf = stats.binom.pmf(support, n, as_float64(p))
    assert chi_square_pvalue(sample, support, pmf) > 1e-3


def test_binomial_mixed_trials_and_probabilities_in_one_call():
    trials = np.array([0, 1, 7, 40, 300, 9_000, 50_000, 50_000])
    probabilities = np.array([0.5, 0.9, 0.02, 0.25, 0.97, 0.001, 1e-6, 0.5], np.float32)
    repeats = 40_000
    sample = np.asarray(
        binomial(
            jax.random.key(3),
            jnp.asarray(np.tile(trials, (repeats, 1))),
            jnp.asarray(np.tile(probabilities, (repeats, 1))),
        )
    )
    for column, (n, p) in enumerate(zip(trials, probabilities, strict=True)):
        support = np.arange(n + 1)
        pmf = stats.binom.pmf(support, n, float(p))
        pvalue = chi_square_pvalue(sample[:, column], support, pmf)
        assert pvalue > 1e-4, (n, p, pvalue)


def test_binomial_edges_and_keys():
    key = jax.random.key(0)
    trials = jnp.asarray([0, 5, 100_000, 20])
    np.testing.assert_array_equal(binomial(key, trials, jnp.float32(1.0)), trials)
    np.testing.assert_array_equal(binomial(key, trials, jnp.float32(0.0)), np.zeros(4))
    many = jnp.full((1000,), 60_000)
    first = np.asarray(binomial(key, many, jnp.float32(0.4)))
    np.testing.assert_array_equal(first, np.asarray(binomial(key, many, jnp.float32(0.4))))
    other = np.asarray(binomial(jax.random.key(1), many, jnp.float32(0.4)))
    assert np.mean(first != other) > 0.9


@pytest.mark.parametrize(("n", "q"), [(100, 1e-9), (5_000, 1e-3), (30, 0.3)])
def test_binomial_from_uniform_is_the_tail_inverse(n, q):
    """With the 32-bit uniforms, even ``P(X > 0) = 1e-7`` is resolved (no 2^-23 floor)."""
    assert stats.binom.sf(0, 100, 1e-9) < 2.0**-23
    w = np.concatenate([np.linspace(0.0, 1.0, 20_001)[:-1], np.geomspace(1e-9, 1e-3, 400)])
    w = np.float32(w)
    result = np.asarray(draws.binomial_from_uniform(jnp.asarray(w), n, jnp.float32(q)))
    survival = stats.binom.sf(np.arange(n + 1), n, as_float64(q))  # P(X > k)
    expected = np.array([np.argmax(survival <= x) for x in w.astype(np.float64)])
    # Equal except where w lies within float32 rounding of a tail value: the tails are
    # P(X >= 1) - G_k, so their error is a few float32 roundings of P(X >= 1).
    atol = 1e-6 * survival[0]
    close = np.isclose(w, survival[np.minimum(expected, n)], rtol=1e-4, atol=atol) | np.isclose(
        w, survival[np.maximum(expected - 1, 0)], rtol=1e-4, atol=atol
    )
    assert np.all((result == expected) | close)


@pytest.mark.parametrize(("rate", "cap"), [(0.01, 3), (3.0, 10), (500.0, 540), (20_000.0, 20_100)])
def test_capped_poisson_at_small_and_large_rates(rate, cap):
    sample = np.asarray(
        capped_poisson(jax.random.key(int(rate * 10)), jnp.full((NUM_DRAWS,), rate), cap)
    )
    assert sample.min() >= 0 and sample.max() <= cap
    support = np.arange(cap + 1)
    pmf = capped_poisson_pmf(as_float64(rate), cap)
    assert chi_square_pvalue(sample, support, pmf) > 1e-3


def test_poisson_rejection_is_exact_at_a_large_rate():
    """PTRS with a saddle-point log-pmf: no float32 ``lgamma`` error at rate 20,000."""
    rate, cap = 20_000.0, 10**6
    sample = np.asarray(capped_poisson(jax.random.key(4), jnp.full((4 * NUM_DRAWS,), rate), cap))
    support = np.arange(int(rate) - 1_000, int(rate) + 1_000)
    assert sample.min() >= support[0] and sample.max() <= support[-1]
    pmf = stats.poisson.pmf(support, rate)
    assert chi_square_pvalue(sample, support, pmf / pmf.sum()) > 1e-3


def test_capped_poisson_never_exceeds_its_cap():
    keys = jax.random.split(jax.random.key(5), 3)
    rate = jnp.exp(jax.random.uniform(keys[0], (50_000,), minval=-12.0, maxval=11.0))
    cap = jax.random.randint(keys[1], (50_000,), 0, 70_000)
    result = np.asarray(capped_poisson(keys[2], rate, cap))
    assert np.all((result >= 0) & (result <= np.asarray(cap)))
    at_cap = np.asarray(cap) == 0
    assert np.all(result[at_cap] == 0)


@pytest.mark.parametrize(
    ("scale", "r", "cap"), [(0.3, 1e-3, 5), (7.0, 0.5, 20), (80_000.0, 0.01, 1000)]
)
def test_capped_poisson_scaled_without_tables(scale, r, cap):
    max_count = 100_000
    assert max_count > draws.TABLE_MAX_COUNT
    sample = np.asarray(
        capped_poisson_scaled(
            jax.random.key(7), jnp.full((NUM_DRAWS,), scale), jnp.float32(r), cap, max_count
        )
    )
    assert sample.max() <= cap
    rate = as_float64(scale) * as_float64(r)
    support = np.arange(cap + 1)
    assert chi_square_pvalue(sample, support, capped_poisson_pmf(rate, cap)) > 1e-3


def test_binomial_by_inversion_above_the_table_limit():
    max_trials = 100_000
    trials = jnp.full((NUM_DRAWS,), 70_000)
    sample = np.asarray(
        draws.binomial_by_inversion(jax.random.key(8), trials, jnp.float32(0.002), max_trials)
    )
    support = np.arange(70_001)
    pmf = stats.binom.pmf(support, 70_000, as_float64(0.002))
    assert chi_square_pvalue(sample, support, pmf) > 1e-3


def test_sampler_draw_helpers_per_example_probabilities():
    """The samplers' helpers with one ``r`` per example (vmapped) above the table limit."""
    max_count, batch, entries = 100_000, 4, 50_000
    r = jnp.asarray([1e-5, 0.001, 0.3, 0.999], jnp.float32)
    trials = jnp.full((batch, entries), 60_000)
    sample = np.asarray(sampling._binomial(jax.random.key(9), trials, r, max_count))
    births = np.asarray(
        sampling._capped_poisson(
            jax.random.key(10), jnp.full((batch, entries), 3_000.0), r, trials, max_count
        )
    )
    for row in range(batch):
        p = as_float64(r[row])
        support = np.arange(60_001)
        pvalue = chi_square_pvalue(sample[row], support, stats.binom.pmf(support, 60_000, p))
        assert pvalue > 1e-4, (row, pvalue)
        cap = 60_000
        pmf = capped_poisson_pmf(3_000.0 * p, cap)
        pvalue = chi_square_pvalue(births[row], np.arange(cap + 1), pmf)
        assert pvalue > 1e-4, (row, pvalue)


@pytest.mark.parametrize(("n", "q"), [(40, 0.3), (50_000, 0.3), (10**6, 1e-3), (10**7, 0.5)])
def test_binomial_log_pmf_matches_scipy(n, q):
    mean, spread = n * q, math.sqrt(n * q * (1 - q))
    k = np.unique(np.clip(np.round(mean + spread * np.linspace(-8, 8, 161)), 0, n))
    k = np.concatenate([[0, n], k])
    actual = np.asarray(draws.binomial_log_pmf(jnp.asarray(k, jnp.float32), n, jnp.float32(q)))
    expected = stats.binom.logpmf(k, n, as_float64(q))
    np.testing.assert_allclose(actual, expected, rtol=5e-6, atol=2e-5)


@pytest.mark.parametrize("rate", [10.0, 523.7, 20_000.0, 4e6])
def test_poisson_log_pmf_matches_scipy(rate):
    k = np.unique(np.maximum(np.round(rate + math.sqrt(rate) * np.linspace(-8, 8, 161)), 0))
    k = np.concatenate([[0], k])
    actual = np.asarray(draws.poisson_log_pmf(jnp.asarray(k, jnp.float32), jnp.float32(rate)))
    expected = stats.poisson.logpmf(k, as_float64(rate))
    np.testing.assert_allclose(actual, expected, rtol=2e-6, atol=2e-5)


def test_stirling_error_matches_float64():
    k = np.concatenate([np.arange(40), np.geomspace(40, 1e4, 50).round()])
    expected = special.gammaln(k + 1) - (
        (k + 0.5) * np.log(np.maximum(k, 1)) - k + 0.5 * np.log(2 * np.pi)
    )
    expected[0] = 0.0
    actual = np.asarray(draws.stirling_error(jnp.asarray(k, jnp.float32)), np.float64)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-8)
