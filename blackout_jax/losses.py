"""The Poisson-style training loss of Blackout Diffusion and its time weightings.

The network predicts ``yhat ~ E[n_0 - n_t | n_t]`` for every count. With target
``m = n_0 - n_t`` the loss per count is ``l(yhat, m) = yhat - m log yhat``; its minimiser over
``yhat`` is the conditional mean of ``m``. A time ``t`` and a weight ``w(t)`` are drawn per
example; the weightings are

* ``instantaneous`` (reference): ``k ~ Uniform{1..T}``, ``t = t_k``,
  ``w = T p_{t_k} (t_k - t_{k-1})``;
* ``finite_time`` (reference): ``k ~ Uniform{1..T}``, ``t = t_k``, ``w = p_{t_{k-1}} - p_{t_k}``;
* ``elbo``: ``u ~ Uniform(0, 1)``, ``t = continuous_time(u)``, ``w = 2L p_t``. With it the
  expected loss equals, up to terms free of ``yhat``, the diffusion part of the likelihood bound
  (:func:`blackout_jax.likelihood.nll_bound`).

``t_k`` is the reference grid :func:`blackout_jax.schedule.observation_times`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from blackout_jax import process, schedule

Array = jax.Array
PredictFn = Callable[[Array, Array], Array]

WEIGHTINGS = ("instantaneous", "finite_time", "elbo")
GRID_WEIGHTINGS = ("instantaneous", "finite_time")
"""The weightings that draw from the reference grid and so need ``num_steps``."""


def poisson_loss(pred: Array, target: Array) -> Array:
    """Elementwise ``yhat - m log yhat`` (``0 log 0 = 0``), float32, broadcast shape."""
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    return pred - jax.scipy.special.xlogy(target, pred)


def poisson_divergence(pred: Array, target: Array) -> Array:
    """Elementwise ``yhat - m + m log(m / yhat)`` (``0 log 0 = 0``): ``>= 0``, zero iff equal.

    This is ``poisson_loss(pred, target) - poisson_loss(target, target)``, the integrand of the
    likelihood bound.
    """
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    xlogy = jax.scipy.special.xlogy
    return pred - target + xlogy(target, target) - xlogy(target, pred)


def _check_weighting(weighting: str, num_steps: int | None) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting in GRID_WEIGHTINGS and num_steps is None:
        raise ValueError(f"num_steps is required for weighting={weighting!r} (its grid size)")


def sample_time_and_weight(
    key: Array,
    shape: tuple[int, ...],
    *,
    weighting: str,
    t_end: float,
    num_steps: int | None = None,
) -> tuple[Array, Array]:
    """Draw times and loss weights of the given ``shape`` (both float32).

    ``num_steps`` (``T``) is the size of the reference grid used by the two grid weightings
    (required for them); ``elbo`` ignores it. See the module docstring for the three formulas.

    Raises:
      ValueError: unknown ``weighting``, or a grid weighting without ``num_steps``.
    """
    _check_weighting(weighting, num_steps)
    if weighting == "elbo":
        u = jax.random.uniform(key, shape, jnp.float32)
        t = schedule.continuous_time(u, t_end)
        return t, 2.0 * schedule.logit_range(t_end) * process.survival_probability(t)
    times = schedule.observation_times(num_steps, t_end)
    k = jax.random.randint(key, shape, 1, num_steps + 1)
    t, t_prev = times[k], times[k - 1]
    if weighting == "instantaneous":
        weight = num_steps * process.survival_probability(t) * (t - t_prev)
    else:  # finite_time: p_{t_{k-1}} - p_{t_k} = p_{t_{k-1}} (1 - exp(-(t_k - t_{k-1})))
        weight = -process.survival_probability(t_prev) * jnp.expm1(-(t - t_prev))
    return t, weight


def example_keys(key: Array, example_indices: Array) -> Array:
    """One key per example, ``fold_in(key, index)``: shape ``(B,)`` keys for ``(B,)`` indices.

    Keying randomness on the *global* example index makes a step's draws independent of how
    the batch is split over devices or hosts.
    """
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, example_indices)


def training_loss(
    keys: Array,
    predict_fn: PredictFn,
    n0: Array,
    *,
    weighting: str,
    t_end: float,
    num_steps: int | None = None,
) -> Array:
    """Per-example weighted Poisson loss, shape ``(B,)``, float32.

    For example ``i`` (randomness from ``keys[i]`` only): draw ``(t_i, w_i)`` by
    :func:`sample_time_and_weight`, ``n_t ~ Binomial(n_0, p_{t_i})``, then

        loss_i = w_i * mean_over_counts( poisson_loss(yhat_i, n_0 - n_t) ),

    where ``yhat = predict_fn(n_t, t)`` is evaluated once on the whole batch.

    Args:
      keys: ``(B,)`` PRNG keys, one per example (see :func:`example_keys`).
      predict_fn: ``(counts (B, ...), t (B,)) -> yhat`` with the shape of counts.
      n0: clean counts ``(B, ...)``.
      weighting: one of :data:`WEIGHTINGS`.
      t_end: end time of the process.
      num_steps: size ``T`` of the reference grid; required by the grid weightings
        (``instantaneous``, ``finite_time``), ignored by ``elbo``.

    Raises:
      ValueError: unknown ``weighting``, or a grid weighting without ``num_steps``.
    """
    _check_weighting(weighting, num_steps)
    n0 = jnp.asarray(n0)

    def draw(key: Array, example: Array) -> tuple[Array, Array, Array]:
        time_key, noise_key = jax.random.split(key)
        t, weight = sample_time_and_weight(
            time_key, (), weighting=weighting, t_end=t_end, num_steps=num_steps
        )
        return t, weight, process.forward_sample(noise_key, example, t)

    t, weight, nt = jax.vmap(draw)(keys, n0)
    pred = predict_fn(nt, t)
    target = n0.astype(jnp.float32) - nt.astype(jnp.float32)
    per_count = poisson_loss(pred, target)
    return weight * jnp.mean(per_count.reshape(per_count.shape[0], -1), axis=1)
