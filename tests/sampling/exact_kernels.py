"""Exact one-step transition matrices of every sampler for a predictor that acts count by count.

When ``predict_fn`` gives each count a prediction ``yhat(n, t)`` that depends on that count only,
every sampler moves the counts independently, and its step ``t -> s`` is a Markov kernel on
``0..N``. These matrices, built here in float64 NumPy from the update rules of
:mod:`blackout_jax.sampling`, give the exact law of a K-step run: the yardstick for chi-square
tests of the compiled samplers and for the order of their error.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

Predictor = Callable[[np.ndarray, float], np.ndarray]  # (states (N + 1,), t) -> yhat


def bridge_probability(s: float, t: float) -> float:
    """``r = (p_s - p_t) / (1 - p_t)``."""
    return float(np.exp(-s) * np.expm1(-(t - s)) / np.expm1(-t))


def _births_law(method: str, expected: float, room: int, r: float) -> np.ndarray:
    """Law of one stage's births on ``0..room`` for ``expected`` missing units."""
    support = np.arange(room + 1)
    if method == "binomial_bridge":  # round half to even, as jnp.round
        return stats.binom.pmf(support, int(np.clip(np.round(expected), 0, room)), r)
    if method == "trapezoidal_bridge":  # clipped to the room, unbiased rounding
        expected = float(np.clip(expected, 0.0, room))
        whole = int(np.floor(expected))
        frac = expected - whole
        law = (1.0 - frac) * stats.binom.pmf(support, whole, r)
        if frac > 0:
            law = law + frac * stats.binom.pmf(support, whole + 1, r)
        return law
    expected = max(float(expected), 0.0)  # Poisson rates: negative ones count as 0
    if method == "tau_leaping":
        rate = expected * r
    else:  # trapezoidal_leaping: frozen rate over the clock -log(1 - r)
        rate = expected * (-np.log1p(-r) if r < 1.0 else 1.0)
    law = stats.poisson.pmf(support, rate)
    law[-1] += stats.poisson.sf(room, rate)
    return law


def _midpoint(t: float, s: float) -> tuple[float, float]:
    if s <= 0.0:
        return 0.5 * t, 0.0
    return float(-np.log1p(-np.sqrt(np.expm1(-t) * np.expm1(-s)))), 1.0


def step_kernel(method: str, predict: Predictor, t: float, s: float, max_count: int) -> np.ndarray:
    """``P[n_t, n_s]`` of one sampler step ``t -> s``, ``(N + 1, N + 1)``."""
    states = np.arange(max_count + 1)
    kernel = np.zeros((max_count + 1, max_count + 1))
    pred_t = predict(states, t)
    if method in ("binomial_bridge", "tau_leaping"):
        r = bridge_probability(s, t)
        for n in states:
            kernel[n, n:] = _births_law(method, pred_t[n], max_count - n, r)
        return kernel
    mid, weight = _midpoint(t, s)
    r_first, r_second = bridge_probability(mid, t), bridge_probability(s, mid)
    pred_mid = predict(states, mid)
    for n in states:
        first = _births_law(method, pred_t[n], max_count - n, r_first)
        for births, prob in enumerate(first):
            n_mid = n + births
            frozen = pred_t[n] - (births if method == "trapezoidal_bridge" else 0.0)
            expected = pred_mid[n_mid] + weight * (pred_mid[n_mid] - frozen)
            second = _births_law(method, expected, max_count - n_mid, r_second)
            kernel[n, n_mid:] += prob * second
    return kernel


def run_law(
    method: str, predict: Predictor, times: np.ndarray, start: np.ndarray, max_count: int
) -> np.ndarray:
    """Law of ``n_0`` after walking the increasing grid ``times`` down from the law ``start``."""
    law = np.asarray(start, np.float64)
    times = np.asarray(times, np.float64)
    for k in range(len(times) - 1, 0, -1):
        law = law @ step_kernel(method, predict, times[k], times[k - 1], max_count)
    return law
