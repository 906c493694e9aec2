"""Observation-time grids of the Blackout forward process.

The survival probability of one unit is ``p_t = exp(-t)``. The reference grid spaces the
observation times so that ``logit(p_t)`` falls linearly from ``L`` to ``-L`` with
``L = log(exp(t_end) - 1)``:

    f_k = L - 2 L (k - 1) / (T - 1),   t_k = softplus(-f_k),   k = 1..T,   t_0 = 0,

so ``t_1 = log1p(exp(-L)) ~ exp(-t_end)`` and ``t_T = t_end``. The continuous version maps
``u in [0, 1]`` to ``t = softplus(-L (1 - 2u))``; it meets the grid at ``u = (k - 1) / (T - 1)``.

All functions return float32 arrays and work under ``jax.jit``/``jax.vmap`` (``num_steps`` is a
Python int).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from blackout_jax import argument_checks

Array = jax.Array


def logit_range(t_end: float | Array) -> Array:
    """``L = log(exp(t_end) - 1)``, the largest logit of ``p_t`` on the grid (float32).

    Computed as ``t_end + log(-expm1(-t_end))`` so that large ``t_end`` does not overflow.
    """
    t_end = jnp.asarray(t_end, jnp.float32)
    return t_end + jnp.log(-jnp.expm1(-t_end))


def continuous_time(u: Array, t_end: float | Array) -> Array:
    """Map ``u in [0, 1]`` to a time: ``t = softplus(-L (1 - 2u))``, same shape as ``u``.

    ``u = 0`` gives ``t = log1p(exp(-L)) ~ exp(-t_end)`` and ``u = 1`` gives ``t_end``.
    """
    u = jnp.asarray(u, jnp.float32)
    big_l = logit_range(t_end)
    return jax.nn.softplus(-big_l * (1.0 - 2.0 * u))


def observation_times(num_steps: int, t_end: float) -> Array:
    """The reference observation grid, shape ``(num_steps + 1,)``, float32, increasing.

    ``times[0] = 0`` and ``times[k] = softplus(-f_k)`` with ``f_k = L - 2L (k-1)/(T-1)`` for
    ``k = 1..T`` (``T = num_steps``). With ``num_steps = 1`` the grid is ``[0, t_end]``.

    Raises:
      ValueError: ``num_steps < 1`` or ``t_end <= 0`` (checked when the values are concrete).
    """
    if isinstance(num_steps, (int, np.integer)):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    else:
        raise ValueError(f"num_steps must be a Python int, got {type(num_steps).__name__}")
    argument_checks.check_positive_scalar("t_end", t_end)
    if num_steps == 1:
        u = jnp.ones((1,), jnp.float32)
    else:
        u = jnp.arange(num_steps, dtype=jnp.float32) / (num_steps - 1)
    times = continuous_time(u, t_end)
    return jnp.concatenate([jnp.zeros((1,), jnp.float32), times])


def subgrid(times: Array, num_steps: int) -> Array:
    """Every-k-th style sub-grid of an increasing grid, keeping both ends.

    Returns ``num_steps + 1`` points ``times[round(j * K / num_steps)]``, ``j = 0..num_steps``,
    of a grid with ``K + 1`` points (``K = len(times) - 1``). When ``num_steps`` divides ``K``
    this is exactly every ``K / num_steps``-th point.

    Raises:
      ValueError: ``num_steps`` not in ``1..K``.
    """
    num_points = int(np.shape(times)[0])
    total = num_points - 1
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= total:
        raise ValueError(f"num_steps must be an int in 1..{total}, got {num_steps}")
    indices = np.round(np.arange(num_steps + 1) * total / num_steps).astype(np.int64)
    return jnp.asarray(times)[indices]


def grid_position(t: Array, t_end: float | Array, num_steps: int) -> Array:
    """Continuous grid index of a time: ``k(t) = 1 + (T - 1) (1 - logit(p_t) / L) / 2``.

    Equals ``k`` exactly at ``t = t_k`` (``k = 1..T``) and interpolates between grid points;
    ``logit(p_t) = -log(expm1(t))``. Same shape as ``t``, float32.
    """
    t = jnp.asarray(t, jnp.float32)
    logit_p = -jnp.log(jnp.expm1(t))
    return 1.0 + (num_steps - 1) * (1.0 - logit_p / logit_range(t_end)) / 2.0
