"""The prior at t_end, its KL term and the Monte Carlo likelihood bound."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from blackout_jax import (
    NllBoundTerms,
    bits_per_dim,
    forward_log_prob,
    nll_bound,
    nll_bound_terms,
    prior_kl,
    prior_log_prob,
    prior_sample,
)
from blackout_jax.likelihood import prior_kl_window

MAX_COUNT = 16


def prior_rate(t_end: float, max_count: int) -> float:
    """``(N / 2) exp(-t_end)`` in float64 (from the float32 ``t_end``)."""
    return 0.5 * max_count * np.exp(-np.float64(np.float32(t_end)))


@pytest.mark.parametrize("t_end", [1.0, 10.0, 15.0, 20.0])
@pytest.mark.parametrize("max_count", [1, 16, 255])
def test_prior_log_prob_matches_scipy(t_end: float, max_count: int) -> None:
    n = jnp.arange(max_count + 1, dtype=jnp.float32)
    actual = np.asarray(prior_log_prob(n, t_end=t_end, max_count=max_count), np.float64)
    expected = stats.poisson.logpmf(np.arange(max_count + 1), prior_rate(t_end, max_count))
    scale = np.abs(expected) + special.gammaln(np.arange(max_count + 1) + 1.0)
    assert np.all(np.abs(actual - expected) <= 1e-6 * scale + 1e-12)


def test_prior_log_prob_off_support_is_minus_infinity() -> None:
    values = prior_log_prob(jnp.array([-1.0, 0.5, 2.5]), t_end=15.0, max_count=16)
    np.testing.assert_array_equal(np.asarray(values), -np.inf)


def reference_prior_kl(n0: int, t_end: float, max_count: int) -> tuple[float, float]:
    """``KL(Binomial(n_0, p) || Poisson(c p))`` in float64 by summing over the support.

    Also returns ``1 - q(0)``, the probability of the outcomes whose ``log C(n_0, k)`` is a
    difference of large log-factorials (the float32 rounding of those is the main error).
    """
    p = np.exp(-np.float64(np.float32(t_end)))
    k = np.arange(n0 + 1)
    log_q = stats.binom.logpmf(k, n0, p)
    log_prior = stats.poisson.logpmf(k, prior_rate(t_end, max_count))
    return float(np.sum(np.exp(log_q) * (log_q - log_prior))), float(-np.expm1(log_q[0]))


@pytest.mark.parametrize("t_end", [0.5, 3.0, 10.0, 15.0, 20.0])
@pytest.mark.parametrize("max_count", [1, 16, 255])
def test_prior_kl_matches_float64_sum(t_end: float, max_count: int) -> None:
    n0 = np.unique(np.array([0, 1, max_count // 2, max_count - 1, max_count]))
    actual = np.asarray(prior_kl(n0, t_end=t_end, max_count=max_count), np.float64)
    expected, mass = np.array([reference_prior_kl(int(n), t_end, max_count) for n in n0]).T
    # float32: ~1e-4 relative, plus ~10 ulps of log(n_0!) on the probability mass beyond k = 0.
    tolerance = 2e-4 * expected + 1e-6 * special.gammaln(n0 + 1.0) * mass + 1e-12
    assert np.all(np.abs(actual - expected) <= tolerance), (actual, expected)
    assert np.all(actual >= -tolerance)


def test_prior_kl_keeps_shape_and_works_under_jit_and_vmap() -> None:
    n0 = jnp.array([[0, 4], [16, 9]], jnp.int32)
    direct = prior_kl(n0, t_end=15.0, max_count=MAX_COUNT)
    assert direct.shape == (2, 2)
    assert direct.dtype == jnp.float32
    jitted = jax.jit(lambda n: prior_kl(n, t_end=15.0, max_count=MAX_COUNT))(n0)
    mapped = jax.vmap(lambda n: prior_kl(n, t_end=15.0, max_count=MAX_COUNT))(n0)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(direct), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(direct), rtol=1e-6)


@pytest.mark.parametrize(("t_end", "max_count"), [(1.0, 4), (0.3, 16), (2.0, 1), (0.1, 64)])
def test_prior_sample_goodness_of_fit(chi_square_pvalue, t_end: float, max_count: int) -> None:
    draws = prior_sample(jax.random.key(40), (20000,), t_end=t_end, max_count=max_count)
    assert draws.dtype == jnp.int32
    assert draws.shape == (20000,)
    support = np.arange(max_count + 1)
    pmf = stats.poisson.pmf(support, prior_rate(t_end, max_count))
    pmf[-1] += stats.poisson.sf(max_count, prior_rate(t_end, max_count))  # clipped tail
    assert chi_square_pvalue(np.asarray(draws), support, pmf) > 1e-3


def test_prior_sample_is_almost_empty_at_the_reference_end_time() -> None:
    draws = prior_sample(jax.random.key(41), (64, 8, 8, 1), t_end=15.0, max_count=MAX_COUNT)
    assert draws.shape == (64, 8, 8, 1)
    assert int(jnp.sum(draws)) <= 2  # rate 8 e^{-15} ~ 2.4e-6 per count, 4096 counts


def expected_divergence_at(t: float, n0: np.ndarray, constant: float) -> float:
    """``sum_i E_m[c - m + m log(m / c)]`` with ``m ~ Binomial(n_{0,i}, 1 - p_t)``, float64."""
    total = 0.0
    death = -np.expm1(-t)
    for n in n0:
        m = np.arange(n + 1)
        pmf = stats.binom.pmf(m, n, death)
        total += np.sum(pmf * (constant - m + special.xlogy(m, m / constant)))
    return total


def test_nll_bound_is_an_unbiased_estimate_of_its_integral() -> None:
    """With ``yhat = c`` the bound's diffusion term is a one-dimensional integral over time."""
    t_end = 15.0
    example = np.array([0, 3, 16, 7])
    batch = 256
    n0 = jnp.tile(jnp.asarray(example, jnp.int32), (batch, 1))
    constant = 2.0

    def constant_predictor(nt, t):
        return jnp.full(nt.shape, constant, jnp.float32)

    bound = nll_bound(
        jax.random.key(42),
        constant_predictor,
        n0,
        t_end=t_end,
        max_count=MAX_COUNT,
        num_time_samples=16,
    )
    assert bound.shape == (batch,)
    assert bound.dtype == jnp.float32
    prior_term = float(jnp.sum(prior_kl(example, t_end=t_end, max_count=MAX_COUNT)))
    diffusion = np.asarray(bound, np.float64) - prior_term

    # E_u[2L p_t D(t)] = int D(t) p_t / (1 - p_t) dt over [t_min, t_end], integrated over log t.
    t_min = -np.log1p(-np.exp(-t_end))

    def integrand(log_t: float) -> float:
        t = np.exp(log_t)
        return expected_divergence_at(t, example, constant) * t / np.expm1(t)

    expected, _ = integrate.quad(integrand, np.log(t_min), np.log(t_end), limit=200)
    standard_error = diffusion.std(ddof=1) / np.sqrt(batch)
    assert abs(diffusion.mean() - expected) <= 5.0 * standard_error + 1e-4 * expected


