"""Reverse-time samplers of Blackout Diffusion, compiled as one XLA program.

On an increasing grid ``0 = t_0 < t_1 < ... < t_K = t_end`` the sampler starts from a prior draw
``n_{t_K} ~ Poisson((N/2) p_{t_end})`` (clipped to ``N = max_count``; ``start="zeros"``: from
an all-zero state, as the reference does) and walks the grid backwards, ``t = t_k -> s =
t_{k-1}``, with ``yhat = predict_fn(n_t, t)`` and the bridge probability
``r = (p_s - p_t) / (1 - p_t)``. One step function per method, collected in :data:`STEPS`:

* ``binomial_bridge``: ``n_s = n_t + Binomial(clip(round(yhat), 0, N - n_t), r)``;
* ``tau_leaping``:     ``n_s = clip(n_t + Poisson(yhat r), 0, N)``;
* ``trapezoidal_bridge`` and ``trapezoidal_leaping``: two stages ``t -> mid -> s`` and two
  network calls per step, the second stage driven by the extrapolated prediction
  ``2 yhat(n_mid, mid) - yhat_1`` (second order in the step size).

docs/sampling.md derives the two-stage steps and discusses imputation (resampling, particles);
experiments/RESULTS.md holds the measured figures.

:func:`unthin` runs the same loop from a given state (a thinned observation) at ``t* = -ln q``
on one grid per example, ``(B, K + 1)``: each step's ``t`` and ``s`` are then ``(B,)`` and the
draws take one bridge probability per example (one table per example).

The loop is a ``lax.scan`` inside ``jax.jit``: one dispatch per call, the network the only heavy
work per step. The bridge's binomials are drawn by exact inversion against a per-step
``(N + 1)^2`` table (:mod:`blackout_jax.draws`), since ``r`` is shared by every count of a step;
tau-leaping draws ``min(Poisson(yhat r), N - n_t)`` exactly with
:func:`blackout_jax.draws.capped_poisson_scaled`.
The samplers know the model only through ``predict_fn``.

Compilation is cached on ``(predict_fn, shape, grid length, max_count, method, start,
progress)``. A ``predict_fn`` that closes over large arrays (network parameters) would have
them baked into the program as constants; pass it as a ``jax.tree_util.Partial`` whose
arguments hold the arrays instead (``Partial(apply, params)`` called as ``apply(params, counts,
t)``): its arrays then travel as arguments and one compilation serves every parameter value.
The ``progress`` callback is part of the key too: pass the same object on every call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from blackout_jax import argument_checks, draws, functional, likelihood, process, schedule

Array = jax.Array
PredictFn = Callable[[Array, Array], Array]
Progress = Callable[[int, int], None]
"""``progress(steps_done, total)``, called on the host while a compiled sampler runs."""

STARTS = ("prior", "zeros")
_PROGRESS_UPDATES = 20  # host callbacks per sampler run when progress is on (about 1 ms each)
_SMALLEST_TWIST_RATE = 1e-6  # floor of yhat in the particles' Poisson fit to the observations


class Observations(NamedTuple):
    """Known counts of an imputation: ``counts`` ``x_obs`` (B, ...) int32, read where ``mask``
    (bool, same shape) is true."""

    counts: Array
    mask: Array


class StepContext(NamedTuple):
    """What a step needs besides its key, state and times.

    Attributes:
      predict: ``(counts (B, ...), t (scalar or (B,))) -> yhat`` float32 of the counts' shape.
      max_count: largest count ``N``.
      observations: known counts that every draw bridges exactly to, or ``None``.
      constrain: places an intermediate state on the sampler's sharding.
    """

    predict: Callable[[Array, Array], Array]
    max_count: int
    observations: Observations | None
    constrain: Callable[[Array], Array]


Step = Callable[[Array, Array, Array, Array, Array, StepContext], Array]
"""``step(key, n_t, yhat, t, s, context) -> n_s``: one reverse step ``t -> s`` (int32 counts
``(B, ...)``, ``yhat = predict(n_t, t)``, ``t`` and ``s`` scalars or ``(B,)``)."""

Births = Callable[[Array, Array, Array, Array, Array, int], Array]
"""``births(draw_key, round_key, n_t, expected, r, N) -> b``: int32 births of one draw
``t -> s`` of bridge probability ``r`` for ``expected`` missing units, ``0 <= b <= N - n_t``."""


def sample(
    key: Array,
    predict_fn: PredictFn,
    shape: tuple[int, ...],
    times: Array,
    *,
    max_count: int,
    method: str = "binomial_bridge",
    start: str = "prior",
    progress: Progress | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Array:
    """Draw samples by walking the reverse-time process down ``times``.

    Args:
      key: PRNG key.
      predict_fn: ``(counts (B, ...), t (B,)) -> yhat`` with the shape of counts, the predicted
        number of missing units ``E[n_0 - n_t | n_t]`` (float, ``>= 0``).
      shape: ``(B, ...)``, the batch of states to grow.
      times: increasing grid ``(K + 1,)`` with ``times[0] = 0`` and ``times[-1] = t_end``, for
        example ``observation_times(K, t_end)`` or ``subgrid(observation_times(T, t_end), K)``.
      max_count: largest count ``N`` (``>= 1``).
      method: one of :data:`METHODS`: ``"binomial_bridge"`` (default), ``"tau_leaping"`` (one
        network call per step), ``"trapezoidal_bridge"`` or ``"trapezoidal_leaping"`` (two calls
        per step, second order; docs/sampling.md).
      start: the state at ``t_end``: ``"prior"`` (default) draws ``Poisson((N/2) p_{t_end})``
        clipped to ``N``, the prior of the likelihood bound, so samples come from the model
        whose likelihood :func:`blackout_jax.nll_bound` bounds; ``"zeros"`` starts from an
        all-zero state, as the reference's generation code does (the prior is almost always
        all zeros too, but the bound is only a bound for the prior start).
      progress: ``progress(steps_done, total)``, called on the host about 20 times per run
        through ``jax.debug.callback`` (for example
        :func:`blackout_jax.run.progress.sampler_progress`), or ``None``. It is part of the
        compilation's key: pass the same object on every call.
      sharding: optional sharding of the state (for example ``NamedSharding(mesh, P("data"))``
        to split the batch over devices); draws do not depend on it.

    Returns:
      int32 counts of ``shape`` in ``0..max_count``.

    Raises:
      ValueError: bad ``method``, ``shape`` or ``max_count``, or (when concrete) a grid that is
        not 1-D, shorter than 2, not starting at 0 or not strictly increasing.
    """
    _check_sampler_arguments(shape, times, max_count, method, start, progress)
    return _run_sampler(
        key,
        functional.as_partial(predict_fn),
        jnp.asarray(times, jnp.float32),
        None,
        None,
        shape=tuple(int(d) for d in shape),
        max_count=int(max_count),
        method=method,
        start=start,
        resamples=1,
        particles=1,
        progress=progress,
        sharding=sharding,
    )


def impute(
    key: Array,
    predict_fn: PredictFn,
    counts: Array,
    observed: Array,
    times: Array,
    *,
    max_count: int,
    method: str = "binomial_bridge",
    start: str = "prior",
    resamples: int = 1,
    particles: int = 1,
    progress: Progress | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Array:
    """Fill in unobserved counts, conditioned on the observed ones.

    Runs the sampler of :func:`sample` on ``counts.shape``. The observed entries start from a
    draw of their exact forward marginal ``Binomial(x_obs, p_{t_end})`` and then follow the exact
    bridge ``n_s = n_t + Binomial(x_obs - n_t, r)`` towards their known value, so at every grid
    time ``s`` they are a draw of ``Binomial(x_obs, p_s)`` and, being one consistent path, never
    contradict each other from step to step; the network sees states consistent with the
    observations. At ``s = 0`` the observed entries equal ``x_obs``.

    Births of the unobserved entries cannot be undone by the pure-birth reverse process, and
    the early ones are drawn while the observed entries still carry little information. With
    ``resamples = U > 1`` each step ``t -> s`` is taken ``U`` times: between takes the whole
    state is thinned back to ``t`` by the exact forward process (each unit survives with
    probability ``p_t / p_s``), which keeps the observed entries' marginals exact and lets the
    unobserved ones be redrawn in the light of the observed ones. This costs ``U`` network
    calls per step.

    With ``particles = P > 1`` each example is grown as ``P`` particles instead (sequential Monte
    Carlo, ``P`` network calls per step): at every step a particle is weighted by how well the
    network's prediction fits the observations, the twist
    ``prod_observed Poisson(x_obs - n_t; yhat)`` (the missing units of an entry taken as Poisson
    with the predicted mean), relative to its previous step; the particles of an example are
    resampled by these weights when their effective number falls below ``P / 2``, and one
    particle per example is returned, drawn by its final weight (the last twist divided out).
    Particles whose unobserved entries commit to something the observations contradict are
    dropped early. The twist is an approximation, so this too is approximate. Use ``P >= 3``:
    two particles are never resampled (their effective number cannot fall below 1).
    docs/sampling.md discusses both; experiments/RESULTS.md compares them with the dataset
    oracle.

    Args:
      counts: ``(B, ...)`` counts; only the observed entries are read.
      observed: boolean mask with the shape of ``counts``, ``True`` where a count is known.
      resamples: takes of each step (``>= 1``; 1 = no resampling).
      particles: particles per example (``>= 1``; 1 = none); not together with ``resamples``.
      start: the unobserved entries' state at ``t_end`` (``"prior"`` | ``"zeros"``, as in
        :func:`sample`); the observed entries always start from their forward marginal.
      Other arguments as in :func:`sample`.

    Returns:
      int32 counts of ``counts.shape``: observed entries as given, the others sampled.
    """
    counts_shape = tuple(np.shape(counts))
    _check_sampler_arguments(counts_shape, times, max_count, method, start, progress)
    _check_impute_arguments(counts_shape, observed, resamples, particles)
    argument_checks.check_counts("counts", counts, max_count, where=observed)
    particles = int(particles)
    return _run_sampler(
        key,
        functional.as_partial(predict_fn),
        jnp.asarray(times, jnp.float32),
        Observations(
            jnp.repeat(jnp.asarray(counts).astype(jnp.int32), particles, axis=0),
            jnp.repeat(jnp.asarray(observed, bool), particles, axis=0),
        ),
        None,
        shape=(counts_shape[0] * particles, *counts_shape[1:]),
        max_count=int(max_count),
        method=method,
        start=start,
        resamples=int(resamples),
        particles=particles,
        progress=progress,
        sharding=sharding,
    )


def unthin(
    key: Array,
    predict_fn: PredictFn,
    observed: Array,
    survival: float | Array,
    *,
    max_count: int,
    num_steps: int,
    method: str = "trapezoidal_bridge",
    grid: str = "logit",
    progress: Progress | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Array:
    """Draw counts ``x`` given an observation ``y ~ Binomial(x, q)`` of them (un-thinning).

    Keeping each unit with probability ``q`` is the forward process run to ``t* = -ln q``, so
    ``y`` is a draw of ``n_{t*}`` given ``n_0 = x`` and ``p(x | y) = p(n_0 | n_{t*} = y)``: the
    reverse process started from the state ``y`` at ``t*`` and walked down to 0 samples it,
    exactly for an exact denoiser (any ``q``, no retraining). It is :func:`sample`'s loop with
    that start and a grid from ``t*`` to 0 per example (:func:`blackout_jax.schedule.
    unthinning_times`: ``K`` steps, ``logit(p_t)`` evenly spaced from ``t*`` down to the
    time ``t_1`` at which all but ``exp(-15)`` of the missing units are born, then 0). With
    one ``q`` per example each example has its own grid, and ``predict_fn`` gets each
    example's own time ``t (B,)``.

    The one assumption is the observation model: every unit kept independently with the known
    probability ``q``. A trained network has learnt ``E[n_0 - n_t | n_t]`` only for
    ``t <= t_end``: ``t*`` must not exceed the model's ``t_end`` (``q >= exp(-t_end)``).

    Args:
      key: PRNG key.
      predict_fn: ``(counts (B, ...), t (B,)) -> yhat``, as for :func:`sample`.
      observed: ``(B, ...)`` the observed counts ``y``, whole numbers in ``0..max_count``.
      survival: ``q`` in ``(0, 1]``: a scalar, or ``(B,)`` one per example. Examples with
        ``q = 1`` are returned as given; when every ``q`` is 1 and ``survival`` is a Python or
        NumPy value, ``predict_fn`` is not called (a JAX array is not copied to the host to
        find out).
      max_count: largest count ``N`` (``>= 1``).
      num_steps: sampler steps ``K >= 1`` between ``t*`` and 0.
      method: one of :data:`METHODS`, as for :func:`sample`. The default
        ``"trapezoidal_bridge"`` rounds the predicted missing counts without bias; the
        reference's ``"binomial_bridge"`` rounds them to the nearest whole number, which
        favours the most likely ``x`` (rare values of the posterior are drawn too seldom). The
        leaping methods can add more units than are missing, which takes a fine grid to make
        rare. experiments/RESULTS.md ("Un-thinning") compares them with the dataset oracle.
      grid: one of :data:`blackout_jax.schedule.UNTHIN_GRIDS`.
      progress: as for :func:`sample`.
      sharding: optional sharding of the state (split the batch over devices).

    Returns:
      int32 ``(B, ...)`` draws of ``x``, each ``>= y`` and ``<= max_count``.

    Raises:
      ValueError: a bad ``method``, ``grid``, ``num_steps`` or ``max_count``; an empty
        ``observed``; a ``survival`` of another shape; and, when concrete, counts that
        are not whole numbers in ``0..max_count`` or a ``survival`` outside ``(0, 1]``.
    """
    if grid not in schedule.UNTHIN_GRIDS:
        raise ValueError(f"grid must be one of {schedule.UNTHIN_GRIDS}, got {grid!r}")
    shape = tuple(int(d) for d in np.shape(observed))
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    _check_sampler_arguments(shape, None, max_count, method, "prior", progress)
    if (
        np.ndim(survival) not in (0, 1)
        or np.ndim(survival) == 1
        and np.shape(survival) != (shape[0],)
    ):
        raise ValueError(
            f"survival must be a scalar or one value per example, shape ({shape[0]},), got "
            f"shape {np.shape(survival)}"
        )
    argument_checks.check_counts("observed", observed, max_count)
    argument_checks.check_survival("survival", survival)
    if not isinstance(survival, jax.Array) and np.all(np.asarray(survival) == 1):
        return jnp.asarray(observed).astype(jnp.int32)  # nothing thinned: no network call
    q = jnp.asarray(survival, jnp.float32)
    thinned = q < 1.0
    times = schedule.unthinning_times(jnp.where(thinned, q, 0.5), int(num_steps))
    counts = jnp.asarray(observed).astype(jnp.int32)
    drawn = _run_sampler(
        key,
        functional.as_partial(predict_fn),
        times,
        None,
        counts,
        shape=shape,
        max_count=int(max_count),
        method=method,
        start="prior",
        resamples=1,
        particles=1,
        progress=progress,
        sharding=sharding,
    )
    return jnp.where(_per_example(thinned, len(shape)), drawn, counts)


def _check_sampler_arguments(
    shape: tuple[int, ...],
    times: Array | None,
    max_count: int,
    method: str,
    start: str,
    progress: Progress | None,
) -> None:
    """The arguments every sampler shares (a concrete grid only: see :mod:`argument_checks`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if progress is not None and not callable(progress):
        raise ValueError(
            f"progress must be a callable (steps_done, total) or None, got {progress!r}"
        )
    argument_checks.check_max_count(max_count)
    if len(shape) < 1 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape!r}")
    if times is not None:
        argument_checks.check_time_grid(times)


