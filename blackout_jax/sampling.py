"""Reverse-time samplers of Blackout Diffusion, compiled as one XLA program.

On an increasing grid ``0 = t_0 < t_1 < ... < t_K = t_end`` the sampler starts from a prior draw
``n_{t_K} ~ Poisson((N/2) p_{t_end})`` (clipped to ``N = max_count``; ``start="zeros"``: from
an all-zero state, as the reference does) and walks the grid
backwards, ``t = t_k -> s = t_{k-1}``, with ``yhat = predict_fn(n_t, t)`` and the bridge
probability ``r = (p_s - p_t) / (1 - p_t)``:

* ``binomial_bridge``: ``n_s = n_t + Binomial(clip(round(yhat), 0, N - n_t), r)``;
* ``tau_leaping``:     ``n_s = clip(n_t + Poisson(yhat r), 0, N)``;
* ``trapezoidal_bridge`` and ``trapezoidal_leaping``: two network calls per step (below).

Two-stage (trapezoidal) steps. On the clock ``theta = -log(1 - p_t)``, which grows as the
reverse process runs, each unit still missing from a count is born at rate 1, so a count's birth
rate is its missing number ``m = n_0 - n`` and the network's ``yhat`` is that rate's conditional
mean. A one-call step freezes ``yhat`` over the whole step: births on one count tell nothing about
the missing units of itself or of other counts. Over a step of bridge probability ``r`` the
exact births ``B`` have ``E[B] = r yhat`` and ``E[B_i B_j] - [i = j] E[B_i] =
r^2 E[m_i m_j - [i = j] m_i | n_t]``; the bridge gets the mean right but misses
``r^2 Cov(m_i, m_j | n_t)`` (``r^2 Var`` on the diagonal), tau-leaping misses ``r^2 (Cov - [i = j]
yhat_i)``: a local error of order ``r^2``, global order 1 in the step size.
The two-stage step ``t -> mid -> s`` (``mid`` halving ``theta``, both stages with bridge
probability ``h``, ``(1 - h)^2 = 1 - r``) draws stage 1 with ``yhat_1 = yhat(n_t, t)``, calls the
network again at ``(n_mid, mid)`` for ``yhat_2`` and draws stage 2 with an extrapolated missing
count, the trapezoidal rule of second-order tau-leaping (Ren et al., arXiv 2502.00234, with
``theta = 1/2``) written for births:

* ``trapezoidal_bridge``: ``b_1 ~ Binomial(R(yhat_1), h)``, ``n_mid = n_t + b_1``,
  ``b_2 ~ Binomial(R(2 yhat_2 - (yhat_1 - b_1)), h)``, where ``yhat_1 - b_1`` is what stage 1
  implies is missing at ``mid`` and ``R`` clips to ``0..N - n`` and rounds without bias
  (``floor(x) + Bernoulli(x - floor(x))``);
* ``trapezoidal_leaping``: ``b_1 = min(Poisson(yhat_1 k), N - n_t)``,
  ``b_2 = min(Poisson(max(2 yhat_2 - yhat_1, 0) k), N - n_mid)`` with the clock step
  ``k = -log(1 - h)`` (frozen rates over the clock, as in the paper).

Expanding both to second order in ``h`` (one birth in stage 1 raises ``yhat_2`` of count ``j`` by
``Cov(m_i, m_j) / yhat_i`` to first order, no birth lowers it by ``Var(m_j) h``) gives
``E[B] = yhat (1 - (1 - h)^2)`` for the bridge form and ``E[B_i B_j - [i = j] B_i] =
(2h)^2 E[m_i m_j - [i = j] m_i]`` for both: the local error is ``O(h^3)``, global order 2. The
leaping form is order 2 for any rates; the bridge form is order 2 when ``yhat`` is whole (its
unbiased rounding adds variance ``f (1 - f)``, ``f`` the fractional part, an order-1 term bounded
by 1/4 per count); its mean ``E[B] = r yhat`` is exact for any step length as long as the
extrapolated count stays within ``0..N - n_mid`` (where it is clipped, as the rate is in the
paper, the mean is not). The leaping form freezes rates over the clock, which overshoots on long
steps (``k >> 1``): it is for fine grids. Births never exceed ``N - n``. The last step into
``s = 0`` is infinitely long on the clock; there ``mid = t / 2`` and stage 2 adds ``yhat_2``
unextrapolated (the reference grids end with ``t_1 ~ e^{-t_end}``, so this step hardly
matters). A two-stage step is one iteration of the same ``lax.scan``.

:func:`unthin` runs the same loop from a given state (a thinned observation) at ``t* = -ln q``
on one grid per example, ``(B, K + 1)``: each step's ``t`` and ``s`` are then ``(B,)`` and the
draws below take one bridge probability per example (one table per example).

The loop is a ``lax.scan`` inside ``jax.jit``: one dispatch per call, the network the only heavy
work per step. The bridge's binomials are drawn by exact inversion against a per-step
``(N + 1)^2`` table (:mod:`blackout_jax.draws`), since ``r`` is shared by every count of a step;
tau-leaping draws ``min(Poisson(yhat r), N - n_t)`` exactly with
:func:`blackout_jax.draws.capped_poisson_scaled`.
The samplers know the model only through ``predict_fn``.

Compilation is cached on ``(predict_fn, shape, grid length, max_count, method, start,
progress)``. A
``predict_fn`` that closes over large arrays (network parameters) would have them baked into
the program as constants; pass it as a ``jax.tree_util.Partial`` whose arguments hold the
arrays instead (``Partial(apply, params)`` called as ``apply(params, counts, t)``): its arrays
then travel as arguments and one compilation serves every parameter value.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blackout_jax import argument_checks, draws, functional, likelihood, process, schedule

Array = jax.Array
PredictFn = Callable[[Array, Array], Array]

METHODS = ("binomial_bridge", "tau_leaping", "trapezoidal_bridge", "trapezoidal_leaping")
STARTS = ("prior", "zeros")
_TWO_STAGE_METHODS = ("trapezoidal_bridge", "trapezoidal_leaping")
_PROGRESS_UPDATES = 20  # host callbacks per sampler run when progress is on (about 1 ms each)
_SMALLEST_TWIST_RATE = 1e-6  # floor of yhat in the particles' Poisson fit to the observations


def sample(
    key: Array,
    predict_fn: PredictFn,
    shape: tuple[int, ...],
    times: Array,
    *,
    max_count: int,
    method: str = "binomial_bridge",
    start: str = "prior",
    progress: bool = False,
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
        per step, second order; see the module docstring).
      start: the state at ``t_end``: ``"prior"`` (default) draws ``Poisson((N/2) p_{t_end})``
        clipped to ``N``, the prior of the likelihood bound, so samples come from the model
        whose likelihood :func:`blackout_jax.nll_bound` bounds; ``"zeros"`` starts from an
        all-zero state, as the reference's generation code does (the prior is almost always
        all zeros too, but the bound is only a bound for the prior start).
      progress: report steps done and steps/s on stderr while the compiled loop runs (about 20
        host callbacks per run).
      sharding: optional sharding of the state (for example ``NamedSharding(mesh, P("data"))``
        to split the batch over devices); draws do not depend on it.

    Returns:
      int32 counts of ``shape`` in ``0..max_count``.

    Raises:
      ValueError: bad ``method``, ``shape`` or ``max_count``, or (when concrete) a grid that is
        not 1-D, shorter than 2, not starting at 0 or not strictly increasing.
    """
    _check_sampler_arguments(shape, times, max_count, method, start)
    return _run_sampler(
        key,
        functional.as_partial(predict_fn),
        jnp.asarray(times, jnp.float32),
        None,
        None,
        None,
        shape=tuple(int(d) for d in shape),
        max_count=int(max_count),
        method=method,
        start=start,
        resamples=1,
        particles=1,
        progress=bool(progress),
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
    progress: bool = False,
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
    calls per step. Measured with the dataset oracle on digits (experiments/RESULTS.md): with a
    quarter of the entries missing, U = 1 completes about half of the examples as the observed
    dataset member, U = 5 83% and U = 10 94%; with half or more missing the gain is smaller.

    With ``particles = P > 1`` each example is grown as ``P`` particles instead (sequential Monte
    Carlo, ``P`` network calls per step): at every step a particle is weighted by how well the
    network's prediction fits the observations, the twist
    ``prod_observed Poisson(x_obs - n_t; yhat)`` (the missing units of an entry taken as Poisson
    with the predicted mean), relative to its previous step; the particles of an example are
    resampled by these weights when their effective number falls below ``P / 2``, and one
    particle per example is returned, drawn by its final weight (the last twist divided out).
    Particles whose unobserved entries commit to something the observations contradict are
    dropped early. The twist is an approximation, so this too is approximate; measured with the
    oracle it beats resampling at the same cost, most when much is missing (half missing: 83%
    members with P = 5 against 56% with U = 5). Use ``P >= 3``: two particles are never
    resampled (their effective number cannot fall below 1).

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
    _check_sampler_arguments(counts_shape, times, max_count, method, start)
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
    observed_values = argument_checks.concrete_value(observed)
    if observed_values is not None and observed_values.dtype != np.bool_:
        raise ValueError(f"observed must be a boolean mask, got dtype {observed_values.dtype}")
    observed_values = jnp.asarray(observed, bool)
    argument_checks.check_counts("counts", jnp.where(observed_values, counts, 0), max_count)
    particles = int(particles)
    return _run_sampler(
        key,
        functional.as_partial(predict_fn),
        jnp.asarray(times, jnp.float32),
        jnp.repeat(jnp.asarray(counts).astype(jnp.int32), particles, axis=0),
        jnp.repeat(observed_values, particles, axis=0),
        None,
        shape=(counts_shape[0] * particles, *counts_shape[1:]),
        max_count=int(max_count),
        method=method,
        start=start,
        resamples=int(resamples),
        particles=particles,
        progress=bool(progress),
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
    progress: bool = False,
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
        ``q = 1`` are returned as given; when every ``q`` is 1 (and known) ``predict_fn`` is
        not called.
      max_count: largest count ``N`` (``>= 1``).
      num_steps: sampler steps ``K >= 1`` between ``t*`` and 0.
      method: one of :data:`METHODS`, as for :func:`sample`. The default
        ``"trapezoidal_bridge"`` rounds the predicted missing counts without bias; the
        reference's ``"binomial_bridge"`` rounds them to the nearest whole number, which
        favours the most likely ``x`` (rare values of the posterior are drawn too seldom). The
        leaping methods can add more units than are missing, which takes a fine grid to make
        rare. experiments/RESULTS.md ("Un-thinning") compares them with the dataset oracle.
      grid: one of :data:`blackout_jax.schedule.UNTHIN_GRIDS`.
      progress: report the steps on stderr, as for :func:`sample`.
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
    _check_sampler_arguments(shape, None, max_count, method, "prior")
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
    survival_values = argument_checks.concrete_value(survival)
    if survival_values is not None:
        argument_checks.check_survival("survival", survival_values)
        if np.all(survival_values == 1):
            return jnp.asarray(observed).astype(jnp.int32)
    q = jnp.asarray(survival, jnp.float32)
    thinned = q < 1.0
    times = schedule.unthinning_times(jnp.where(thinned, q, 0.5), int(num_steps))
    counts = jnp.asarray(observed).astype(jnp.int32)
    drawn = _run_sampler(
        key,
        functional.as_partial(predict_fn),
        times,
        None,
        None,
        counts,
        shape=shape,
        max_count=int(max_count),
        method=method,
        start="prior",
        resamples=1,
        particles=1,
        progress=bool(progress),
        sharding=sharding,
    )
    return jnp.where(_per_example(thinned, len(shape)), drawn, counts)


def _check_sampler_arguments(
    shape: tuple[int, ...], times: Array | None, max_count: int, method: str, start: str
) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    argument_checks.check_max_count(max_count)
    if len(shape) < 1 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape!r}")
    if times is not None:
        argument_checks.check_time_grid(times)


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
    observed_counts: Array | None,
    observed: Array | None,
    initial_counts: Array | None,
    *,
    shape: tuple[int, ...],
    max_count: int,
    method: str,
    start: str,
    resamples: int,
    particles: int,
    progress: bool,
    sharding: jax.sharding.Sharding | None,
) -> Array:
    """The one sampler loop of :func:`sample`, :func:`impute` and :func:`unthin`.

    ``times`` is one grid ``(K + 1,)`` shared by the batch, or one grid per example
    ``(B, K + 1)``: then every step's ``t`` and ``s`` are ``(B,)`` and the draws take one
    bridge probability per example. ``initial_counts`` (``shape``), when given, is the state at
    the grid's last time instead of a draw of the start.
    """
    batch = shape[0]
    num_steps = times.shape[-1] - 1
    t_end = _per_example(times[..., -1], len(shape))
    prior_key, loop_key = jax.random.split(key)

    def constrain(counts: Array) -> Array:
        if sharding is None:
            return counts
        return jax.lax.with_sharding_constraint(counts, sharding)

    if initial_counts is not None:
        initial = initial_counts
    elif start == "zeros":
        initial = jnp.zeros(shape, jnp.int32)
    else:
        initial = likelihood.prior_sample(prior_key, shape, t_end=t_end, max_count=max_count)
    if observed is not None:
        observed_start = process.forward_sample(
            jax.random.fold_in(prior_key, 1), observed_counts, t_end
        )
        initial = jnp.where(observed, observed_start, initial)
    initial = constrain(initial)

    def predict(counts: Array, t: Array) -> Array:
        return predict_fn(counts, jnp.broadcast_to(t, (batch,))).astype(jnp.float32)

    def reverse_step(key: Array, counts: Array, t: Array, s: Array) -> Array:
        return advance(key, counts, predict(counts, t), t, s)

    def advance(key: Array, counts: Array, pred: Array, t: Array, s: Array) -> Array:
        if method in _TWO_STAGE_METHODS:
            return two_stage_advance(key, counts, pred, t, s)
        draw_key, observed_key = jax.random.split(key)
        r = process.bridge_probability(s, t)
        if method == "binomial_bridge":
            room = (max_count - counts).astype(jnp.float32)
            trials = jnp.clip(jnp.round(pred), 0.0, room)
            if observed is not None:  # observed entries follow the exact bridge to their value
                trials = jnp.where(observed, observed_counts - counts, trials)
            return counts + _binomial(draw_key, trials, r, max_count)
        # clip(n_t + Poisson(yhat r), 0, N) = n_t + min(Poisson(yhat r), N - n_t)
        room = max_count - counts
        new_counts = counts + _capped_poisson(draw_key, pred, r, room, max_count)
        if observed is not None:
            missing = observed_counts - counts
            bridged = counts + _binomial(observed_key, missing, r, max_count)
            new_counts = jnp.where(observed, bridged, new_counts)
        return new_counts

    def two_stage_advance(key: Array, counts: Array, pred: Array, t: Array, s: Array) -> Array:
        """A trapezoidal step ``t -> mid -> s``: ``pred`` at ``t``, one more call at ``mid``."""
        first_key, second_key = jax.random.split(key)
        mid, weight = _two_stage_midpoint(t, s)
        mid_counts = constrain(stage(first_key, counts, pred, mid, t))
        pred_mid = predict(mid_counts, mid)
        frozen = pred  # the missing counts at mid that pred implies, before this stage's births
        if method == "trapezoidal_bridge":
            frozen = pred - (mid_counts - counts).astype(jnp.float32)
        extrapolated = pred_mid + _per_example(weight, len(shape)) * (pred_mid - frozen)
        return stage(second_key, mid_counts, extrapolated, s, mid)

    def stage(key: Array, counts: Array, expected: Array, s: Array, t: Array) -> Array:
        """Births of one stage ``t -> s`` for ``expected`` missing units, at most the room."""
        draw_key, round_key, observed_key = jax.random.split(key, 3)
        r = process.bridge_probability(s, t)
        room = max_count - counts
        if method == "trapezoidal_bridge":
            trials = _unbiased_round(round_key, jnp.clip(expected, 0.0, room.astype(jnp.float32)))
            births = _binomial(draw_key, trials, r, max_count)
        else:  # frozen intensity over the clock -log(1 - p): -log(1 - r); 1 when r = 1 (s = 0)
            clock = jnp.where(r < 1.0, -jnp.log1p(-jnp.minimum(r, 1.0 - 1e-7)), 1.0)
            births = _capped_poisson(draw_key, expected, clock, room, max_count)
        new_counts = counts + births
        if observed is not None:  # observed entries follow the exact bridge to their value
            missing = observed_counts - counts
            bridged = counts + _binomial(observed_key, missing, r, max_count)
            new_counts = jnp.where(observed, bridged, new_counts)
        return new_counts

    def resampled_step(key: Array, counts: Array, t: Array, s: Array) -> Array:
        """``resamples - 1`` rounds of (step t -> s, thin s -> t back), then the step t -> s."""
        survival = jnp.exp(s - t)  # p_t / p_s: a unit's forward survival from s to t

        def step_and_thin(round_index: Array, counts: Array) -> Array:
            step_key, thin_key = jax.random.split(jax.random.fold_in(key, round_index))
            stepped = constrain(reverse_step(step_key, counts, t, s))
            return constrain(_binomial(thin_key, stepped, survival, max_count))

        counts = jax.lax.fori_loop(0, resamples - 1, step_and_thin, counts)
        return reverse_step(jax.random.fold_in(key, resamples), counts, t, s)

    num_examples = batch // particles

    def log_twist(counts: Array, pred: Array) -> Array:
        """``log prod_observed Poisson(x_obs - n_t; yhat)`` per particle, ``(B * P,)``."""
        missing = (observed_counts - counts).astype(jnp.float32)
        rate = jnp.maximum(pred, _SMALLEST_TWIST_RATE)
        log_pmf = missing * jnp.log(rate) - rate - jax.scipy.special.gammaln(missing + 1.0)
        return jnp.sum(jnp.where(observed, log_pmf, 0.0), axis=tuple(range(1, counts.ndim)))

    def particle_step(
        carry: tuple[Array, Array, Array], key: Array, t: Array, s: Array
    ) -> tuple[Array, Array, Array]:
        """Reweight by the change of the twist, resample when the ESS is below P / 2, advance."""
        counts, log_weights, previous_twist = carry
        draw_key, resample_key = jax.random.split(key)
        pred = predict(counts, t)
        twist = log_twist(counts, pred)
        log_weights = log_weights + (twist - previous_twist).reshape(num_examples, particles)
        weights = jax.nn.softmax(log_weights, axis=1)
        degenerate = 1.0 / jnp.sum(weights**2, axis=1) < 0.5 * particles  # (B,)
        drawn = jax.random.categorical(resample_key, log_weights, shape=(particles, num_examples))
        chosen = jnp.where(degenerate[:, None], drawn.T, jnp.arange(particles)[None, :])
        rows = (jnp.arange(num_examples)[:, None] * particles + chosen).reshape(-1)
        counts, pred, twist = constrain(counts[rows]), pred[rows], twist[rows]
        log_weights = jnp.where(degenerate[:, None], 0.0, log_weights)
        return constrain(advance(draw_key, counts, pred, t, s)), log_weights, twist

    def step(carry: Any, inputs: tuple[Array, Array, Array]) -> tuple[Any, None]:
        k, t, s = inputs
        key = jax.random.fold_in(loop_key, k)
        if particles > 1:
            new_carry = particle_step(carry, key, t, s)
        elif resamples > 1:
            new_carry = constrain(resampled_step(key, carry, t, s))
        else:
            new_carry = constrain(reverse_step(key, carry, t, s))
        if progress:
            _report_progress(num_steps - k + 1, num_steps)
        return new_carry, None

    ks = jnp.arange(num_steps, 0, -1)
    steps = times.T  # (K + 1,) or (K + 1, B): row k holds the time(s) t_k
    if particles == 1:
        final, _ = jax.lax.scan(step, initial, (ks, steps[ks], steps[ks - 1]))
        return final
    no_weights = jnp.zeros((num_examples, particles), jnp.float32)
    carry = (initial, no_weights, jnp.zeros((batch,), jnp.float32))
    (final, log_weights, twist), _ = jax.lax.scan(step, carry, (ks, steps[ks], steps[ks - 1]))
    # At s = 0 the observed entries equal x_obs: the twist has done its work and is divided out.
    log_weights = log_weights - twist.reshape(num_examples, particles)
    pick = jax.random.categorical(jax.random.fold_in(loop_key, 0), log_weights)
    return final.reshape(num_examples, particles, *shape[1:])[jnp.arange(num_examples), pick]


