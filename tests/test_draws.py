"""Exact binomial draws by inversion: the table and goodness of fit against scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from blackout_jax import draws


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
