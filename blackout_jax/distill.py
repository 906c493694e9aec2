"""Few-step students distilled from a teacher sampler: births correlated across counts.

In one large reverse step ``t -> s`` the exact transition is a mixture over the clean example,

    p(n_s | n_t) = E_{n_0 | n_t} [ prod_i Binomial(n_{s,i} - n_{t,i}; n_{0,i} - n_{t,i}, r) ],

``r = (p_s - p_t) / (1 - p_t)``: the births of different counts are correlated through ``n_0``.
A one-call sampler replaces ``n_0 - n_t`` by one prediction ``yhat`` and draws every count
independently, which cannot represent that mixture when the step is long. A **mixture student**
keeps the bridge's form but with ``J`` predictions per step,

    p_student(n_s | n_t) = sum_j pi_j prod_i B(n_{s,i} - n_{t,i}; yhat_{j,i}, r),

``(yhat_j, logits) = student_fn(n_t, t, s)``, ``pi = softmax(logits)``, and ``B(b; y, r)`` the
law of the births of a bridge driven by the real-valued ``y``, clipped to ``0..N - n_t`` and
rounded without bias: ``(1 - f) Binomial(b; m, r) + f Binomial(b; m + 1, r)``, ``m = floor(y)``,
``f = y - m``. A step draws a component ``j`` and then every count's births with ``yhat_j``: one
network call per step. ``B`` is continuous in ``y``, so the student is fitted by maximum
likelihood (:func:`distillation_loss`) to pairs ``(n_t, n_s)`` of the teacher's own trajectories
(:func:`teacher_trajectories`) at the student's grid times. With ``J`` at least the size of a
finite dataset the student can hold the exact mixture above; with ``J = 1`` and a whole-number
``yhat`` its step is the teacher's ``binomial_bridge`` step (:func:`bridge_step_log_prob`).

Shapes: counts ``(B, ...)``; a student's rates ``(B, J, ...)`` and logits ``(B, J)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from blackout_jax import argument_checks, functional, process, sampling

Array = jax.Array
StudentFn = Callable[[Array, Array, Array], tuple[Array, Array]]
"""``student_fn(counts (B, ...), t (B,), s (B,)) -> (rates (B, J, ...), logits (B, J))``."""

ROUNDINGS = ("nearest", "unbiased")
_SMALLEST_WEIGHT = 1e-30  # keeps log(f) finite (and its gradient) where f = 0 is not used
_IMPOSSIBLE = -1e4  # stands for log 0 inside the sums, so that their gradients stay finite
DEFAULT_LEAK = 1e-3  # the per-count leak of distillation_loss (see births_log_prob)
_LEAK_RATE_FLOOR = 0.01  # keeps the leak's Poisson mean positive


def _log_bridge_terms(s: Array, t: Array, ndim: int) -> tuple[Array, Array]:
    """``(log r, log(1 - r))`` of the step ``t -> s`` broadcast against ``ndim``-axis counts
    (``t``, ``s``: scalars or ``(B,)``)."""
    log_r, log_one_minus_r = process.bridge_log_probabilities(s, t)

    def per_example(value: Array) -> Array:
        return value if value.ndim == 0 else value.reshape(value.shape + (1,) * (ndim - 1))

    return per_example(log_r), per_example(log_one_minus_r)


def births_log_prob(
    births: Array,
    room: Array,
    rates: Array,
    log_r: Array,
    log_one_minus_r: Array,
    *,
    leak: float = 0.0,
) -> Array:
    """Elementwise ``log B(b; y, r)``, the births of a bridge driven by the rate ``y``.

    ``y`` is clipped to ``0..room`` and rounded without bias: ``log((1 - f) Binomial(b; m, r)
    + f Binomial(b; m + 1, r))``, ``m = floor(y)``, ``f = y - m`` (float32, ``-inf`` off the
    support ``0 <= b <= ceil(y)``). Continuous in ``y`` and differentiable where ``y`` is not a
    whole number. With ``leak = e > 0`` the value is ``log((1 - e) B(b; y, r) + e
    Poisson(b; y r + 0.01))``: finite for every ``b``, and its gradient pulls ``y`` towards
    births that ``B`` cannot produce (``B`` alone has no gradient there); the surrogate a fit
    needs while its rates do not yet cover the observed births.
    """
    clipped = jnp.clip(rates.astype(jnp.float32), 0.0, room.astype(jnp.float32))
    whole = jnp.floor(clipped)
    fraction = clipped - whole
    lower = process.binomial_log_prob(births, whole, log_r, log_one_minus_r)
    upper = process.binomial_log_prob(births, whole + 1.0, log_r, log_one_minus_r)
    possible = (lower > -jnp.inf) | ((fraction > 0.0) & (upper > -jnp.inf))
    lower = jnp.maximum(lower, _IMPOSSIBLE)  # finite, so that no gradient is NaN
    upper = jnp.maximum(upper, _IMPOSSIBLE)
    mixed = jnp.logaddexp(
        jnp.log1p(-fraction) + lower, jnp.log(jnp.maximum(fraction, _SMALLEST_WEIGHT)) + upper
    )
    mixed = jnp.where(fraction > 0.0, mixed, lower)
    if leak:
        mean = clipped * jnp.exp(log_r) + _LEAK_RATE_FLOOR
        log_poisson = births * jnp.log(mean) - mean - process.log_factorial(jnp.maximum(births, 0))
        exact = jnp.where(possible, mixed, _IMPOSSIBLE)
        return jnp.logaddexp(jnp.log1p(-leak) + exact, jnp.log(leak) + log_poisson)
    return jnp.where(possible, mixed, -jnp.inf)


def bridge_step_log_prob(
    ns: Array,
    nt: Array,
    yhat: Array,
    s: Array,
    t: Array,
    *,
    max_count: int,
    rounding: str = "nearest",
) -> Array:
    """``log p(n_s | n_t)`` ``(B,)`` of one one-call bridge step driven by ``yhat``.

    ``"nearest"``: the ``binomial_bridge`` sampler's step, ``prod_i Binomial(n_{s,i} - n_{t,i};
    clip(round(yhat_i), 0, N - n_{t,i}), r)``; ``"unbiased"``: ``prod_i B(n_{s,i} - n_{t,i};
    yhat_i, r)`` (:func:`births_log_prob`, a stage of the trapezoidal bridge).

    Args:
      ns, nt: ``(B, ...)`` counts at ``s < t``; yhat: ``(B, ...)`` predicted missing units.
      s, t: scalars or ``(B,)``.
      max_count: largest count ``N``.
      rounding: one of :data:`ROUNDINGS`.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    nt = jnp.asarray(nt, jnp.float32)
    room = max_count - nt
    log_r, log_one_minus_r = _log_bridge_terms(jnp.asarray(s), jnp.asarray(t), nt.ndim)
    births = jnp.asarray(ns, jnp.float32) - nt
    yhat = jnp.asarray(yhat, jnp.float32)
    if rounding == "nearest":
        trials = jnp.clip(jnp.round(yhat), 0.0, room)
        per_count = process.binomial_log_prob(births, trials, log_r, log_one_minus_r)
    else:
        per_count = births_log_prob(births, room, yhat, log_r, log_one_minus_r)
    return per_count.reshape(per_count.shape[0], -1).sum(axis=1)


