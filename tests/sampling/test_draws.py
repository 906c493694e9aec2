"""Exact binomial and capped Poisson draws: tables, searches and goodness of fit against scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from blackout_jax import draws

# Compiled once per shape; eager calls would trace and compile the samplers' branches anew.
capped_poisson = jax.jit(draws.capped_poisson, static_argnames=("fallback_rate",))
capped_poisson_scaled = jax.jit(
    draws.capped_poisson_scaled,
    static_argnums=(4,),
    static_argnames=("direct_rate", "fallback_rate"),
)


@pytest.mark.parametrize("r", [1e-6, 0.013, 0.5, 0.97])
def test_cdf_table_matches_scipy(r):
    max_trials = 20
    table = np.asarray(draws.binomial_cdf_table(jnp.float32(r), max_trials))
    for n in range(max_trials + 1):
        k = np.arange(n)
        np.testing.assert_allclose(table[n, :n], stats.binom.cdf(k, n, r), atol=5e-6)
        assert np.all(table[n, n:] == 2.0)


@pytest.mark.parametrize(
    ("n", "r", "max_trials"),
    [(16, 0.013, 16), (16, 0.5, 16), (5, 0.9, 16), (255, 0.01, 255), (200, 0.6, 255), (1, 0.3, 1)],
)
def test_inversion_goodness_of_fit(n, r, max_trials, chi_square_pvalue):
    num_draws = 200_000
    trials = jnp.full((num_draws,), n, jnp.int32)
    sample = np.asarray(
        draws.binomial_by_inversion(jax.random.key(n), trials, jnp.float32(r), max_trials)
    )
    assert sample.dtype == np.int32
    assert sample.min() >= 0 and sample.max() <= n
    support = np.arange(n + 1)
    assert chi_square_pvalue(sample, support, stats.binom.pmf(support, n, r)) > 1e-3


def test_inversion_edges_and_mixed_trials():
    trials = jnp.asarray([0, 3, 16, 7, 0, 16])
    key = jax.random.key(0)
    everything = draws.binomial_by_inversion(key, trials, jnp.float32(1.0), 16)
    np.testing.assert_array_equal(everything, trials)  # r = 1: every trial succeeds
    nothing = draws.binomial_by_inversion(key, trials, jnp.float32(0.0), 16)
    np.testing.assert_array_equal(nothing, np.zeros(6))  # r = 0: none does
    again = draws.binomial_by_inversion(key, trials, jnp.float32(0.4), 16)
    np.testing.assert_array_equal(again, draws.binomial_by_inversion(key, trials, 0.4, 16))


def test_inversion_mean_per_row_of_mixed_trials():
    """Rows with different trial counts in one call each follow their own binomial."""
    rows = np.arange(17)
    trials = jnp.asarray(np.repeat(rows, 20_000))
    sample = np.asarray(draws.binomial_by_inversion(jax.random.key(3), trials, 0.3, 16))
    means = sample.reshape(17, -1).mean(axis=1)
    standard_error = np.sqrt(rows * 0.3 * 0.7 / 20_000) + 1e-9
    assert np.all(np.abs(means - 0.3 * rows) < 5 * standard_error + 1e-9)


def test_cdf_table_at_cifar_size_matches_scipy():
    """The blocked prefix sum of the 256 x 256 table agrees with scipy's binomial CDF."""
    max_trials = 255
    for r in (2e-4, 0.3, 0.999):
        table = np.asarray(draws.binomial_cdf_table(jnp.float32(r), max_trials))
        for n in (1, 17, 100, 254, 255):
            k = np.arange(n)
            np.testing.assert_allclose(table[n, :n], stats.binom.cdf(k, n, r), atol=2e-5)
            assert np.all(table[n, n:] == 2.0)


def capped_poisson_pmf(rate: float, cap: int) -> np.ndarray:
    """The exact pmf of ``min(Poisson(rate), cap)`` on ``0..cap``."""
    support = np.arange(cap + 1)
    pmf = stats.poisson.pmf(support, rate)
    pmf[cap] = stats.poisson.sf(cap - 1, rate)  # P(X >= cap)
    return pmf


@pytest.mark.parametrize(
    ("rate", "cap"),
    [
        (1e-4, 1),
        (1e-4, 255),
        (0.05, 4),
        (0.7, 1),
        (0.7, 16),
        (3.0, 4),
        (3.0, 255),
        (40.0, 16),
        (40.0, 255),
    ],
)
def test_capped_poisson_goodness_of_fit(rate, cap, chi_square_pvalue):
    num_draws = 100_000
    key = jax.random.fold_in(jax.random.key(7), int(rate * 1000) * 1000 + cap)
    sample = np.asarray(capped_poisson(key, jnp.full((num_draws,), rate, jnp.float32), cap))
    assert sample.dtype == np.int32
    assert sample.min() >= 0 and sample.max() <= cap
    support = np.arange(cap + 1)
    assert chi_square_pvalue(sample, support, capped_poisson_pmf(rate, cap)) > 1e-3