def _blend(params, n0, nt, t):
    """``a (n_0 - n_t) + b``: ``(1, 1e-3)`` is nearly exact for a known ``n_0``, ``(0, 4)`` flat."""
    return params[0] * (n0 - nt).astype(jnp.float32) + params[1]


def test_nll_bound_keys_jit_vmap_and_a_better_predictor() -> None:
    n0 = jnp.tile(jnp.array([[0, 3, 16, 7]], jnp.int32), (32, 1))

    @jax.jit
    def bound(key, params):
        predictor = jax.tree_util.Partial(_blend, params, n0)
        return nll_bound(key, predictor, n0, t_end=15.0, max_count=MAX_COUNT, num_time_samples=8)

    near_exact = jnp.array([1.0, 1e-3])
    flat = jnp.array([0.0, 4.0])
    good = np.asarray(bound(jax.random.key(43), near_exact))
    bad = np.asarray(bound(jax.random.key(43), flat))
    assert good.shape == (32,)
    prior_term = float(jnp.sum(prior_kl(n0[0], t_end=15.0, max_count=MAX_COUNT)))
    assert np.all(good >= prior_term * (1 - 1e-5))
    assert np.all(good < bad)
    assert good.mean() < 0.5  # knowing the example costs almost nothing

    np.testing.assert_array_equal(good, np.asarray(bound(jax.random.key(43), near_exact)))
    other = np.asarray(bound(jax.random.key(44), flat))
    assert np.all(other != bad)

    keys = jax.random.split(jax.random.key(45), 2)
    mapped = jax.jit(jax.vmap(bound, in_axes=(0, None)))(keys, flat)
    assert mapped.shape == (2, 32)
    np.testing.assert_allclose(np.asarray(mapped[1]), np.asarray(bound(keys[1], flat)), rtol=1e-5)


def test_bits_per_dim_converts_nats() -> None:
    nats = jnp.array([0.0, math.log(2.0) * 64, 100.0])
    np.testing.assert_allclose(
        np.asarray(bits_per_dim(nats, 64)), [0.0, 1.0, 100.0 / (64 * math.log(2.0))], rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(jax.jit(bits_per_dim, static_argnums=1)(nats, 64)),
        np.asarray(bits_per_dim(nats, 64)),
    )


