"""Observation-time grids of the Blackout forward process.

The survival probability of one unit is ``p_t = exp(-t)``. The reference grid spaces the
observation times so that ``logit(p_t)`` falls linearly from ``L`` to ``-L`` with
``L = log(exp(t_end) - 1)``:

    f_k = L - 2 L (k - 1) / (T - 1),   t_k = softplus(-f_k),   k = 1..T,   t_0 = 0,

so ``t_1 = log1p(exp(-L)) ~ exp(-t_end)`` and ``t_T = t_end``. The continuous version maps
``u in [0, 1]`` to ``t = softplus(-L (1 - 2u))``; it meets the grid at ``u = (k - 1) / (T - 1)``.

Sampling grids with fewer steps than training (:func:`sampling_times`, choices :data:`GRIDS`):
``"logit"`` is a fresh ``K``-point reference grid, ``"subgrid"`` takes every ``T/K``-th point of
the ``T``-point training grid, as the reference's generation code does.

Un-thinning grids (:func:`unthinning_times`) run from ``t* = -ln q`` instead of ``t_end``: the
reverse process of :func:`blackout_jax.unthin` starts from an observation thinned with survival
``q``.

All functions return float32 arrays and work under ``jax.jit``/``jax.vmap`` (``num_steps`` is a
Python int).
"""

from __future__ import annotations

from collections.abc import Callable

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


def _logit_grid(num_steps: int, t_end: float, diffusion_steps: int) -> Array:
    del diffusion_steps
    return observation_times(num_steps, t_end)


def _every_dth_training_time(num_steps: int, t_end: float, diffusion_steps: int) -> Array:
    if (
        not isinstance(diffusion_steps, (int, np.integer))
        or isinstance(diffusion_steps, bool)
        or diffusion_steps < 1
    ):
        raise ValueError(f"diffusion_steps must be an int >= 1, got {diffusion_steps!r}")
    if num_steps > diffusion_steps or diffusion_steps % num_steps:
        raise ValueError(
            f"grid 'subgrid' takes every d-th time of the training grid, so num_steps must "
            f"divide diffusion_steps = {diffusion_steps}, got num_steps = {num_steps}; choose a "
            f"divisor or grid 'logit'"
        )
    return subgrid(observation_times(diffusion_steps, t_end), num_steps)


_GRID_BUILDERS: dict[str, Callable[[int, float, int], Array]] = {
    "logit": _logit_grid,
    "subgrid": _every_dth_training_time,
}
GRIDS = tuple(_GRID_BUILDERS)
"""The sampling grids of :func:`sampling_times` (config ``sampling.grid``)."""


def sampling_times(grid: str, num_steps: int, *, t_end: float, diffusion_steps: int) -> Array:
    """The ``num_steps + 1`` increasing times a sampler walks down, float32, ``times[0] = 0``.

    * ``"logit"``: ``observation_times(num_steps, t_end)``, the reference grid built with
      ``K = num_steps`` points (``logit(p_t)`` linear in ``k``); with ``K = T`` it is the
      training grid.
    * ``"subgrid"``: every ``d``-th time of the training grid
      ``observation_times(diffusion_steps, t_end)``, ``d = diffusion_steps / num_steps``:
      ``times[j] = t_{j d}``, ``j = 0..K``. These are the times the network was trained at,
      which is what the reference's generation code walks (its ``skipped = d``). ``d`` must
      be a whole number: a ``num_steps`` that does not divide ``diffusion_steps`` raises.

    Args:
      grid: one of :data:`GRIDS`.
      num_steps: sampler steps ``K >= 1``.
      t_end: end time of the process (``> 0``).
      diffusion_steps: ``T``, the number of observation times of training, the grid
        ``observation_times(T, t_end)`` the network learnt on (config ``diffusion.num_steps``).

    Raises:
      ValueError: an unknown ``grid``, a bad ``num_steps``/``t_end``, or (``"subgrid"``)
        ``num_steps`` not dividing ``diffusion_steps``.
    """
    if grid not in _GRID_BUILDERS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(f"num_steps must be a Python int, got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return _GRID_BUILDERS[grid](int(num_steps), t_end, diffusion_steps)


UNTHIN_GRIDS = ("logit",)
"""The grids of :func:`unthinning_times` (``grid`` of :func:`blackout_jax.unthin`)."""

UNTHIN_CLOCK_SPAN = 15.0
"""``t_1`` of an un-thinning grid leaves a fraction ``exp(-UNTHIN_CLOCK_SPAN)`` of the missing
units unborn (``1 - p_{t_1} = exp(-15) (1 - q)``, about 3e-7 of them)."""


def unthinning_times(survival: Array, num_steps: int) -> Array:
    """Grids from ``t* = -ln q`` down to 0 for observations thinned with survival ``q``.

    ``times[..., 0] = 0``, ``times[..., K] = t*`` and, for ``k = 1..K``, ``logit(p_{t_k})``
    evenly spaced in ``k`` (as on the reference grid) from ``logit(p_{t_1})`` down to
    ``logit(q)``, where ``t_1`` is the time at which all but a fraction
    ``exp(-UNTHIN_CLOCK_SPAN)`` of the missing units are born: ``1 - p_{t_1} = exp(-15) (1 - q)``
    (a missing unit is unborn at ``t`` with probability ``(1 - p_t) / (1 - q)``). The last step
    ``t_1 -> 0`` therefore adds next to nothing, as on the reference grid, whose ``t_1 ~
    exp(-t_end)``. The reference grid of ``t_end = t*`` itself
    (``observation_times(K, t*)``) does not serve: its ``t_1 = t* - log(expm1(t*))`` exceeds
    ``t*`` for ``q > 1/2``, and for smaller ``q`` it leaves a fraction ``~ exp(-t*)`` (10% at
    ``q = 0.1``) to the last step.

    Args:
      survival: ``q`` in ``(0, 1)``, a scalar or any shape (``(B,)``: one grid per example).
      num_steps: ``K >= 1`` (a Python int); ``K = 1`` gives ``[0, t*]``.

    Returns:
      float32 ``(*survival.shape, K + 1)``, increasing along the last axis.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(f"num_steps must be a Python int, got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    q = jnp.asarray(survival, jnp.float32)[..., None]
    log_missing = jnp.log1p(-q)  # log(1 - q)
    end_logit = jnp.log(q) - log_missing
    first_missing = jnp.exp(log_missing - UNTHIN_CLOCK_SPAN)  # 1 - p_{t_1}
    first_logit = jnp.log1p(-first_missing) - (log_missing - UNTHIN_CLOCK_SPAN)
    if num_steps == 1:
        fraction = jnp.ones((1,), jnp.float32)
    else:
        fraction = jnp.arange(num_steps, dtype=jnp.float32) / (num_steps - 1)
    inner = jax.nn.softplus(-(first_logit + (end_logit - first_logit) * fraction))[..., :-1]
    return jnp.concatenate([jnp.zeros_like(q), inner, -jnp.log(q)], axis=-1)