@pytest.mark.parametrize(
    ("rate", "fallback_rate"),
    [(40.0, 64.0), (12.0, 10.0), (60.0, 64.0), (64.5, 64.0)],
    ids=["inversion-at-40", "rejection-at-12", "inversion-at-60", "rejection-at-64.5"],
)
def test_capped_poisson_both_paths_fit(rate, fallback_rate, chi_square_pvalue):
    """The inversion loop (rates up to ``fallback_rate``) and PTRS (above) each give the exact
    capped law."""
    num_draws, cap = 100_000, 255
    sample = np.asarray(
        capped_poisson(
            jax.random.key(11),
            jnp.full((num_draws,), rate, jnp.float32),
            cap,
            fallback_rate=fallback_rate,
        )
    )
    support = np.arange(cap + 1)
    assert chi_square_pvalue(sample, support, capped_poisson_pmf(rate, cap)) > 1e-3


def test_capped_poisson_mixed_rates_and_caps_in_one_call(chi_square_pvalue):
    """Every (rate, cap) column of one call follows its own law, both paths mixed."""
    rates = np.array([0.0, 1e-3, 0.4, 2.5, 9.5, 12.0, 35.0], np.float32)
    caps = np.array([0, 1, 3, 16, 255], np.int32)
    rate_grid, cap_grid = np.meshgrid(rates, caps, indexing="ij")
    repeats = 20_000
    sample = np.asarray(
        capped_poisson(
            jax.random.key(5),
            jnp.asarray(np.tile(rate_grid.ravel(), (repeats, 1))),
            jnp.asarray(np.tile(cap_grid.ravel(), (repeats, 1))),
        )
    )
    for column, (rate, cap) in enumerate(zip(rate_grid.ravel(), cap_grid.ravel(), strict=True)):
        support = np.arange(cap + 1)
        pvalue = chi_square_pvalue(sample[:, column], support, capped_poisson_pmf(rate, cap))
        assert pvalue > 1e-4, (rate, cap, pvalue)


@pytest.mark.parametrize("rate", [1e-9, 3e-6, 0.02, 1.0, 7.5, 30.0, 64.0])
def test_capped_poisson_from_uniform_is_the_tail_inverse(rate):
    """``X = min{k : w >= P(Poisson > k)}``, checked against scipy's float64 tail.

    Half of the uniforms are spread log-uniformly down to 1e-12, where a uniform of
    resolution 2^-23 compared with a CDF could not decide. A draw may differ from the exact
    inverse only when ``w`` lies within float32 rounding of a step of the tail: closer than
    ``2e-6 P(X >= 1)`` (or below the ``2^-32`` stopping tolerance).
    """
    rng = np.random.default_rng(2)
    w = np.concatenate(
        [rng.uniform(0, 1, 4000), 10.0 ** rng.uniform(-12, -1, 4000), [0.0, 0.5]]
    ).astype(np.float32)
    result = np.asarray(draws.capped_poisson_from_uniform(jnp.asarray(w), rate, 1000))
    assert result.dtype == np.int32
    survival = stats.poisson.sf(np.arange(400), np.float64(np.float32(rate)))  # P(X > k)
    # The number of k with P(X > k) > w is the smallest k with P(X > k) <= w.
    expected = np.searchsorted(-survival, -w.astype(np.float64), side="right")
    tolerance = 2e-6 * survival[0] + 2.0**-32
    for index in np.flatnonzero(result != expected):
        low, high = sorted((int(result[index]), int(expected[index])))
        distance = np.max(np.abs(float(w[index]) - survival[low:high]))
        assert distance <= tolerance, (w[index], result[index], expected[index])
    typical = w > 1e-5  # far above the rounding, almost every draw is the exact inverse
    assert np.mean(result[typical] != expected[typical]) < 0.01


def test_capped_poisson_caps_zero_rates_and_bad_rates():
    key = jax.random.key(0)
    rate = jnp.asarray([0.0, -1.0, jnp.nan, 5.0, 50.0, 200.0, 3.0], jnp.float32)
    cap = jnp.asarray([4, 4, 4, 0, 2, 255, 0], jnp.int32)
    for fallback_rate in (10.0, 64.0):
        result = np.asarray(capped_poisson(key, rate, cap, fallback_rate=fallback_rate))
        np.testing.assert_array_equal(result[[0, 1, 2, 3, 6]], 0)  # no births, or no room
        assert result[4] == 2  # P(Poisson(50) < 2) is about 1e-20
        assert 120 < result[5] <= 255
    scalar_cap = capped_poisson(key, jnp.full((3, 2), 1e3, jnp.float32), 7)
    np.testing.assert_array_equal(scalar_cap, np.full((3, 2), 7))
    for fallback_rate in (9.0, 100.0):
        with pytest.raises(ValueError, match=r"fallback_rate must be in \[10.0, 64.0\]"):
            capped_poisson(key, rate, cap, fallback_rate=fallback_rate)