def component_log_probs(
    ns: Array, nt: Array, rates: Array, s: Array, t: Array, *, max_count: int, leak: float = 0.0
) -> Array:
    """``log prod_i B(n_{s,i} - n_{t,i}; yhat_{j,i}, r)`` per example and component, ``(B, J)``.

    Args:
      ns, nt: ``(B, ...)`` counts at ``s < t``.
      rates: ``(B, J, ...)`` the components' predictions ``yhat_j``.
      s, t: scalars or ``(B,)``.
      max_count: largest count ``N``.
      leak: as in :func:`births_log_prob` (0: the exact law).
    """
    nt = jnp.asarray(nt, jnp.float32)[:, None]
    births = jnp.asarray(ns, jnp.float32)[:, None] - nt
    log_r, log_one_minus_r = _log_bridge_terms(jnp.asarray(s), jnp.asarray(t), nt.ndim)
    per_count = births_log_prob(births, max_count - nt, rates, log_r, log_one_minus_r, leak=leak)
    return per_count.reshape(*per_count.shape[:2], -1).sum(axis=2)


def student_log_prob(
    ns: Array,
    nt: Array,
    rates: Array,
    logits: Array,
    s: Array,
    t: Array,
    *,
    max_count: int,
    leak: float = 0.0,
) -> Array:
    """``log p_student(n_s | n_t) = logsumexp_j(log pi_j + log prod_i B(...; yhat_j, r))``,
    ``(B,)`` float32 (shapes as in :func:`component_log_probs`, ``logits`` ``(B, J)``; ``leak``
    as in :func:`births_log_prob`, 0 for the exact law)."""
    log_weights = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=1)
    per_component = component_log_probs(ns, nt, rates, s, t, max_count=max_count, leak=leak)
    joint = log_weights + per_component
    return jax.scipy.special.logsumexp(joint, axis=1)


