"""Per-example quantities over a whole dataset: the likelihood bound and the held-out loss.

:func:`map_over_batches` is the one loop that pads, batches, shards and trims; the training
evaluations and ``--mode=evaluate`` both compute the bound through :func:`bound_over`, and the
held-out loss through :func:`loss_over`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from blackout_jax import likelihood, losses
from blackout_jax.run import parallel

Array = jax.Array


def batch_sharding_for(size: int) -> jax.sharding.Sharding:
    """Split a batch of ``size`` over every device when it divides evenly, else replicate it."""
    mesh = parallel.create_mesh()
    if size % jax.device_count() == 0:
        return parallel.batch_sharding(mesh)
    return parallel.replicated_sharding(mesh)


def map_over_batches(
    compute_batch: Callable[[Array, int], Array],
    examples: np.ndarray,
    *,
    batch_size: int,
    description: str = "",
) -> np.ndarray:
    """``compute_batch(batch, index) -> (batch_size,)`` over ``examples`` in batches, trimmed.

    ``examples`` (every host holds all of them) is cut into batches of ``batch_size``, the last
    padded with zeros; batch ``index`` covers rows ``[index B, (index + 1) B)`` and is split over
    the devices (:func:`batch_sharding_for`).

    With a ``description`` and more than one batch, the primary host shows a progress bar.

    Returns:
      ``(len(examples),)`` NumPy array of per-example values (padding dropped).
    """
    examples = np.asarray(examples)
    num = examples.shape[0]
    padded = -(-num // batch_size) * batch_size
    padding = np.zeros((padded - num, *examples.shape[1:]), examples.dtype)
    batches = np.concatenate([examples, padding]).reshape(-1, batch_size, *examples.shape[1:])
    sharding = batch_sharding_for(batch_size)
    indices: Sequence[int] = range(len(batches))
    if description and len(batches) > 1 and parallel.is_primary():
        from tqdm import tqdm

        indices = tqdm(indices, desc=description, unit="batch", leave=False)
    values = []
    for index in indices:
        value = compute_batch(parallel.shared_array(batches[index], sharding), index)
        if not isinstance(indices, range):
            value.block_until_ready()  # the bar shows work done, not work dispatched
        values.append(value)
    return np.concatenate(parallel.to_host(values))[:num]


def bound_over(
    key: Array,
    predict_fn: Callable[[Array, Array], Array],
    examples: np.ndarray,
    *,
    batch_size: int,
    t_end: float,
    max_count: int,
    num_time_samples: int,
) -> np.ndarray:
    """:func:`blackout_jax.nll_bound` (nats) per example; batch ``i`` keyed ``fold_in(key, i)``.

    Returns:
      ``(len(examples),)`` float array of bounds in nats (:func:`blackout_jax.bits_per_dim`
      turns them into bits per count).
    """

    def bound(batch: Array, index: int) -> Array:
        return likelihood.nll_bound(
            jax.random.fold_in(key, index),
            predict_fn,
            batch,
            t_end=t_end,
            max_count=max_count,
            num_time_samples=num_time_samples,
        )

    return map_over_batches(bound, examples, batch_size=batch_size, description="likelihood bound")


@functools.partial(jax.jit, static_argnames=("weighting", "t_end", "num_steps"))
def _batch_loss(
    key: Array,
    predict_fn: Callable[[Array, Array], Array],
    batch: Array,
    first_index: Array,
    *,
    weighting: str,
    t_end: float,
    num_steps: int,
) -> Array:
    indices = first_index.astype(jnp.uint32) + jnp.arange(batch.shape[0], dtype=jnp.uint32)
    return losses.training_loss(
        losses.example_keys(key, indices),
        predict_fn,
        batch,
        weighting=weighting,
        t_end=t_end,
        num_steps=num_steps,
    )


def loss_over(
    key: Array,
    predict_fn: jax.tree_util.Partial,
    examples: np.ndarray,
    *,
    batch_size: int,
    weighting: str,
    t_end: float,
    num_steps: int,
) -> np.ndarray:
    """:func:`blackout_jax.training_loss` of every example; example ``g`` keyed ``fold_in(key, g)``.

    ``predict_fn`` must be a pytree (:func:`blackout_jax.models.make_predict_fn`), so one
    compilation serves every parameter value.
    """

    def loss(batch: Array, index: int) -> Array:
        first = jnp.asarray(index * batch_size, jnp.uint32)
        return _batch_loss(
            key, predict_fn, batch, first, weighting=weighting, t_end=t_end, num_steps=num_steps
        )

    return map_over_batches(loss, examples, batch_size=batch_size, description="held-out loss")


def histogram_bits_per_dim(train: np.ndarray, test: np.ndarray, max_count: int) -> float:
    """Bits per count of ``test`` under independent per-position histograms of ``train``.

    Position ``i`` (an entry of ``(H, W, C)``) gets ``p_i(n) = (c_i(n) + 1) / (M + N + 1)``,
    ``c_i(n)`` the training examples with count ``n`` there (``M`` of them, add-one smoothing
    over ``0..N``); the result is ``-mean_{j, i} log2 p_i(test_{j,i})``. A trivial baseline that
    a trained model's bound should beat.
    """
    train = np.asarray(train, np.int64).reshape(len(train), -1)
    test = np.asarray(test, np.int64).reshape(len(test), -1)
    num_bins = max_count + 1
    positions = np.arange(train.shape[1])
    histogram = np.zeros((train.shape[1], num_bins), np.float64)
    np.add.at(histogram, (np.broadcast_to(positions, train.shape), train), 1.0)
    probabilities = (histogram + 1.0) / (len(train) + num_bins)
    log_probability = np.log2(probabilities[np.broadcast_to(positions, test.shape), test])
    return float(-np.mean(log_probability))