def test_fine_uniform_range_and_resolution():
    values = np.asarray(draws.fine_uniform(jax.random.key(4), (1 << 20,)))
    assert values.dtype == np.float32
    assert values.min() >= 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 3e-3
    small = values[values < 2.0**-8]
    assert small.size > 3000
    # jax.random.uniform only returns multiples of 2^-23; these are finer near 0.
    assert np.mean(np.mod(small, 2.0**-23) != 0) > 0.9


@pytest.mark.parametrize("max_trials", [16, 255])
@pytest.mark.parametrize("r", [1e-7, 2e-3, 0.3, 0.9])
def test_cdf_table_is_accurate_in_absolute_terms(r, max_trials):
    """The saddle-point pmf keeps every table entry within a few float32 roundings."""
    table = np.asarray(draws.binomial_cdf_table(jnp.float32(r), max_trials))
    n = np.arange(max_trials + 1)[:, None]
    k = np.arange(max_trials + 1)[None, :]
    expected = stats.binom.cdf(k, n, np.float64(np.float32(r)))
    assert np.max(np.abs(np.where(k < n, table - expected, 0.0))) < 1.5e-6


def test_inversion_with_tiny_r_and_mixed_trials(chi_square_pvalue):
    """The search bound taken from the largest row still lets every row reach its tail."""
    rows = np.array([1, 40, 255])
    repeats = 100_000
    trials = jnp.asarray(np.tile(rows, repeats))
    r = 0.004
    sample = np.asarray(draws.binomial_by_inversion(jax.random.key(8), trials, r, 255))
    sample = sample.reshape(repeats, rows.size)
    for column, n in enumerate(rows):
        support = np.arange(n + 1)
        pmf = stats.binom.pmf(support, n, r)
        assert chi_square_pvalue(sample[:, column], support, pmf) > 1e-3
    assert sample[:, 2].max() >= 4  # the tail of Binomial(255, 0.004) is reached


@pytest.mark.parametrize("max_count", [16, 255])
@pytest.mark.parametrize("r", [1e-7, 2e-3, 0.05, 0.3, 1.0])
def test_poisson_tail_table_matches_scipy(r, max_count):
    table = np.asarray(draws.poisson_tail_table(jnp.float32(r), max_count))
    assert table.shape == (max_count + 1, max_count + 1)
    assert np.all(table[:, max_count] == -1.0)
    rate = np.arange(max_count + 1)[:, None] * np.float64(np.float32(r))
    expected = stats.poisson.sf(np.arange(max_count)[None, :], rate)  # P(X > k)
    inner = table[:, :max_count]
    assert np.max(np.abs(inner - expected)) < 1.5e-6
    # Small tails keep their relative accuracy where little mass lies beyond N.
    beyond = stats.poisson.sf(max_count, rate)
    small = (expected > 1e-12) & (expected < 1e-3) & (beyond < 1e-6)
    assert np.max(np.abs(inner[small] / expected[small] - 1.0)) < 1e-4


@pytest.mark.parametrize(
    ("scale", "r", "cap"),
    [
        (0.3, 1e-3, 16),
        (7.6, 0.05, 16),
        (3.5, 0.7, 3),
        (100.25, 0.4, 255),
        (255.0, 1.0, 255),
        (254.9, 1.0, 200),
        (300.0, 0.5, 255),  # scale > N + 1: the remainder 45 r goes to jax.random.poisson
    ],
)
def test_capped_poisson_scaled_goodness_of_fit(scale, r, cap, chi_square_pvalue):
    num_draws, max_count = 100_000, 255
    sample = np.asarray(
        capped_poisson_scaled(
            jax.random.key(int(scale * 10)),
            jnp.full((num_draws,), scale, jnp.float32),
            jnp.float32(r),
            cap,
            max_count,
        )
    )
    assert sample.dtype == np.int32
    assert sample.min() >= 0 and sample.max() <= cap
    rate = np.float64(np.float32(scale)) * np.float64(np.float32(r))
    support = np.arange(cap + 1)
    assert chi_square_pvalue(sample, support, capped_poisson_pmf(rate, cap)) > 1e-3