def student_step(
    key: Array, nt: Array, rates: Array, logits: Array, s: Array, t: Array, *, max_count: int
) -> Array:
    """Draw ``n_s ~ p_student(. | n_t)``: ``j ~ Categorical(softmax(logits))`` per example, then
    ``n_{s,i} = n_{t,i} + Binomial(R(yhat_{j,i}), r)``, ``R`` clipping to ``0..N - n_{t,i}`` and
    rounding without bias. Int32 ``(B, ...)``; ``t``, ``s`` scalars or ``(B,)``."""
    component_key, round_key, draw_key = jax.random.split(key, 3)
    nt = jnp.asarray(nt).astype(jnp.int32)
    chosen = jax.random.categorical(component_key, jnp.asarray(logits, jnp.float32), axis=1)
    rate = jnp.take_along_axis(
        jnp.asarray(rates, jnp.float32), chosen.reshape((-1, 1) + (1,) * (nt.ndim - 1)), axis=1
    )[:, 0]
    room = (max_count - nt).astype(jnp.float32)
    clipped = jnp.clip(rate, 0.0, room)
    whole = jnp.floor(clipped)
    trials = whole + (jax.random.uniform(round_key, nt.shape) < clipped - whole)
    r = process.bridge_probability(s, t)
    r = r if r.ndim == 0 else r.reshape(r.shape + (1,) * (nt.ndim - 1))
    born = jax.random.binomial(draw_key, trials, jnp.broadcast_to(r, trials.shape))
    return nt + jnp.round(born).astype(jnp.int32)


def sample_student(
    key: Array,
    student_fn: StudentFn,
    shape: tuple[int, ...],
    times: Array,
    *,
    max_count: int,
    start: str = "prior",
) -> Array:
    """Grow ``shape`` samples with a student, one call per step of the increasing grid ``times``
    ``(K + 1,)`` (``times[0] = 0``): from the start of :func:`blackout_jax.sample` at
    ``times[-1]``, step ``k`` (``t_k -> t_{k-1}``) draws :func:`student_step` with key
    ``fold_in(loop_key, k)``. Returns int32 counts of ``shape`` in ``0..max_count``."""
    _check_loop_arguments(start, max_count, times)
    return _run_student(
        key,
        functional.as_partial(student_fn),
        jnp.asarray(times, jnp.float32),
        shape=tuple(int(d) for d in shape),
        max_count=int(max_count),
        start=start,
    )


def _check_loop_arguments(start: str, max_count: int, times: Array) -> None:
    """``start`` one of :data:`blackout_jax.sampling.STARTS`, ``max_count`` an int >= 1 and
    ``times`` an increasing grid from 0 (``ValueError`` naming the argument otherwise)."""
    if start not in sampling.STARTS:
        raise ValueError(f"start must be one of {sampling.STARTS}, got {start!r}")
    argument_checks.check_max_count(max_count)
    argument_checks.check_time_grid(times)


@functools.partial(jax.jit, static_argnames=("shape", "max_count", "start"))
def _run_student(
    key: Array,
    student_fn: jax.tree_util.Partial,
    times: Array,
    *,
    shape: tuple[int, ...],
    max_count: int,
    start: str,
) -> Array:
    prior_key, loop_key = jax.random.split(key)
    state = sampling.initial_state(prior_key, shape, times[-1], start, None, None, max_count)
    num_steps = times.shape[0] - 1
    batch = jnp.ones((shape[0],), jnp.float32)

    def step(state: Array, inputs: tuple[Array, Array, Array]) -> tuple[Array, None]:
        k, t, s = inputs
        rates, logits = student_fn(state, t * batch, s * batch)
        key = jax.random.fold_in(loop_key, k)
        return student_step(key, state, rates, logits, s, t, max_count=max_count), None

    ks = jnp.arange(num_steps, 0, -1)
    final, _ = jax.lax.scan(step, state, (ks, times[ks], times[ks - 1]))
    return final


def teacher_trajectories(
    key: Array,
    predict_fn: sampling.PredictFn,
    shape: tuple[int, ...],
    times: Array,
    *,
    max_count: int,
    method: str = "binomial_bridge",
    start: str = "prior",
) -> Array:
    """The teacher's states at every time of its grid: int32 ``(K + 1, B, ...)``, row ``k`` at
    ``times[k]`` (row ``K`` the start, row 0 the samples).

    The loop of :func:`blackout_jax.sample` (the step ``sampling.STEPS[method]``, step ``k``
    keyed ``fold_in(loop_key, k)``) with every intermediate state kept.
    """
    if method not in sampling.METHODS:
        raise ValueError(f"method must be one of {sampling.METHODS}, got {method!r}")
    _check_loop_arguments(start, max_count, times)
    return _run_teacher(
        key,
        functional.as_partial(predict_fn),
        jnp.asarray(times, jnp.float32),
        shape=tuple(int(d) for d in shape),
        max_count=int(max_count),
        method=method,
        start=start,
    )


