"""The prior and the exact likelihood bound of Blackout Diffusion (no dequantisation).

Prior at ``t_end``: independent ``Poisson(c p_{t_end})`` per count, ``c = max_count / 2``.
For one example ``n_0`` with ``D`` counts,

    -log p(n_0) <= sum_i KL(Binomial(n_{0,i}, p_{t_end}) || Poisson(c p_{t_end}))
                   + E_{u ~ U(0,1)} [ 2L p_t sum_i (yhat_i - m_i + m_i log(m_i / yhat_i)) ],

with ``t = continuous_time(u)``, ``n_t ~ Binomial(n_0, p_t)``, ``m = n_0 - n_t`` and
``yhat = predict_fn(n_t, t)``. :func:`bits_per_dim` converts nats to bits per dimension.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from blackout_jax import argument_checks, draws, functional, losses, process, schedule

Array = jax.Array
PredictFn = Callable[[Array, Array], Array]


def prior_rate(*, t_end: float, max_count: int) -> Array:
    """``c p_{t_end}`` with ``c = max_count / 2`` (float32 scalar)."""
    return 0.5 * max_count * process.survival_probability(t_end)


def prior_sample(key: Array, shape: tuple[int, ...], *, t_end: float, max_count: int) -> Array:
    """Draw int32 counts of ``shape`` from ``Poisson(c p_{t_end})``, clipped to ``max_count``
    (:func:`blackout_jax.draws.capped_poisson`, exact for any key implementation).

    With the reference ``t_end = 15`` the rate is ``~ 4e-5`` per count: almost always zeros.
    """
    argument_checks.check_max_count(max_count)
    argument_checks.check_positive_scalar("t_end", t_end)
    rate = jnp.broadcast_to(prior_rate(t_end=t_end, max_count=max_count), shape)
    return draws.capped_poisson(key, rate, max_count)


def prior_log_prob(n: Array, *, t_end: float, max_count: int) -> Array:
    """Elementwise ``log Poisson(n; c p_{t_end})`` (float32, ``-inf`` off the support)."""
    argument_checks.check_max_count(max_count)
    rate = prior_rate(t_end=t_end, max_count=max_count)
    n = jnp.asarray(n, jnp.float32)
    log_prob = jax.scipy.special.xlogy(n, rate) - rate - process.log_factorial(jnp.maximum(n, 0.0))
    return jnp.where((n >= 0) & (n == jnp.round(n)), log_prob, -jnp.inf)


def prior_kl(n0: Array, *, t_end: float, max_count: int) -> Array:
    """Elementwise ``KL(Binomial(n_0, p) || Poisson(lam))`` in nats (float32), ``p = p_{t_end}``,
    ``lam = (N / 2) p``; the cost does not grow with ``max_count`` (``N``).

    In saddle-point form (``e`` the Stirling error, ``D(x, mu) = x log(x / mu) + mu - x`` the
    deviance of :func:`blackout_jax.draws.binomial_log_pmf`) the ``log k!`` of both laws cancel
    and the part linear in ``k`` sums to a deviance:

        KL = D(n_0 p, lam) + E_q[c(k)],   q = Binomial(n_0, p),   m = n_0 - k,
        c(k) = e(n_0) - e(m) + log(n_0 / m) / 2 - D(m, n_0 (1 - p))      (m >= 1),
        c(n_0) = -n_0 (1 - p) + e(n_0) + log(2 pi n_0) / 2,

    (0 for ``n_0 = 0``), terms of order one near the mean, so float32 keeps the KL to a few
    roundings of its own size rather than of ``n_0 log n_0``. ``q(k)`` comes from
    :func:`blackout_jax.draws.binomial_log_pmf`. The expectation runs over the window
    ``|k - floor(n_0 p)| <= A`` only, in a loop, so memory stays at the size of ``n0``. By
    Bernstein's inequality ``P(|k - n_0 p| >= a) <= 2 exp(-a^2 / (2 (s^2 + a / 3)))`` with
    ``s^2 = n_0 p (1 - p)``; at ``a = 10 + sqrt(100 + 60 s_max^2)``, ``s_max^2 = N p (1 - p)``,
    ``A = ceil(a) + 1``, the mass outside the window is below ``2 e^-30 < 2e-13`` and, as
    ``|c(k)| <= 3 N log N`` (at most the size of ``log q - log prior`` plus the linear part),
    its share of the KL below ``6e-13 N log N`` nats (``1e-5`` at ``N = 10^6``). With the
    reference ``t_end = 15`` the window has 46 terms from ``N = 45`` to ``N = 10^5`` and 58
    at ``N = 10^7``; a traced
    ``t_end`` takes the widest window, ``p = 1/2``. When the window covers ``0..N`` the sum is
    over every ``k``.

    Raises:
      ValueError: (concrete inputs) ``n0`` invalid or above ``max_count``; ``t_end <= 0``.
    """
    argument_checks.check_max_count(max_count)
    argument_checks.check_counts("n0", n0, max_count)
    argument_checks.check_positive_scalar("t_end", t_end)
    return _prior_kl(
        jnp.asarray(n0, jnp.float32),
        jnp.asarray(t_end, jnp.float32),
        max_count,
        prior_kl_window(t_end, max_count),
    )


def prior_kl_window(t_end: float | Array, max_count: int) -> int:
    """The number of ``k`` that :func:`prior_kl` sums per count: ``min(2A + 2, N + 1)``.

    ``A = ceil(10 + sqrt(100 + 60 N p (1 - p))) + 1`` with ``p = exp(-t_end)``, or
    ``p = 1/2`` for a traced ``t_end``.
    """
    if isinstance(t_end, jax.core.Tracer):
        variance = 0.25 * max_count
    else:
        p = math.exp(-float(t_end))
        variance = max_count * p * (1.0 - p)
    half_width = math.ceil(10.0 + math.sqrt(100.0 + 60.0 * variance)) + 1
    return min(2 * half_width + 2, max_count + 1)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _prior_kl(n0: Array, t_end: Array, max_count: int, window: int) -> Array:
    p = process.survival_probability(t_end)
    lam = 0.5 * max_count * p
    mean = n0 * p
    start = jnp.where(
        window > max_count, 0.0, jnp.maximum(jnp.floor(mean) - (window // 2 - 1), 0.0)
    )
    e_n0 = draws.stirling_error(n0)
    safe_n0 = jnp.maximum(n0, 1.0)
    at_the_end = -n0 * (1.0 - p) + e_n0 + 0.5 * jnp.log(2.0 * math.pi * safe_n0)

    def add_term(offset: Array, total: Array) -> Array:
        k = start + offset.astype(jnp.float32)
        rest = n0 - k
        safe_rest = jnp.maximum(rest, 1.0)
        inside = (
            e_n0
            - draws.stirling_error(safe_rest)
            + 0.5 * jnp.log(safe_n0 / safe_rest)
            - draws.deviance(safe_rest, n0 * (1.0 - p))
        )
        c = jnp.where(rest >= 1.0, inside, at_the_end)
        q = jnp.exp(draws.binomial_log_pmf(jnp.minimum(k, n0), n0, p))
        return total + jnp.where((k <= n0) & (n0 > 0), q * c, 0.0)

    expected_c = jax.lax.fori_loop(0, window, add_term, jnp.zeros_like(n0))
    return draws.deviance(mean, lam) + expected_c


class NllBoundTerms(NamedTuple):
    """The two parts of :func:`nll_bound` per example, nats, each ``(B,)`` float32."""

    prior: Array
    """``sum_i KL(Binomial(n_{0,i}, p_{t_end}) || Poisson(c p_{t_end}))``."""
    diffusion: Array
    """The Monte Carlo estimate of the time integral."""


def nll_bound(
    key: Array,
    predict_fn: PredictFn,
    n0: Array,
    *,
    t_end: float,
    max_count: int,
    num_time_samples: int,
) -> Array:
    """Per-example upper bound on ``-log p(n_0)`` in nats, shape ``(B,)``, float32.

    The sum ``prior + diffusion`` of :func:`nll_bound_terms` (same arguments).
    """
    terms = nll_bound_terms(
        key,
        predict_fn,
        n0,
        t_end=t_end,
        max_count=max_count,
        num_time_samples=num_time_samples,
    )
    return terms.prior + terms.diffusion


def nll_bound_terms(
    key: Array,
    predict_fn: PredictFn,
    n0: Array,
    *,
    t_end: float,
    max_count: int,
    num_time_samples: int,
) -> NllBoundTerms:
    """The prior and diffusion terms of the bound on ``-log p(n_0)``, nats, each ``(B,)``.

    ``prior`` is the sum of :func:`prior_kl` over each example's counts; ``diffusion`` the
    time integral, estimated with ``num_time_samples`` stratified draws per example
    (``u_j = (j + U_j) / M``, ``j = 0..M-1``), an unbiased estimate; each draw calls
    ``predict_fn`` once on the whole batch (a ``lax.scan``, so memory does not grow with ``M``).
    The computation is compiled once per ``(predict_fn, shapes, t_end, max_count, M)``; as for
    :func:`blackout_jax.sample`, pass a ``jax.tree_util.Partial`` to keep large arrays out of
    the compiled program.

    Args:
      key: PRNG key.
      predict_fn: ``(counts (B, ...), t (B,)) -> yhat`` with the shape of counts.
      n0: clean counts ``(B, ...)`` in ``0..max_count``.
      t_end: end time of the process (the prior's time).
      max_count: largest count ``N``; the prior rate is ``(N / 2) p_{t_end}``.
      num_time_samples: Monte Carlo draws of ``u`` per example.
    """
    argument_checks.check_max_count(max_count)
    argument_checks.check_counts("n0", n0, max_count)
    argument_checks.check_positive_scalar("t_end", t_end)
    if not isinstance(num_time_samples, int) or num_time_samples < 1:
        raise ValueError(f"num_time_samples must be an int >= 1, got {num_time_samples!r}")
    if isinstance(t_end, jax.core.Tracer):  # a traced end time cannot key the cache
        return _nll_bound_terms(key, predict_fn, n0, t_end, max_count, num_time_samples)
    return _nll_bound_terms_compiled(
        key,
        functional.as_partial(predict_fn),
        jnp.asarray(n0),
        t_end=float(t_end),
        max_count=int(max_count),
        num_time_samples=num_time_samples,
    )


def _nll_bound_terms(
    key: Array,
    predict_fn: PredictFn,
    n0: Array,
    t_end: float | Array,
    max_count: int,
    num_time_samples: int,
) -> NllBoundTerms:
    n0 = jnp.asarray(n0)
    batch = n0.shape[0]
    reduce_axes = tuple(range(1, n0.ndim))
    two_l = 2.0 * schedule.logit_range(t_end)

    def one_draw(total: Array, inputs: tuple[Array, Array]) -> tuple[Array, None]:
        stratum, draw_key = inputs
        u_key, noise_key = jax.random.split(draw_key)
        u = (stratum + jax.random.uniform(u_key, (batch,))) / num_time_samples
        t = schedule.continuous_time(u, t_end)
        t_counts = t.reshape((batch,) + (1,) * (n0.ndim - 1))
        nt = process.forward_sample(noise_key, n0, t_counts)
        target = n0.astype(jnp.float32) - nt.astype(jnp.float32)
        divergence = losses.poisson_divergence(predict_fn(nt, t), target)
        integrand = two_l * process.survival_probability(t) * jnp.sum(divergence, reduce_axes)
        return total + integrand, None

    strata = jnp.arange(num_time_samples, dtype=jnp.float32)
    draw_keys = jax.random.split(key, num_time_samples)
    diffusion_sum, _ = jax.lax.scan(one_draw, jnp.zeros((batch,), jnp.float32), (strata, draw_keys))
    prior_term = jnp.sum(prior_kl(n0, t_end=t_end, max_count=max_count), reduce_axes)
    return NllBoundTerms(prior=prior_term, diffusion=diffusion_sum / num_time_samples)


_nll_bound_terms_compiled = jax.jit(
    _nll_bound_terms, static_argnames=("t_end", "max_count", "num_time_samples")
)


def bits_per_dim(nats: Array, num_dims: int) -> Array:
    """``nats / (num_dims ln 2)``: a per-example bound in nats as bits per count."""
    return jnp.asarray(nats, jnp.float32) / (num_dims * math.log(2.0))