def full_sum_prior_kl(n0: jax.Array, t_end: float, max_count: int) -> jax.Array:
    """The former float32 ``prior_kl``: ``sum_{k=0..N} q(k) (log q(k) - log prior(k))``."""

    def add_term(k, total):
        k = k.astype(jnp.float32)
        log_q = forward_log_prob(k, n0, t_end)
        log_prior = prior_log_prob(k, t_end=t_end, max_count=max_count)
        return total + jnp.where(jnp.isfinite(log_q), jnp.exp(log_q) * (log_q - log_prior), 0.0)

    return jax.lax.fori_loop(0, max_count + 1, add_term, jnp.zeros_like(n0))


@pytest.mark.parametrize(
    ("t_end", "max_count"),
    [(15.0, 16_384), (1.0, 16_384), (15.0, 100_000), (3.0, 100_000), (0.05, 100_000)],
)
def test_prior_kl_at_large_counts_matches_float64_sum(t_end: float, max_count: int) -> None:
    """The windowed sum in saddle-point form keeps float32 relative accuracy at large ``N``."""
    rng = np.random.default_rng(int(t_end * 100) + max_count)
    n0 = np.concatenate(
        [[0, 1, 2, max_count // 2, max_count - 1, max_count], rng.integers(0, max_count + 1, 6)]
    )
    actual = np.asarray(prior_kl(n0, t_end=t_end, max_count=max_count), np.float64)
    expected = np.array([reference_prior_kl(int(n), t_end, max_count)[0] for n in n0])
    np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=1e-9)


@pytest.mark.parametrize(
    ("t_end", "max_count"), [(15.0, 255), (0.7, 255), (15.0, 4096), (2.0, 4096)]
)
def test_prior_kl_agrees_with_the_sum_over_every_count(t_end: float, max_count: int) -> None:
    n0 = jnp.asarray(np.random.default_rng(max_count).integers(0, max_count + 1, 64), jnp.float32)
    windowed = np.asarray(prior_kl(n0, t_end=t_end, max_count=max_count), np.float64)
    full = np.asarray(full_sum_prior_kl(n0, jnp.float32(t_end), max_count), np.float64)
    expected = np.array([reference_prior_kl(int(n), t_end, max_count)[0] for n in np.asarray(n0)])
    # The full float32 sum loses ~1e-7 log(n_0!) per term; the windowed one stays near float64.
    assert np.max(np.abs(windowed - expected)) <= np.max(np.abs(full - expected)) + 1e-5
    np.testing.assert_allclose(windowed, full, rtol=1e-2, atol=1e-3)


def test_prior_kl_window_is_short_at_the_reference_end_time() -> None:
    assert prior_kl_window(15.0, 16) == 17  # the whole support when it is shorter
    assert prior_kl_window(15.0, 255) == prior_kl_window(15.0, 100_000) == 46
    assert prior_kl_window(15.0, 10**7) == 58
    assert prior_kl_window(1.0, 16_384) < 16_385 // 10
    traced = jax.jit(lambda t: jnp.float32(prior_kl_window(t, 4096)))(15.0)
    assert int(traced) == prior_kl_window(math.log(2.0), 4096)  # p = 1/2, the widest


def test_prior_kl_under_a_traced_end_time() -> None:
    n0 = jnp.array([0, 5, 100, 4096], jnp.float32)
    traced = jax.jit(lambda t: prior_kl(n0, t_end=t, max_count=4096))(jnp.float32(4.0))
    expected = [reference_prior_kl(int(n), 4.0, 4096)[0] for n in np.asarray(n0)]
    np.testing.assert_allclose(np.asarray(traced), expected, rtol=2e-5, atol=1e-9)


def test_nll_bound_is_the_sum_of_its_terms() -> None:
    n0 = jnp.tile(jnp.array([[0, 3, 16, 7]], jnp.int32), (8, 1))
    predictor = jax.tree_util.Partial(_blend, jnp.array([0.5, 1.0]), n0)
    kwargs = {"t_end": 15.0, "max_count": MAX_COUNT, "num_time_samples": 4}
    terms = nll_bound_terms(jax.random.key(7), predictor, n0, **kwargs)
    assert isinstance(terms, NllBoundTerms)
    assert terms.prior.shape == terms.diffusion.shape == (8,)
    expected_prior = float(jnp.sum(prior_kl(n0[0], t_end=15.0, max_count=MAX_COUNT)))
    np.testing.assert_allclose(np.asarray(terms.prior), expected_prior, rtol=1e-6)
    assert np.all(np.asarray(terms.diffusion) > 0.0)
    bound = nll_bound(jax.random.key(7), predictor, n0, **kwargs)
    np.testing.assert_array_equal(np.asarray(bound), np.asarray(terms.prior + terms.diffusion))
