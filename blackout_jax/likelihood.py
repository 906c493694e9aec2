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

import jax
import jax.numpy as jnp

from blackout_jax import argument_checks, functional, losses, process, schedule

Array = jax.Array
PredictFn = Callable[[Array, Array], Array]


def prior_rate(*, t_end: float, max_count: int) -> Array:
    """``c p_{t_end}`` with ``c = max_count / 2`` (float32 scalar)."""
    return 0.5 * max_count * process.survival_probability(t_end)


def prior_sample(key: Array, shape: tuple[int, ...], *, t_end: float, max_count: int) -> Array:
    """Draw int32 counts of ``shape`` from ``Poisson(c p_{t_end})``, clipped to ``max_count``.

    With the reference ``t_end = 15`` the rate is ``~ 4e-5`` per count: almost always zeros.
    """
    argument_checks.check_max_count(max_count)
    argument_checks.check_positive_scalar("t_end", t_end)
    draws = jax.random.poisson(key, prior_rate(t_end=t_end, max_count=max_count), shape)
    return jnp.minimum(draws, max_count).astype(jnp.int32)


def prior_log_prob(n: Array, *, t_end: float, max_count: int) -> Array:
    """Elementwise ``log Poisson(n; c p_{t_end})`` (float32, ``-inf`` off the support)."""
    argument_checks.check_max_count(max_count)
    rate = prior_rate(t_end=t_end, max_count=max_count)
    n = jnp.asarray(n, jnp.float32)
    log_prob = jax.scipy.special.xlogy(n, rate) - rate - process.log_factorial(jnp.maximum(n, 0.0))
    return jnp.where((n >= 0) & (n == jnp.round(n)), log_prob, -jnp.inf)


def prior_kl(n0: Array, *, t_end: float, max_count: int) -> Array:
    """Elementwise ``KL(Binomial(n_0, p_{t_end}) || Poisson(c p_{t_end}))`` in nats (float32).

    Exact: the sum over ``k = 0..max_count`` of ``q(k) (log q(k) - log prior(k))``, accumulated
    in a loop so memory stays at the size of ``n0``.

    Raises:
      ValueError: (concrete inputs) ``n0`` invalid or above ``max_count``; ``t_end <= 0``.
    """
    argument_checks.check_max_count(max_count)
    argument_checks.check_counts("n0", n0, max_count)
    argument_checks.check_positive_scalar("t_end", t_end)
    return _prior_kl(jnp.asarray(n0, jnp.float32), jnp.asarray(t_end, jnp.float32), max_count)


@functools.partial(jax.jit, static_argnums=2)
def _prior_kl(n0: Array, t_end: Array, max_count: int) -> Array:
    def add_term(k: Array, total: Array) -> Array:
        k = k.astype(jnp.float32)
        log_q = process.forward_log_prob(k, n0, t_end)
        log_prior = prior_log_prob(k, t_end=t_end, max_count=max_count)
        term = jnp.where(jnp.isfinite(log_q), jnp.exp(log_q) * (log_q - log_prior), 0.0)
        return total + term

    return jax.lax.fori_loop(0, max_count + 1, add_term, jnp.zeros_like(n0))


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

    The time integral is estimated with ``num_time_samples`` stratified draws per example
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
        return _nll_bound(key, predict_fn, n0, t_end, max_count, num_time_samples)
    return _nll_bound_compiled(
        key,
        functional.as_partial(predict_fn),
        jnp.asarray(n0),
        t_end=float(t_end),
        max_count=int(max_count),
        num_time_samples=num_time_samples,
    )


def _nll_bound(
    key: Array,
    predict_fn: PredictFn,
    n0: Array,
    t_end: float | Array,
    max_count: int,
    num_time_samples: int,
) -> Array:
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
    return prior_term + diffusion_sum / num_time_samples


_nll_bound_compiled = jax.jit(
    _nll_bound, static_argnames=("t_end", "max_count", "num_time_samples")
)


def bits_per_dim(nats: Array, num_dims: int) -> Array:
    """``nats / (num_dims ln 2)``: a per-example bound in nats as bits per count."""
    return jnp.asarray(nats, jnp.float32) / (num_dims * math.log(2.0))
