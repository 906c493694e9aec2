"""Two-stage (trapezoidal) samplers: exact K-step laws, order of the error, the dataset oracle.

The exactly solvable model: every count of the data is ``Binomial(N, rho)``, independently.
Then ``n_t ~ Binomial(N, rho p_t)`` and ``n_0 - n_t | n_t ~ Binomial(N - n_t, q_t)`` with
``q_t = rho (1 - p_t) / (1 - rho p_t)``, so the conditional mean is ``(N - n_t) q_t`` and the
reverse process ends at ``Binomial(N, rho)``. Each sampler then moves the counts one by one,
and :mod:`tests.exact_kernels` gives the exact law of a K-step run.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_digits

from blackout_jax import METHODS, dataset_oracle, likelihood, observation_times, sample
from tests.sampling import exact_kernels

MAX_COUNT = 16
RHO = 0.37  # keeps (N - n) q_t off the half-integers that round() could split
T_END = 15.0
SUPPORT = np.arange(MAX_COUNT + 1)


def product_mean(counts, t):
    """``E[n_0 - n_t | n_t] = (N - n_t) q_t`` for data with iid ``Binomial(N, rho)`` counts."""
    p = jnp.exp(-t).reshape((-1,) + (1,) * (counts.ndim - 1))
    q = RHO * (1.0 - p) / (1.0 - RHO * p)
    return (MAX_COUNT - counts).astype(jnp.float32) * q


def product_mean_numpy(states: np.ndarray, t: float) -> np.ndarray:
    p = np.exp(-t)
    return (MAX_COUNT - states) * RHO * (1.0 - p) / (1.0 - RHO * p)


def prior_law(t_end: float) -> np.ndarray:
    """The sampler's start: ``Poisson((N/2) p_{t_end})`` clipped to ``N``."""
    rate = float(likelihood.prior_rate(t_end=t_end, max_count=MAX_COUNT))
    law = stats.poisson.pmf(SUPPORT, rate)
    law[-1] += stats.poisson.sf(MAX_COUNT, rate)
    return law


@functools.cache
def discretisation_error(method: str, num_steps: int) -> float:
    """Total variation between the exact K-step law (from the exact ``n_{t_end}``) and the data."""
    times = np.asarray(observation_times(num_steps, T_END), np.float64)
    start = stats.binom.pmf(SUPPORT, MAX_COUNT, RHO * np.exp(-times[-1]))
    law = exact_kernels.run_law(method, product_mean_numpy, times, start, MAX_COUNT)
    return 0.5 * float(np.abs(law - stats.binom.pmf(SUPPORT, MAX_COUNT, RHO)).sum())


@pytest.mark.parametrize("num_steps", [3, 10])
@pytest.mark.parametrize("method", METHODS)
def test_k_step_marginal_is_the_exact_law(chi_square_pvalue, method: str, num_steps: int) -> None:
    """The compiled sampler draws the K-step law that its update rule implies, count by count."""
    times = observation_times(num_steps, T_END)
    draws = sample(
        jax.random.key(20 + num_steps),
        product_mean,
        (2000, 16),
        times,
        max_count=MAX_COUNT,
        method=method,
    )
    law = exact_kernels.run_law(
        method, product_mean_numpy, np.asarray(times, np.float64), prior_law(T_END), MAX_COUNT
    )
    assert chi_square_pvalue(np.asarray(draws), SUPPORT, law) > 1e-3


def _log_log_slope(method: str, steps: tuple[int, ...]) -> float:
    errors = [discretisation_error(method, k) for k in steps]
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def test_trapezoidal_leaping_is_second_order_and_tau_leaping_first() -> None:
    steps = (32, 64, 128)  # below 32 steps the leaping form is not yet in its asymptotic range
    assert -2.2 < _log_log_slope("trapezoidal_leaping", steps) < -1.8
    assert -1.1 < _log_log_slope("tau_leaping", steps) < -0.9


def test_trapezoidal_bridge_beats_the_one_call_bridge_at_equal_calls() -> None:
    """Its unbiased rounding makes it consistent; the reference bridge's rounding is not."""
    for num_steps in (8, 32):
        two_stage = discretisation_error("trapezoidal_bridge", num_steps)
        assert two_stage < discretisation_error("binomial_bridge", 2 * num_steps)
    assert discretisation_error("trapezoidal_bridge", 128) < 0.5 * discretisation_error(
        "trapezoidal_bridge", 32
    )


def test_oracle_at_many_steps_reproduces_the_dataset() -> None:
    members = load_digits().images[:20].astype(np.int32)[..., None]
    draws = sample(
        jax.random.key(30),
        dataset_oracle(members),
        (200, 8, 8, 1),
        observation_times(200, 10.0),
        max_count=MAX_COUNT,
        method="trapezoidal_bridge",
    )
    flat = np.asarray(draws).reshape(200, 1, -1)
    is_member = np.any(np.all(flat == members.reshape(1, 20, -1), axis=-1), axis=1)
    assert is_member.mean() >= 0.98