def _per_example(value: Array, ndim: int) -> Array:
    """A scalar as it is; one value per example ``(B,)`` as ``(B, 1, ..., 1)`` of ``ndim`` axes."""
    return value if value.ndim == 0 else value.reshape(value.shape + (1,) * (ndim - 1))


def _binomial(key: Array, trials: Array, r: Array, max_count: int) -> Array:
    """``Binomial(trials, r)`` by inversion: ``r`` one scalar, or one per example ``(B,)``.

    Per example, each example draws with its own key ``split(key, B)[b]`` against its own
    table (:func:`blackout_jax.draws.binomial_by_inversion`, vectorised over the batch).
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


def _report_progress(steps_done: Array, total: int) -> None:
    """Call the host-side reporter about ``_PROGRESS_UPDATES`` times per run (and at the end)."""
    every = max(1, total // _PROGRESS_UPDATES)
    due = (steps_done % every == 0) | (steps_done == total)
    jax.lax.cond(
        due,
        lambda: jax.debug.callback(_ProgressLine.update, steps_done, total),
        lambda: None,
    )


class _ProgressLine:
    """One status line on stderr: ``sampling: k/K steps, x steps/s``."""

    running: bool = False
    first_time: float = 0.0
    first_done: int = 0
    last_done: int = 0

    @classmethod
    def update(cls, steps_done: np.ndarray, total: np.ndarray) -> None:
        done, total = int(steps_done), int(total)
        now = time.perf_counter()
        if not cls.running or done <= cls.last_done:  # a new run
            cls.running, cls.first_time, cls.first_done = True, now, done
        cls.last_done = done
        cls.running = done < total
        elapsed = now - cls.first_time
        rate = f"{(done - cls.first_done) / elapsed:.1f} steps/s" if elapsed > 0 else "..."
        line = f"sampling: {done}/{total} steps, {rate}"
        if sys.stderr.isatty():
            sys.stderr.write("\r" + line + ("\n" if done >= total else ""))
        else:  # logs: about one line per tenth of the run
            previous = done - max(1, total // _PROGRESS_UPDATES)
            if done >= total or done * 10 // total != previous * 10 // total:
                sys.stderr.write(line + "\n")
        sys.stderr.flush()
