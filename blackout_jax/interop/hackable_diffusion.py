"""Blackout Diffusion's binomial death process as a ``hackable_diffusion`` corruption process.

``hackable_diffusion`` (Google DeepMind, https://github.com/google/hackable_diffusion) describes
a forward process by its ``CorruptionProcess`` protocol: ``corrupt``, ``sample_from_invariant``,
``convert_predictions`` and ``get_schedule_info``, all on a time ``u`` in ``[0, 1]``.
:class:`BlackoutProcess` implements it for integer counts of any shape ``(B, ...)``:

* time: ``u`` in ``[0, 1]`` maps to the process time ``t = softplus(-L (1 - 2u))``,
  ``L = log(e^{t_end} - 1)`` (:func:`blackout_jax.continuous_time`: ``logit(p_t)`` linear in
  ``u``, ``t(0) ~ e^{-t_end}``, ``t(1) = t_end``); ``alpha = p_t = e^{-t}`` is the
  probability that a unit is still alive;
* ``corrupt``: ``x_t ~ Binomial(x_0, p_t)`` per entry (:func:`blackout_jax.forward_sample`),
  with the targets ``x0`` and ``missing = x_0 - x_t``;
* ``sample_from_invariant``: the pure death process ends in all zeros; the draw is the
  likelihood bound's prior ``Poisson((N/2) p_{t_end})`` clipped to ``N`` (almost always zeros),
  from which blackout_jax's samplers start;
* ``predict_fn``: a network trained on ``u``-time as blackout_jax's ``predict_fn(counts, t)``;
* ``convert_predictions``: from one of ``missing`` (``yhat ~ E[x_0 - x_t | x_t]``, the
  quantity blackout_jax's networks predict), ``x0`` or ``rate`` (the reverse-time birth rate
  ``lambda = yhat p_t / (1 - p_t)``) to all three.

The protocol is matched by method names and arguments (it is a ``typing.Protocol``), so this
module imports only blackout_jax and JAX; ``hackable_diffusion`` is needed only by the code
that drives the process (``pip install blackout-jax[hackable]``, Python >= 3.12).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from blackout_jax import likelihood, process, schedule

Array = jax.Array
PREDICTION_TYPES = ("missing", "x0", "rate")


def _right_broadcast(time: Array, ndim: int) -> Array:
    """``time`` ``(B,)`` (or already ``(B, ...)``) with trailing unit axes up to ``ndim``."""
    time = jnp.asarray(time, jnp.float32)
    return time.reshape(time.shape + (1,) * (ndim - time.ndim))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlackoutSchedule:
    """``u -> p_t``: the survival probability at ``t = softplus(-L (1 - 2u))``.

    A ``hackable_diffusion`` ``DiscreteSchedule``: ``alpha(u)`` is the probability of keeping
    the original value (here: that a unit is still alive).

    Attributes:
      t_end: the process time at ``u = 1`` (the reference uses 15).
    """

    t_end: float = 15.0

    def __post_init__(self):
        if not float(self.t_end) > 0.0:
            raise ValueError(f"t_end must be > 0, got {self.t_end!r}")

    def blackout_time(self, time: Array) -> Array:
        """``t = softplus(-L (1 - 2u))`` for ``u = time`` in ``[0, 1]``, same shape."""
        return schedule.continuous_time(time, self.t_end)

    def time(self, blackout_time: Array) -> Array:
        """``u = (1 + log(e^t - 1) / L) / 2``, the inverse of :meth:`blackout_time` (``logit(p_t)
        = -log(e^t - 1)``), same shape as ``blackout_time``."""
        t = jnp.asarray(blackout_time, jnp.float32)
        big_l = jnp.log(jnp.expm1(jnp.float32(self.t_end)))
        return 0.5 * (1.0 + jnp.log(jnp.expm1(t)) / big_l)

    def alpha(self, time: Array) -> Array:
        """``p_t = exp(-t(u))``, same shape as ``time``."""
        return process.survival_probability(self.blackout_time(time))

    def evaluate(self, time: Array) -> dict[str, Array]:
        """``{"time": u, "alpha": p_t, "blackout_time": t}``, each of ``time``'s shape."""
        time = jnp.asarray(time, jnp.float32)
        return {
            "time": time,
            "alpha": self.alpha(time),
            "blackout_time": self.blackout_time(time),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlackoutProcess:
    """The binomial death process of Blackout Diffusion on counts ``0..max_count``.

    Attributes:
      max_count: largest count ``N`` (``>= 1``); the prior's rate is ``(N/2) p_{t_end}``.
      schedule: the map from ``u`` to ``p_t`` (:class:`BlackoutSchedule`).
    """

    max_count: int
    schedule: BlackoutSchedule = BlackoutSchedule()

    def __post_init__(self):
        if isinstance(self.max_count, bool) or not isinstance(self.max_count, int):
            raise ValueError(f"max_count must be an int >= 1, got {self.max_count!r}")
        if self.max_count < 1:
            raise ValueError(f"max_count must be an int >= 1, got {self.max_count!r}")

    def corrupt(self, key: Array, x0: Array, time: Array) -> tuple[Array, dict[str, Array]]:
        """``x_t ~ Binomial(x_0, p_{t(u)})`` per entry, and the targets.

        Args:
          key: PRNG key.
          x0: ``(B, ...)`` counts (whole numbers ``>= 0``, any integer or float dtype).
          time: ``u`` in ``[0, 1]``: ``(B,)``, or ``(B, ...)`` broadcastable to ``x0``.

        Returns:
          ``x_t`` (``x0``'s shape and dtype) and ``{"x0": x_0, "missing": x_0 - x_t}``
          (``missing`` float32): the target of a ``missing`` prediction.
        """
        x0 = jnp.asarray(x0)
        t = self.schedule.blackout_time(_right_broadcast(time, x0.ndim))
        xt = process.forward_sample(key, x0, t)
        missing = x0.astype(jnp.float32) - xt.astype(jnp.float32)
        return xt, {"x0": x0, "missing": missing}

    def sample_from_invariant(self, key: Array, data_spec: Array) -> Array:
        """int32 counts of ``data_spec.shape`` from ``Poisson((N/2) p_{t_end})``, at most ``N``.

        ``data_spec`` is any array (or ``jax.ShapeDtypeStruct``) of the data's shape.
        """
        return likelihood.prior_sample(
            key, tuple(data_spec.shape), t_end=self.schedule.t_end, max_count=self.max_count
        )

    def convert_predictions(
        self, prediction: dict[str, Array], xt: Array, time: Array
    ) -> dict[str, Array]:
        """One prediction, ``{"missing" | "x0" | "rate": value}``, as all three (float32).

        ``missing = yhat ~ E[x_0 - x_t | x_t]``, ``x0 = x_t + yhat`` and ``rate = yhat p_t /
        (1 - p_t)``, at ``t = t(u)`` for ``u = time`` (``(B,)`` or broadcastable to ``xt``).

        Raises:
          KeyError: ``prediction`` does not hold exactly one of :data:`PREDICTION_TYPES`.
        """
        if len(prediction) != 1 or next(iter(prediction)) not in PREDICTION_TYPES:
            raise KeyError(
                f"prediction must hold exactly one of {PREDICTION_TYPES}, got keys "
                f"{sorted(prediction)}"
            )
        ((kind, value),) = prediction.items()
        xt = jnp.asarray(xt)
        current = xt.astype(jnp.float32)
        t = self.schedule.blackout_time(_right_broadcast(time, xt.ndim))
        value = jnp.asarray(value, jnp.float32)
        if kind == "missing":
            missing = value
        elif kind == "x0":
            missing = value - current
        else:
            missing = value * jnp.expm1(t)
        return {
            "missing": missing,
            "x0": current + missing,
            "rate": process.birth_rate(missing, t),
        }

    def predict_fn(
        self, network_fn: Callable[[Array, Array], Array], prediction_type: str = "missing"
    ) -> Callable[[Array, Array], Array]:
        """blackout_jax's ``predict_fn(counts, t) -> yhat`` of a network on ``u``-time.

        ``network_fn(x_t, u)`` is any network trained with this process (for instance a
        ``hackable_diffusion`` network's apply with its parameters and conditioning bound),
        predicting ``prediction_type`` (one of :data:`PREDICTION_TYPES`) for ``x_t`` ``(B,
        ...)`` at ``u`` ``(B,)``. The result calls it at ``u = time(t)`` (:meth:`BlackoutSchedule.
        time`) and converts its prediction to ``yhat = missing`` (:meth:`convert_predictions`),
        so blackout_jax's samplers, imputation, un-thinning and likelihood bound can use it.

        Raises:
          ValueError: ``prediction_type`` not in :data:`PREDICTION_TYPES`.
        """
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )

        def predict(counts: Array, t: Array) -> Array:
            u = self.schedule.time(jnp.broadcast_to(jnp.asarray(t, jnp.float32), counts.shape[:1]))
            prediction = {prediction_type: network_fn(counts, u)}
            return self.convert_predictions(prediction, counts, u)["missing"]

        return predict

    def get_schedule_info(self, time: Array) -> dict[str, Array]:
        """``{"time": u, "alpha": p_t, "blackout_time": t}`` (:meth:`BlackoutSchedule.evaluate`)."""
        return self.schedule.evaluate(time)
