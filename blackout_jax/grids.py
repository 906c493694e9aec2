"""Sampling grids chosen for a model: K times that minimise a measured per-step error proxy.

Error proxy. On a step ``t -> s`` a one-call sampler freezes the prediction
``yhat = E[m | n_t]`` of the missing units ``m = n_0 - n_t``; the exact reverse process updates
it as births happen. Per count, the births ``B`` of the exact step are a mixture of
``Binomial(m, r)`` over the posterior of ``m`` (``r`` the bridge probability of the step), so

    E[B] = r E[m | n_t],      E[B (B - 1)] = r^2 E[m (m - 1) | n_t],

while the bridge draws ``Binomial(yhat, r)`` with ``E[B (B - 1)] = r^2 yhat (yhat - 1)``: the law
of the births is off by ``r^2 Var(m | n_t)`` in its second factorial moment, the first term a
step gets wrong (its mean is exact). Summed over the counts of an example and averaged over
``n_t`` from the data, the error of step ``k`` is

    e_k = r(t_{k-1}, t_k)^2 V(t_k),     V(t) = E || n_0 - n_t - yhat(n_t, t) ||^2,

and ``V(t)`` is measurable: the mean squared residual of the model's prediction on training
examples pushed through the forward process (for the exact conditional mean it is the expected
posterior variance of the missing units, summed over the counts). It is large early (``t`` near
``t_end``, where the model knows little) and vanishes as ``t -> 0``. The grid minimises
``sum_k e_k`` over ``K`` steps with ``t_K = t_end`` and ``t_0 = 0``, choosing the inner times
from a candidate grid (the reference grid), exactly, by dynamic programming.

The off-diagonal terms ``r^2 Cov(m_i, m_j | n_t)`` (what ties counts of one example together)
are not in the proxy; it measures the per-count part only. For the trapezoidal samplers the
local error is of higher order, but the same ``V`` sets where steps are expensive.

Everything here is ``jax.numpy``: no files, no configs; ``predict_fn`` as in
:func:`blackout_jax.sample`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from blackout_jax import argument_checks, functional, process, schedule

Array = jax.Array
PredictFn = Callable[[Array, Array], Array]


def missing_variance(key: Array, predict_fn: PredictFn, examples: Array, times: Array) -> Array:
    """``V(t) = E || n_0 - n_t - yhat(n_t, t) ||^2`` at each time, estimated on ``examples``.

    For every time ``t_g`` the examples ``n_0`` (``(J, ...)``) are pushed to
    ``n_t ~ Binomial(n_0, p_t)`` (one draw each, keys folded from ``key`` by the index ``g``)
    and the squared residual of the prediction is summed over the counts and averaged over the
    examples.

    Args:
      key: PRNG key.
      predict_fn: ``(counts (J, ...), t (J,)) -> yhat``.
      examples: ``(J, ...)`` whole-number counts.
      times: ``(G,)`` times ``> 0``.

    Returns:
      ``(G,)`` float32, in squared counts per example.
    """
    argument_checks.check_counts("examples", examples)
    examples = jnp.asarray(examples, jnp.float32)
    if examples.ndim < 2 or examples.shape[0] < 1:
        raise ValueError(f"examples must have shape (J, ...) with J >= 1, got {examples.shape}")
    return _missing_variance(key, functional.as_partial(predict_fn), examples, times)


@jax.jit
def _missing_variance(
    key: Array, predict_fn: jax.tree_util.Partial, examples: Array, times: Array
) -> Array:
    num_examples = examples.shape[0]

    def at_time(index_and_time: tuple[Array, Array]) -> Array:
        index, t = index_and_time
        noisy = process.forward_sample(jax.random.fold_in(key, index), examples, t)
        t_batch = jnp.full((num_examples,), t, jnp.float32)
        residual = examples - noisy - predict_fn(noisy, t_batch).astype(jnp.float32)
        return jnp.mean(jnp.sum(residual.reshape(num_examples, -1) ** 2, axis=1))

    times = jnp.asarray(times, jnp.float32)
    return jax.lax.map(at_time, (jnp.arange(times.shape[0]), times))


def step_errors(times: Array, variance: Array) -> Array:
    """The proxy of every step of an increasing grid: ``e_k = r(t_{k-1}, t_k)^2 V(t_k)``.

    Args:
      times: ``(K + 1,)`` increasing grid, ``times[0] = 0``.
      variance: ``(K + 1,)`` ``V`` at those times (``variance[0]`` is not used).

    Returns:
      ``(K,)`` float32, step ``k`` (from ``times[k]`` to ``times[k - 1]``) at index ``k - 1``.
    """
    times = jnp.asarray(times, jnp.float32)
    r = process.bridge_probability(times[:-1], times[1:])
    return r**2 * jnp.asarray(variance, jnp.float32)[1:]


def best_subset(times: Array, variance: Array, num_steps: int) -> Array:
    """Indices of the ``num_steps + 1`` points of ``times`` with the least ``sum_k e_k``.

    Dynamic programming over the candidates (``M + 1`` points, ``times[0] = 0``,
    ``times[M] = t_end``): ``cost_k(i)`` is the least proxy of ``k`` steps from ``times[M]`` down
    to ``times[i]``, ``cost_k(i) = min_{j > i} cost_{k-1}(j) + r(times[i], times[j])^2 V_j``; the
    answer is the path of ``cost_K(0)``. ``O(K M^2)`` work; ties go to the lowest index, so the
    result is deterministic.

    Args:
      times: ``(M + 1,)`` increasing candidate grid, ``times[0] = 0``.
      variance: ``(M + 1,)`` ``V`` at the candidates.
      num_steps: ``K`` in ``1..M`` (a Python int).

    Returns:
      ``(K + 1,)`` int32 increasing indices, first 0, last ``M``.
    """
    times = jnp.asarray(times, jnp.float32)
    last = times.shape[0] - 1
    if not isinstance(num_steps, int | np.integer) or not 1 <= num_steps <= last:
        raise ValueError(f"num_steps must be an int in 1..{last}, got {num_steps!r}")
    return _best_subset(times, jnp.asarray(variance, jnp.float32), int(num_steps))


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _best_subset(times: Array, variance: Array, num_steps: int) -> Array:
    last = times.shape[0] - 1
    index = jnp.arange(last + 1)
    below = index[:, None] < index[None, :]  # [i, j]: a step from times[j] down to times[i]
    safe_start = jnp.maximum(times[None, :], times[:, None] + 1e-30)
    r = process.bridge_probability(times[:, None], safe_start)
    step_cost = jnp.where(below, r**2 * variance[None, :], jnp.inf)  # (M + 1, M + 1)
    start = jnp.where(index == last, 0.0, jnp.inf)

    def one_more_step(cost: Array, _: None) -> tuple[Array, Array]:
        total = cost[None, :] + step_cost
        came_from = jnp.argmin(total, axis=1)
        return jnp.min(total, axis=1), came_from

    _, came_from = jax.lax.scan(one_more_step, start, None, length=num_steps)

    def walk_back(position: Array, came: Array) -> tuple[Array, Array]:
        return came[position], position

    _, path = jax.lax.scan(walk_back, jnp.int32(0), came_from, reverse=True)
    # path[k] is the point reached after K - k steps: reversed, it runs up from index 0.
    return jnp.concatenate([path[::-1], jnp.array([last])]).astype(jnp.int32)


def optimised_grid(
    key: Array,
    predict_fn: PredictFn,
    examples: Array,
    num_steps: int,
    *,
    t_end: float,
    num_candidates: int = 1000,
    num_probes: int = 64,
) -> tuple[Array, Array]:
    """A ``num_steps``-step sampling grid minimising ``sum_k r_k^2 V(t_k)`` for this model.

    ``V`` is measured by :func:`missing_variance` at ``num_probes`` times evenly spaced in the
    logit coordinate ``u`` (:func:`blackout_jax.continuous_time`), interpolated linearly in
    ``u`` onto the candidates ``observation_times(num_candidates, t_end)``, and the best
    ``num_steps``-step sub-grid is chosen by :func:`best_subset`. Costs ``num_probes`` calls of
    ``predict_fn`` on ``(J, ...)``; deterministic for ``key``.

    Args:
      key: PRNG key (the forward draws of the examples).
      predict_fn: ``(counts (J, ...), t (J,)) -> yhat``.
      examples: ``(J, ...)`` training counts (a few hundred are enough).
      num_steps: ``K`` in ``1..num_candidates``.
      t_end: the model's final time.
      num_candidates: size of the candidate (reference) grid.
      num_probes: times at which ``V`` is measured (``>= 2``).

    Returns:
      ``(times, variance)``: the grid ``(K + 1,)`` float32, increasing, ``times[0] = 0``,
      ``times[-1] = t_end`` (the sampler walks it from the end), and ``V`` at its points.
    """
    for name, value in (("num_probes", num_probes), ("num_candidates", num_candidates)):
        if not isinstance(value, int | np.integer) or value < 2:
            raise ValueError(f"{name} must be an int >= 2, got {value!r}")
    candidates = schedule.observation_times(num_candidates, t_end)
    if not isinstance(num_steps, int | np.integer) or not 1 <= num_steps <= num_candidates:
        raise ValueError(f"num_steps must be an int in 1..{num_candidates}, got {num_steps!r}")
    probe_u = jnp.linspace(0.0, 1.0, num_probes)
    probed = missing_variance(key, predict_fn, examples, schedule.continuous_time(probe_u, t_end))
    candidate_u = jnp.linspace(0.0, 1.0, num_candidates)
    variance = jnp.concatenate([jnp.zeros((1,)), jnp.interp(candidate_u, probe_u, probed)])
    chosen = best_subset(candidates, variance, int(num_steps))
    return candidates[chosen], variance[chosen]