def test_capped_poisson_scaled_mixed_scales_and_caps(chi_square_pvalue):
    """Every (scale, cap) column of one jitted call follows its own capped law."""
    scales = np.array([0.0, 0.5, 2.25, 15.9, 16.0, 17.5], np.float32)
    caps = np.array([0, 2, 16], np.int32)
    scale_grid, cap_grid = np.meshgrid(scales, caps, indexing="ij")
    repeats, r, max_count = 20_000, 0.6, 16
    sample = np.asarray(
        capped_poisson_scaled(
            jax.random.key(9),
            jnp.asarray(np.tile(scale_grid.ravel(), (repeats, 1))),
            jnp.float32(r),
            jnp.asarray(np.tile(cap_grid.ravel(), (repeats, 1))),
            max_count,
        )
    )
    for column, (scale, cap) in enumerate(zip(scale_grid.ravel(), cap_grid.ravel(), strict=True)):
        rate = float(scale) * np.float64(np.float32(r))
        support = np.arange(cap + 1)
        pvalue = chi_square_pvalue(sample[:, column], support, capped_poisson_pmf(rate, cap))
        assert pvalue > 1e-4, (scale, cap, pvalue)


def test_capped_poisson_scaled_edges():
    key = jax.random.key(1)
    scale = jnp.asarray([jnp.nan, -3.0, 0.0, 12.0, 12.0, 1e4], jnp.float32)
    cap = jnp.asarray([5, 5, 5, 0, 16, 16], jnp.int32)
    result = np.asarray(capped_poisson_scaled(key, scale, jnp.float32(1.0), cap, 16))
    np.testing.assert_array_equal(result[:4], 0)
    assert 0 <= result[4] <= 16
    assert result[5] == 16
    nothing = capped_poisson_scaled(key, jnp.full((4,), 9.0), jnp.float32(0.0), 16, 16)
    np.testing.assert_array_equal(nothing, np.zeros(4))


def test_unrolled_search_matches_the_early_stopping_search(monkeypatch):
    """Accelerators run the table search unrolled; it must give the very same draws."""
    key = jax.random.key(12)
    trials = jnp.asarray(np.random.default_rng(0).integers(0, 256, 5000))
    scales = jnp.asarray(np.random.default_rng(1).uniform(0, 300, 5000), jnp.float32)
    caps = jnp.asarray(np.random.default_rng(2).integers(0, 256, 5000))
    results = []
    for in_loop in (True, False):
        monkeypatch.setattr(draws, "_search_in_while_loop", lambda in_loop=in_loop: in_loop)
        results.append(
            (
                np.asarray(draws.binomial_by_inversion(key, trials, jnp.float32(0.03), 255)),
                np.asarray(draws.capped_poisson_scaled(key, scales, jnp.float32(0.2), caps, 255)),
            )
        )
    for looped, unrolled in zip(results[0], results[1], strict=True):
        np.testing.assert_array_equal(looped, unrolled)
    assert results[0][0].max() > 10 and results[0][1].max() > 40  # the searches went deep


@pytest.mark.parametrize("direct_rate", [0.0, 1.0, 1e9], ids=["table", "default", "direct"])
@pytest.mark.parametrize(("scale", "r"), [(0.8, 0.5), (12.3, 0.3), (200.5, 0.02)])
def test_capped_poisson_scaled_paths_agree_in_law(scale, r, direct_rate, chi_square_pvalue):
    """The table path and the direct path (chosen per call by the largest rate) both fit."""
    num_draws, cap, max_count = 100_000, 40, 255
    sample = np.asarray(
        capped_poisson_scaled(
            jax.random.key(3),
            jnp.full((num_draws,), scale, jnp.float32),
            jnp.float32(r),
            cap,
            max_count,
            direct_rate=direct_rate,
        )
    )
    rate = np.float64(np.float32(scale)) * np.float64(np.float32(r))
    support = np.arange(cap + 1)
    assert chi_square_pvalue(sample, support, capped_poisson_pmf(rate, cap)) > 1e-3
    with pytest.raises(ValueError, match="direct_rate"):
        capped_poisson_scaled(jax.random.key(3), jnp.ones(3), 0.5, 4, 16, direct_rate=-1.0)


def test_unrolled_start_gives_the_draws_of_the_loop_alone(monkeypatch):
    keys = jax.random.split(jax.random.key(11), 3)
    w = draws.fine_uniform(keys[0], (200_000,))
    rate = jax.random.uniform(keys[1], (200_000,)) * 12.0
    cap = jax.random.randint(keys[2], (200_000,), 0, 40)
    unrolled = jax.jit(lambda *a: draws.capped_poisson_from_uniform(*a))(w, rate, cap)
    monkeypatch.setattr(draws, "_UNROLLED_TERMS", 0)
    loop_alone = jax.jit(lambda *a: draws.capped_poisson_from_uniform(*a))(w, rate, cap)
    assert int(loop_alone.max()) > 20  # draws well past the unrolled terms
    np.testing.assert_array_equal(unrolled, loop_alone)
