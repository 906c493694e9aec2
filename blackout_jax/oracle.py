"""The exact denoiser of a finite dataset: a ``predict_fn`` with no network.

For data ``{x_j}`` (``j = 1..J``) observed through the forward process, the posterior over the
clean example given ``n_t`` has weights ``w_j ∝ prod_i Binomial(n_{t,i}; x_{j,i}, p_t)``, and

    E[n_0 - n_t | n_t] = sum_j w_j (x_j - n_t).

Driving a sampler with it reproduces the dataset; driving :func:`~blackout_jax.nll_bound` with it
gives about ``log J`` nats per example. It is the reference against which samplers and the bound
are tested, and a quick way to see the samplers work without training anything.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from blackout_jax import argument_checks, process

Array = jax.Array
_VIOLATION_PENALTY = 1.0e4  # nats per count above an example's value


def dataset_oracle(data: Array) -> Callable[[Array, Array], Array]:
    """Return ``predict_fn(counts (B, ...), t (B,)) -> E[n_0 - n_t | n_t]`` for ``data``.

    Args:
      data: ``(J, ...)`` whole-number counts; examples have the shape of ``counts[1:]``.

    States that no example can produce (a count above every candidate's value, which
    tau-leaping can reach by overshooting) get the mean of the examples with the fewest such
    counts instead of NaN.

    Returns:
      A ``jax.tree_util.Partial`` (the dataset travels as an argument, not a compiled constant).
      Memory per call is ``O(B * J * D)``, fine for thousands of small examples.
    """
    argument_checks.check_counts("data", data)
    data = jnp.asarray(data, jnp.float32)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must have shape (J, ...) with J >= 1, got {data.shape}")
    return jax.tree_util.Partial(_oracle_mean, data)


def _oracle_mean(data: Array, counts: Array, t: Array) -> Array:
    batch = counts.shape[0]
    flat_data = data.reshape(data.shape[0], -1)  # (J, D)
    flat_counts = jnp.asarray(counts, jnp.float32).reshape(batch, -1)  # (B, D)
    t = jnp.asarray(t, jnp.float32)
    log_p = -t[:, None, None]
    log_one_minus_p = process.log_one_minus_survival(t)[:, None, None]
    # A state that no example can produce (a count above the example's) would give every
    # example zero weight; such pixels are scored at the example's value with a penalty that
    # leaves any consistent example dominant, so the mean stays defined (the nearest examples).
    within = jnp.minimum(flat_counts[:, None, :], flat_data[None, :, :])
    violations = jnp.sum(flat_counts[:, None, :] > flat_data[None, :, :], axis=-1)
    log_likelihood = (
        process.binomial_log_prob(within, flat_data[None, :, :], log_p, log_one_minus_p).sum(
            axis=-1
        )
        - _VIOLATION_PENALTY * violations
    )  # (B, J)
    weights = jax.nn.softmax(log_likelihood, axis=-1)
    expected_clean = weights @ flat_data  # (B, D)
    return (expected_clean - flat_counts).reshape(counts.shape)