@functools.partial(jax.jit, static_argnames=("shape", "max_count", "method", "start"))
def _run_teacher(
    key: Array,
    predict_fn: jax.tree_util.Partial,
    times: Array,
    *,
    shape: tuple[int, ...],
    max_count: int,
    method: str,
    start: str,
) -> Array:
    prior_key, loop_key = jax.random.split(key)
    state = sampling.initial_state(prior_key, shape, times[-1], start, None, None, max_count)
    batch = shape[0]

    def predict(counts: Array, t: Array) -> Array:
        return predict_fn(counts, jnp.broadcast_to(t, (batch,))).astype(jnp.float32)

    context = sampling.StepContext(predict, max_count, None, lambda counts: counts)
    method_step = sampling.STEPS[method]

    def step(state: Array, inputs: tuple[Array, Array, Array]) -> tuple[Array, Array]:
        k, t, s = inputs
        key = jax.random.fold_in(loop_key, k)
        new_state = method_step(key, state, predict(state, t), t, s, context)
        return new_state, new_state

    num_steps = times.shape[0] - 1
    ks = jnp.arange(num_steps, 0, -1)
    _, visited = jax.lax.scan(step, state, (ks, times[ks], times[ks - 1]))
    return jnp.concatenate([visited[::-1], state[None]], axis=0)


def grid_positions(fine_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Indices of ``times`` in the finer grid ``fine_times`` (both increasing, host arrays).

    Raises:
      ValueError: a time of ``times`` that is not in ``fine_times`` (relative tolerance 1e-6),
        naming its index and value.
    """
    fine_times, times = np.asarray(fine_times, np.float64), np.asarray(times, np.float64)
    positions = np.clip(np.searchsorted(fine_times, times), 0, len(fine_times) - 1)
    for index, (position, value) in enumerate(zip(positions, times, strict=True)):
        candidates = [p for p in (position - 1, position) if 0 <= p < len(fine_times)]
        best = min(candidates, key=lambda p: abs(fine_times[p] - value))
        if abs(fine_times[best] - value) > 1e-6 * max(1.0, abs(value)):
            raise ValueError(f"times[{index}] = {value} is not a time of the teacher's grid")
        positions[index] = best
    return positions


def refined_grid(times: np.ndarray, fine_times: np.ndarray) -> np.ndarray:
    """The union of a student grid and a finer grid (sorted, float32 host array): the teacher's
    grid that passes through every student time."""
    merged = np.union1d(np.asarray(times, np.float32), np.asarray(fine_times, np.float32))
    keep = np.concatenate([[True], np.diff(merged) > 1e-6 * np.maximum(1.0, merged[1:])])
    return merged[keep]


def distillation_loss(
    student_fn: StudentFn,
    states: Array,
    times: Array,
    *,
    max_count: int,
    leak: float = DEFAULT_LEAK,
) -> Array:
    """Mean negative log-likelihood, in nats per example and step, of the teacher's pairs.

    ``-(1 / (K B)) sum_k sum_b log p_student(states[k-1, b] | states[k, b])`` over the steps
    ``t = times[k] -> s = times[k-1]``, ``k = 1..K``, each count's births scored with the
    leak of :func:`births_log_prob`, so that a pair the student cannot yet produce costs a
    finite amount and still pulls the rates towards it.

    Args:
      student_fn: ``(counts (B, ...), t (B,), s (B,)) -> (rates (B, J, ...), logits (B, J))``.
      states: int ``(K + 1, B, ...)``, the teacher's states at the student's times
        (``teacher_trajectories(...)[grid_positions(...)]``).
      times: the student's increasing grid ``(K + 1,)``.
      max_count: largest count ``N``.
      leak: per-count leak (``>= 0``).
    """
    states = jnp.asarray(states)
    times = jnp.asarray(times, jnp.float32)
    num_steps, batch = states.shape[0] - 1, states.shape[1]
    nt = states[1:].reshape(num_steps * batch, *states.shape[2:])
    ns = states[:-1].reshape(num_steps * batch, *states.shape[2:])
    t = jnp.repeat(times[1:], batch)
    s = jnp.repeat(times[:-1], batch)
    rates, logits = student_fn(nt, t, s)
    log_probs = student_log_prob(ns, nt, rates, logits, s, t, max_count=max_count, leak=leak)
    return -jnp.mean(log_probs)
