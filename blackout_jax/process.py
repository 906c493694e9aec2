"""The Blackout forward process (pure death at rate 1) and its exact reverse-time bridge.

Per count, with ``p_t = exp(-t)``:

* forward marginal   ``q(n_t | n_0) = Binomial(n_t; n_0, p_t)``;
* bridge (``s < t``) ``q(n_s | n_t, n_0) = n_t + Binomial(n_0 - n_t, r)``, with
  ``r = (p_s - p_t) / (1 - p_t) = exp(-s) (1 - exp(-(t - s))) / (1 - exp(-t))`` and
  ``1 - r = (1 - exp(-s)) / (1 - exp(-t))``;
* reverse-time birth rate ``lambda = E[n_0 - n_t | n_t] p_t / (1 - p_t) = yhat / expm1(t)``.

Every ``1 - exp(-x)`` is evaluated as ``-expm1(-x)``, so float32 stays accurate from
``t ~ 1e-7`` up to ``t ~ 20``.

Dtype rules: counts may be any integer or float dtype holding whole numbers; ``t`` and ``s``
broadcast against them. Log-probabilities and rates are float32; samples keep the dtype of the
counts they are drawn from (``n0``). Inputs are checked only when concrete (see
:mod:`blackout_jax.argument_checks`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from blackout_jax import argument_checks

Array = jax.Array


def survival_probability(t: Array) -> Array:
    """``p_t = exp(-t)``, the probability that one unit is still alive at time ``t`` (float32)."""
    return jnp.exp(-jnp.asarray(t, jnp.float32))


def log_one_minus_survival(t: Array) -> Array:
    """``log(1 - p_t)`` (float32; ``-inf`` at ``t = 0``), accurate relative to its size.

    ``log(-expm1(-t))`` for ``t <= log 2`` and ``log1p(-exp(-t))`` above, so the value keeps
    float32 relative precision both for tiny ``t`` and for large ``t`` (where it is ``~ -e^{-t}``).
    """
    t = jnp.asarray(t, jnp.float32)
    return jnp.where(t <= jnp.log(2.0), jnp.log(-jnp.expm1(-t)), jnp.log1p(-jnp.exp(-t)))


def log_factorial(n: Array) -> Array:
    """``log(n!)`` for whole ``n >= 0`` (float32), exactly 0 at ``n = 0`` and ``n = 1``.

    ``lgamma(n + 1)``, except that ``0! = 1! = 1`` are returned exactly (XLA's float32 ``lgamma``
    is off by a few 1e-7 at 1, which would make certain outcomes look slightly uncertain).
    """
    n = jnp.asarray(n, jnp.float32)
    return jnp.where(n <= 1.0, 0.0, jax.lax.lgamma(n + 1.0))


def binomial_log_prob(k: Array, n: Array, log_p: Array, log_one_minus_p: Array) -> Array:
    """``log Binomial(k; n, p)`` from ``log p`` and ``log(1 - p)``, float32, ``-inf`` off support.

    ``log C(n, k) + k log p + (n - k) log(1 - p)`` with ``0 * log 0 = 0``, so ``p = 0`` and
    ``p = 1`` are exact. Off the support (``k < 0``, ``k > n``, ``n < 0`` or non-whole ``k``,
    ``n``) the result is ``-inf``.
    """
    k = jnp.asarray(k, jnp.float32)
    n = jnp.asarray(n, jnp.float32)
    k_safe = jnp.clip(k, 0.0, jnp.maximum(n, 0.0))
    n_safe = jnp.maximum(n, 0.0)
    log_choose = log_factorial(n_safe) - log_factorial(k_safe) - log_factorial(n_safe - k_safe)
    success = jnp.where(k_safe == 0, 0.0, k_safe * log_p)
    failure = jnp.where(n_safe - k_safe == 0, 0.0, (n_safe - k_safe) * log_one_minus_p)
    on_support = (k >= 0) & (k <= n) & (k == jnp.round(k)) & (n == jnp.round(n))
    return jnp.where(on_support, log_choose + success + failure, -jnp.inf)


def forward_log_prob(nt: Array, n0: Array, t: Array) -> Array:
    """``log q(n_t | n_0) = log Binomial(n_t; n_0, exp(-t))``; broadcast shape, float32.

    Raises:
      ValueError: (concrete inputs) counts negative, non-whole or non-finite, or ``t < 0``.
    """
    argument_checks.check_counts("nt", nt)
    argument_checks.check_counts("n0", n0)
    argument_checks.check_times("t", t)
    t = jnp.asarray(t, jnp.float32)
    return binomial_log_prob(nt, n0, -t, log_one_minus_survival(t))


def forward_sample(key: Array, n0: Array, t: Array) -> Array:
    """Draw ``n_t ~ Binomial(n_0, exp(-t))``; shape of ``broadcast(n0, t)``, dtype of ``n0``.

    Raises:
      ValueError: (concrete inputs) ``n0`` negative, non-whole or non-finite, or ``t < 0``.
    """
    argument_checks.check_counts("n0", n0)
    argument_checks.check_times("t", t)
    n0 = jnp.asarray(n0)
    p = survival_probability(t)
    shape = jnp.broadcast_shapes(n0.shape, p.shape)
    draws = jax.random.binomial(key, jnp.broadcast_to(n0, shape).astype(jnp.float32), p, shape)
    return draws.astype(n0.dtype)


def bridge_probability(s: Array, t: Array) -> Array:
    """``r = (p_s - p_t) / (1 - p_t) = exp(-s) (1 - exp(-(t - s))) / (1 - exp(-t))`` (float32).

    The probability that a unit alive at ``s`` but dead at ``t`` is counted at ``s``; it is the
    success probability of the reverse-time bridge. ``0 <= s < t``.
    """
    s = jnp.asarray(s, jnp.float32)
    t = jnp.asarray(t, jnp.float32)
    return jnp.exp(-s) * jnp.expm1(-(t - s)) / jnp.expm1(-t)


def bridge_log_probabilities(s: Array, t: Array) -> tuple[Array, Array]:
    """``(log r, log(1 - r))`` to float32 relative precision (no cancellation near 0 or 1).

    Both ``r = exp(-s) expm1(-(t - s)) / expm1(-t)`` and ``1 - r = expm1(-s) / expm1(-t)`` are
    accurate relative to their size; each logarithm is taken of whichever of the two is small
    (``log x`` for ``x < 1/2``, else ``log1p(-(1 - x))``), so no cancellation occurs even when
    ``r`` is close to 0 or 1.
    """
    s = jnp.asarray(s, jnp.float32)
    t = jnp.asarray(t, jnp.float32)
    denominator = jnp.expm1(-t)
    r = jnp.exp(-s) * jnp.expm1(-(t - s)) / denominator
    one_minus_r = jnp.expm1(-s) / denominator
    log_r = jnp.where(r < 0.5, jnp.log(r), jnp.log1p(-one_minus_r))
    log_one_minus_r = jnp.where(one_minus_r < 0.5, jnp.log(one_minus_r), jnp.log1p(-r))
    return log_r, log_one_minus_r


def bridge_log_prob(ns: Array, nt: Array, n0: Array, s: Array, t: Array) -> Array:
    """``log q(n_s | n_t, n_0) = log Binomial(n_s - n_t; n_0 - n_t, r)``; float32.

    ``-inf`` off the support ``n_t <= n_s <= n_0``.

    Raises:
      ValueError: (concrete inputs) counts invalid, ``s < 0`` or ``s >= t``.
    """
    for name, counts in (("ns", ns), ("nt", nt), ("n0", n0)):
        argument_checks.check_counts(name, counts)
    argument_checks.check_times("s", s)
    argument_checks.check_earlier(s, t)
    log_r, log_one_minus_r = bridge_log_probabilities(s, t)
    ns = jnp.asarray(ns, jnp.float32)
    nt = jnp.asarray(nt, jnp.float32)
    n0 = jnp.asarray(n0, jnp.float32)
    return binomial_log_prob(ns - nt, n0 - nt, log_r, log_one_minus_r)


def bridge_sample(key: Array, nt: Array, n0: Array, s: Array, t: Array) -> Array:
    """Draw ``n_s = n_t + Binomial(n_0 - n_t, r)``; broadcast shape, dtype of ``nt``.

    Requires ``n_t <= n_0`` elementwise and ``0 <= s < t``.

    Raises:
      ValueError: (concrete inputs) counts invalid, ``n_t > n_0``, ``s < 0`` or ``s >= t``.
    """
    argument_checks.check_counts("nt", nt)
    argument_checks.check_counts("n0", n0)
    nt_values, n0_values = argument_checks.concrete_value(nt), argument_checks.concrete_value(n0)
    if nt_values is not None and n0_values is not None:
        argument_checks.check_counts("n0 - nt", n0_values.astype(float) - nt_values.astype(float))
    argument_checks.check_times("s", s)
    argument_checks.check_earlier(s, t)
    nt = jnp.asarray(nt)
    r = bridge_probability(s, t)
    missing = jnp.asarray(n0, jnp.float32) - nt.astype(jnp.float32)
    shape = jnp.broadcast_shapes(missing.shape, r.shape)
    born = jax.random.binomial(key, jnp.broadcast_to(missing, shape), r, shape)
    return (nt + born).astype(nt.dtype)


def birth_rate(pred: Array, t: Array) -> Array:
    """Reverse-time birth rate ``lambda = yhat p_t / (1 - p_t) = yhat / expm1(t)`` (float32).

    ``pred`` is the predicted number of missing units ``yhat ~ E[n_0 - n_t | n_t]``.
    """
    return jnp.asarray(pred, jnp.float32) / jnp.expm1(jnp.asarray(t, jnp.float32))