def _check_impute_arguments(
    counts_shape: tuple[int, ...], observed: Array, resamples: int, particles: int
) -> None:
    """``resamples`` and ``particles`` (integers ``>= 1``, not both above 1) and the mask's shape
    and dtype (known without reading its values)."""
    for name, value in (("resamples", resamples), ("particles", particles)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if resamples > 1 and particles > 1:
        raise ValueError(
            f"use resamples or particles, not both (got resamples={resamples}, "
            f"particles={particles})"
        )
    if tuple(np.shape(observed)) != counts_shape:
        raise ValueError(
            f"observed must have the shape of counts {counts_shape}, got {np.shape(observed)}"
        )
    dtype = observed.dtype if hasattr(observed, "dtype") else np.asarray(observed).dtype
    if dtype != jnp.bool_:
        raise ValueError(f"observed must be a boolean mask, got dtype {dtype}")


def _advance(
    births: Births,
    keys: tuple[Array, Array | None, Array],
    counts: Array,
    expected: Array,
    s: Array,
    t: Array,
    context: StepContext,
) -> Array:
    """One draw ``t -> s``: ``n_t + births`` for the unobserved entries, the exact bridge
    ``n_t + Binomial(x_obs - n_t, r)`` for the observed ones (with ``keys[2]``), so that at every
    grid time the observed entries are a draw of ``Binomial(x_obs, p_s)`` on one path."""
    draw_key, round_key, observed_key = keys
    r = process.bridge_probability(s, t)
    new_counts = counts + births(draw_key, round_key, counts, expected, r, context.max_count)
    if context.observations is None:
        return new_counts
    missing = context.observations.counts - counts
    bridged = counts + _binomial(observed_key, missing, r, context.max_count)
    return jnp.where(context.observations.mask, bridged, new_counts)


def _rounded_bridge_births(
    draw_key: Array, round_key: Array | None, counts: Array, expected: Array, r: Array, n: int
) -> Array:
    """``Binomial(clip(round(yhat), 0, N - n_t), r)`` (round to nearest, ``round_key`` unused)."""
    room = (n - counts).astype(jnp.float32)
    return _binomial(draw_key, jnp.clip(jnp.round(expected), 0.0, room), r, n)


def _unbiased_bridge_births(
    draw_key: Array, round_key: Array | None, counts: Array, expected: Array, r: Array, n: int
) -> Array:
    """``Binomial(R(yhat), r)``, ``R`` clipping to ``0..N - n_t`` and rounding without bias."""
    room = (n - counts).astype(jnp.float32)
    return _binomial(draw_key, _unbiased_round(round_key, jnp.clip(expected, 0.0, room)), r, n)


def _leaping_births(
    draw_key: Array, round_key: Array | None, counts: Array, expected: Array, r: Array, n: int
) -> Array:
    """``min(Poisson(yhat r), N - n_t)``: rates frozen over the bridge probability."""
    return _capped_poisson(draw_key, expected, r, n - counts, n)


def _clock_leaping_births(
    draw_key: Array, round_key: Array | None, counts: Array, expected: Array, r: Array, n: int
) -> Array:
    """``min(Poisson(yhat k), N - n_t)``, rates frozen over the clock ``k = -log(1 - r)``
    (``k = 1`` when ``r = 1``, the step into ``s = 0``)."""
    clock = jnp.where(r < 1.0, -jnp.log1p(-jnp.minimum(r, 1.0 - 1e-7)), 1.0)
    return _capped_poisson(draw_key, expected, clock, n - counts, n)


def binomial_bridge_step(
    key: Array, counts: Array, pred: Array, t: Array, s: Array, context: StepContext
) -> Array:
    """``n_s = n_t + Binomial(clip(round(yhat), 0, N - n_t), r)`` (the reference sampler); the
    observed entries' bridge draws with the births' key (one binomial draw over all entries)."""
    draw_key = jax.random.split(key)[0]
    keys = (draw_key, None, draw_key)
    return _advance(_rounded_bridge_births, keys, counts, pred, s, t, context)


def tau_leaping_step(
    key: Array, counts: Array, pred: Array, t: Array, s: Array, context: StepContext
) -> Array:
    """``n_s = clip(n_t + Poisson(yhat r), 0, N) = n_t + min(Poisson(yhat r), N - n_t)``; the
    observed entries' bridge draws with the second key of ``split(key)``."""
    draw_key, observed_key = jax.random.split(key)
    return _advance(_leaping_births, (draw_key, None, observed_key), counts, pred, s, t, context)


def _two_stage_step(
    births: Births,
    count_first_births: bool,
    key: Array,
    counts: Array,
    pred: Array,
    t: Array,
    s: Array,
    context: StepContext,
) -> Array:
    """A trapezoidal step ``t -> mid -> s``: stage 1 for ``yhat_1 = pred``, one more network
    call ``yhat_2 = predict(n_mid, mid)``, stage 2 for ``yhat_2 + w (yhat_2 - frozen)`` with
    ``frozen = yhat_1 - b_1`` (``count_first_births``) or ``yhat_1`` and the weight ``w`` of
    :func:`_two_stage_midpoint`. Each stage draws with keys ``split(stage_key, 3)``."""
    first_key, second_key = jax.random.split(key)
    mid, weight = _two_stage_midpoint(t, s)
    first_keys = tuple(jax.random.split(first_key, 3))
    mid_counts = context.constrain(_advance(births, first_keys, counts, pred, mid, t, context))
    pred_mid = context.predict(mid_counts, mid)
    frozen = pred - (mid_counts - counts).astype(jnp.float32) if count_first_births else pred
    extrapolated = pred_mid + _per_example(weight, counts.ndim) * (pred_mid - frozen)
    second_keys = tuple(jax.random.split(second_key, 3))
    return _advance(births, second_keys, mid_counts, extrapolated, s, mid, context)


def trapezoidal_bridge_step(
    key: Array, counts: Array, pred: Array, t: Array, s: Array, context: StepContext
) -> Array:
    """Two bridge stages of probability ``h``, ``(1 - h)^2 = 1 - r``:
    ``b_1 ~ Binomial(R(yhat_1), h)`` and ``b_2 ~ Binomial(R(2 yhat_2 - (yhat_1 - b_1)), h)``,
    ``R`` clipping to ``0..N - n`` and rounding without bias (docs/sampling.md)."""
    return _two_stage_step(_unbiased_bridge_births, True, key, counts, pred, t, s, context)


def trapezoidal_leaping_step(
    key: Array, counts: Array, pred: Array, t: Array, s: Array, context: StepContext
) -> Array:
    """Two leaping stages of clock step ``k = -log(1 - h)``: ``b_1 = min(Poisson(yhat_1 k),
    N - n_t)``, ``b_2 = min(Poisson(max(2 yhat_2 - yhat_1, 0) k), N - n_mid)``
    (docs/sampling.md)."""
    return _two_stage_step(_clock_leaping_births, False, key, counts, pred, t, s, context)


STEPS: dict[str, Step] = {
    "binomial_bridge": binomial_bridge_step,
    "tau_leaping": tau_leaping_step,
    "trapezoidal_bridge": trapezoidal_bridge_step,
    "trapezoidal_leaping": trapezoidal_leaping_step,
}
"""The sampler methods by name: one :data:`Step` each."""

METHODS = tuple(STEPS)


def _predicted_step(
    step: Step, key: Array, counts: Array, t: Array, s: Array, context: StepContext
) -> Array:
    """``step`` with ``yhat = predict(n_t, t)``."""
    return step(key, counts, context.predict(counts, t), t, s, context)


def _resampled_step(
    step: Step,
    resamples: int,
    key: Array,
    counts: Array,
    t: Array,
    s: Array,
    context: StepContext,
) -> Array:
    """``U - 1`` rounds of (step ``t -> s``, thin ``s -> t`` back by the forward process, each
    unit surviving with ``p_t / p_s``), then the step ``t -> s``; round ``i`` keyed
    ``fold_in(key, i)``, the last step ``fold_in(key, U)``."""
    survival = jnp.exp(s - t)

    def step_and_thin(round_index: Array, counts: Array) -> Array:
        step_key, thin_key = jax.random.split(jax.random.fold_in(key, round_index))
        stepped = context.constrain(_predicted_step(step, step_key, counts, t, s, context))
        return context.constrain(_binomial(thin_key, stepped, survival, context.max_count))

    counts = jax.lax.fori_loop(0, resamples - 1, step_and_thin, counts)
    return _predicted_step(step, jax.random.fold_in(key, resamples), counts, t, s, context)


def _log_twist(counts: Array, pred: Array, observations: Observations) -> Array:
    """``log prod_observed Poisson(x_obs - n_t; yhat)`` per particle, ``(B P,)``."""
    missing = (observations.counts - counts).astype(jnp.float32)
    rate = jnp.maximum(pred, _SMALLEST_TWIST_RATE)
    log_pmf = missing * jnp.log(rate) - rate - jax.scipy.special.gammaln(missing + 1.0)
    return jnp.sum(jnp.where(observations.mask, log_pmf, 0.0), axis=tuple(range(1, counts.ndim)))


def _resample(key: Array, log_weights: Array) -> tuple[Array, Array]:
    """Rows of the particles to carry on, ``(B P,)``, and their log weights ``(B, P)``.

    An example whose effective number ``1 / sum_p w_p^2`` (``w = softmax(log_weights)``) is
    below ``P / 2`` draws ``P`` particles by weight and resets their weights to 0; the others
    keep their particles and weights.
    """
    num_examples, particles = log_weights.shape
    weights = jax.nn.softmax(log_weights, axis=1)
    degenerate = 1.0 / jnp.sum(weights**2, axis=1) < 0.5 * particles  # (B,)
    drawn = jax.random.categorical(key, log_weights, shape=(particles, num_examples))
    chosen = jnp.where(degenerate[:, None], drawn.T, jnp.arange(particles)[None, :])
    rows = (jnp.arange(num_examples)[:, None] * particles + chosen).reshape(-1)
    return rows, jnp.where(degenerate[:, None], 0.0, log_weights)


ParticleState = tuple[Array, Array, Array]
"""Counts ``(B P, ...)``, log weights ``(B, P)`` and each particle's last log twist ``(B P,)``."""


def _particle_step(
    step: Step, state: ParticleState, key: Array, t: Array, s: Array, context: StepContext
) -> ParticleState:
    """Reweight by the change of the twist, resample (:func:`_resample`), advance by ``step``."""
    counts, log_weights, previous_twist = state
    draw_key, resample_key = jax.random.split(key)
    pred = context.predict(counts, t)
    twist = _log_twist(counts, pred, context.observations)
    log_weights = log_weights + (twist - previous_twist).reshape(log_weights.shape)
    rows, log_weights = _resample(resample_key, log_weights)
    counts, pred, twist = context.constrain(counts[rows]), pred[rows], twist[rows]
    return context.constrain(step(draw_key, counts, pred, t, s, context)), log_weights, twist


def _pick_particle(key: Array, state: ParticleState) -> Array:
    """One particle per example ``(B, ...)``, drawn by its final weight with the last twist
    divided out (at ``s = 0`` the observed entries equal ``x_obs``: the twist has done its
    work)."""
    counts, log_weights, twist = state
    num_examples, particles = log_weights.shape
    pick = jax.random.categorical(key, log_weights - twist.reshape(num_examples, particles))
    return counts.reshape(num_examples, particles, *counts.shape[1:])[
        jnp.arange(num_examples), pick
    ]


def initial_state(
    key: Array,
    shape: tuple[int, ...],
    t_end: Array,
    start: str,
    initial_counts: Array | None,
    observations: Observations | None,
    max_count: int,
) -> Array:
    """The state at ``t_end``: ``initial_counts``, zeros or a prior draw (with ``key``); the
    observed entries a draw of their forward marginal ``Binomial(x_obs, p_{t_end})`` (with
    ``fold_in(key, 1)``)."""
    if initial_counts is not None:
        initial = initial_counts
    elif start == "zeros":
        initial = jnp.zeros(shape, jnp.int32)
    else:
        initial = likelihood.prior_sample(key, shape, t_end=t_end, max_count=max_count)
    if observations is None:
        return initial
    observed_start = process.forward_sample(jax.random.fold_in(key, 1), observations.counts, t_end)
    return jnp.where(observations.mask, observed_start, initial)


@functools.partial(
    jax.jit,
    static_argnames=(
        "shape",
        "max_count",
        "method",
        "start",
        "resamples",
        "particles",
        "progress",
        "sharding",
    ),
)
def _run_sampler(
    key: Array,
    predict_fn: jax.tree_util.Partial,
    times: Array,
    observations: Observations | None,
    initial_counts: Array | None,
    *,
    shape: tuple[int, ...],
    max_count: int,
    method: str,
    start: str,
    resamples: int,
    particles: int,
    progress: Progress | None,
    sharding: jax.sharding.Sharding | None,
) -> Array:
    """The one sampler loop of :func:`sample`, :func:`impute` and :func:`unthin`.

    ``times`` is one grid ``(K + 1,)`` shared by the batch, or one grid per example
    ``(B, K + 1)``: then every step's ``t`` and ``s`` are ``(B,)``. ``initial_counts``
    (``shape``), when given, is the state at the grid's last time instead of a draw of the
    start. Step ``k`` (``t_k -> t_{k-1}``) is keyed ``fold_in(loop_key, k)``.
    """
    prior_key, loop_key = jax.random.split(key)
    context = StepContext(
        predict=functools.partial(_predict, predict_fn, shape[0]),
        max_count=max_count,
        observations=observations,
        constrain=functools.partial(_constrain, sharding=sharding),
    )
    t_end = _per_example(times[..., -1], len(shape))
    state = initial_state(prior_key, shape, t_end, start, initial_counts, observations, max_count)
    state = context.constrain(state)
    step = STEPS[method]
    num_steps = times.shape[-1] - 1

    def scan_step(state: Array | ParticleState, inputs: tuple[Array, Array, Array]):
        k, t, s = inputs
        key = jax.random.fold_in(loop_key, k)
        if particles > 1:
            state = _particle_step(step, state, key, t, s, context)
        elif resamples > 1:
            state = context.constrain(_resampled_step(step, resamples, key, state, t, s, context))
        else:
            state = context.constrain(_predicted_step(step, key, state, t, s, context))
        if progress is not None:
            _report_progress(progress, num_steps - k + 1, num_steps)
        return state, None

    ks = jnp.arange(num_steps, 0, -1)
    grid = times.T  # (K + 1,) or (K + 1, B): row k holds the time(s) t_k
    if particles > 1:
        no_weights = jnp.zeros((shape[0] // particles, particles), jnp.float32)
        state = (state, no_weights, jnp.zeros((shape[0],), jnp.float32))
    final, _ = jax.lax.scan(scan_step, state, (ks, grid[ks], grid[ks - 1]))
    if particles > 1:
        return _pick_particle(jax.random.fold_in(loop_key, 0), final)
    return final


def _predict(predict_fn: PredictFn, batch: int, counts: Array, t: Array) -> Array:
    """``predict_fn(n_t, t)`` as float32, a scalar ``t`` broadcast to ``(B,)``."""
    return predict_fn(counts, jnp.broadcast_to(t, (batch,))).astype(jnp.float32)


def _constrain(counts: Array, *, sharding: jax.sharding.Sharding | None) -> Array:
    """``counts`` constrained to ``sharding`` (unchanged without one)."""
    if sharding is None:
        return counts
    return jax.lax.with_sharding_constraint(counts, sharding)


def _per_example(value: Array, ndim: int) -> Array:
    """A scalar as it is; one value per example ``(B,)`` as ``(B, 1, ..., 1)`` of ``ndim`` axes."""
    return value if value.ndim == 0 else value.reshape(value.shape + (1,) * (ndim - 1))


def _binomial(key: Array, trials: Array, r: Array, max_count: int) -> Array:
    """``Binomial(trials, r)``: ``r`` one scalar, or one per example ``(B,)``.

    :func:`blackout_jax.draws.binomial_by_inversion`: a per-step table up to
    ``draws.TABLE_MAX_COUNT``, above it draws whose cost does not depend on ``max_count``.
    Per example, each example draws with its own key ``split(key, B)[b]`` (vectorised over
    the batch).
    """
    if r.ndim == 0:
        return draws.binomial_by_inversion(key, trials, r, max_count)
    keys = jax.random.split(key, trials.shape[0])
    one = functools.partial(draws.binomial_by_inversion, max_trials=max_count)
    return jax.vmap(one)(keys, trials, r)


def _capped_poisson(key: Array, scale: Array, r: Array, room: Array, max_count: int) -> Array:
    """``min(Poisson(scale r), room)``: ``r`` one scalar, or one per example ``(B,)`` (as in
    :func:`_binomial`; :func:`blackout_jax.draws.capped_poisson_scaled`)."""
    if r.ndim == 0:
        return draws.capped_poisson_scaled(key, scale, r, room, max_count)
    keys = jax.random.split(key, scale.shape[0])
    one = functools.partial(draws.capped_poisson_scaled, max_count=max_count)
    return jax.vmap(one)(keys, scale, r, room)


def _two_stage_midpoint(t: Array, s: Array) -> tuple[Array, Array]:
    """The inner time ``mid`` of a two-stage step ``t -> s`` and its extrapolation weight.

    ``mid`` halves the clock ``theta = -log(1 - p)``: ``1 - p_mid = sqrt((1 - p_t)(1 - p_s))``,
    so both stages have the same bridge probability; the weight is 1. The last step into
    ``s = 0`` is infinitely long on that clock: there ``mid = t / 2`` and the weight is 0 (the
    second stage fills in what the prediction at ``mid`` says is missing).
    """
    final = s <= 0.0
    one_minus_p_mid = jnp.sqrt(jnp.expm1(-t) * jnp.expm1(-jnp.maximum(s, 1e-30)))
    mid = jnp.where(final, 0.5 * t, -jnp.log1p(-one_minus_p_mid))
    return mid, jnp.where(final, 0.0, 1.0)


def _unbiased_round(key: Array, values: Array) -> Array:
    """``floor(x) + Bernoulli(x - floor(x))``: whole numbers with mean ``x``, float32."""
    whole = jnp.floor(values)
    return whole + (jax.random.uniform(key, values.shape) < values - whole).astype(jnp.float32)


def _report_progress(progress: Progress, steps_done: Array, total: int) -> None:
    """Call ``progress(steps_done, total)`` on the host about ``_PROGRESS_UPDATES`` times per
    run (and at the end)."""
    every = max(1, total // _PROGRESS_UPDATES)
    due = (steps_done % every == 0) | (steps_done == total)
    report = functools.partial(_call_progress, progress, total)
    jax.lax.cond(due, lambda: jax.debug.callback(report, steps_done), lambda: None)


def _call_progress(progress: Progress, total: int, steps_done: np.ndarray) -> None:
    progress(int(steps_done), total)
