"""Per-example quantities over a whole dataset: the likelihood bound and the held-out loss.

Both go through :func:`blackout_jax.run.chunked.run_in_chunks`, the one loop that pads, batches,
shards, keys and trims: batch ``i`` of ``batch_size`` examples (every host holds all of them) is
split over the devices and keyed ``fold_in(key, i)``. The training evaluations and
``--mode=evaluate`` compute the bound through :func:`bound_over` and the held-out loss through
:func:`loss_over`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np

from blackout_jax import likelihood, losses
from blackout_jax.run import chunked, parallel

Array = jax.Array


def bound_over(
    key: Array,
    predict_for: chunked.PredictFor,
    examples: np.ndarray,
    *,
    batch_size: int,
    t_end: float,
    max_count: int,
    num_time_samples: int,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`blackout_jax.nll_bound` (nats) per example; batch ``i`` keyed ``fold_in(key, i)``.

    Batch ``i`` is bounded with ``predict_for(labels=y_i)``, ``y_i`` its rows of ``labels``
    ``(len(examples),)`` (a conditional model without guidance: the bound on
    ``-log p(n_0 | label)``), or ``None`` without labels.

    Returns:
      ``(len(examples),)`` float array of bounds in nats (:func:`blackout_jax.bits_per_dim`
      turns them into bits per count).
    """

    def bound(batch_key: Array, batch: Array, batch_labels: Array | None = None) -> Array:
        return likelihood.nll_bound(
            batch_key,
            predict_for(labels=batch_labels),
            batch,
            t_end=t_end,
            max_count=max_count,
            num_time_samples=num_time_samples,
        )

    more = () if labels is None else (np.asarray(labels, np.int32),)
    return _over_batches(key, bound, examples, batch_size, "likelihood bound", *more)


def _over_batches(
    key: Array,
    compute: Callable[..., Array],
    examples: np.ndarray,
    batch_size: int,
    description: str,
    *more_inputs: np.ndarray,
) -> np.ndarray:
    """``compute(fold_in(key, i), batch_i, ...)`` over ``examples`` in batches, padding dropped."""
    return chunked.run_in_chunks(
        key,
        compute,
        num_examples=len(examples),
        chunk_size=batch_size,
        inputs=(np.asarray(examples), *more_inputs),
        sharding=parallel.batch_sharding_for(batch_size),
        progress=True,
        description=description,
    )


@functools.partial(jax.jit, static_argnames=("weighting", "t_end", "num_steps"))
def _batch_loss(
    key: Array,
    predict_fn: Callable[[Array, Array], Array],
    batch: Array,
    indices: Array,
    *,
    weighting: str,
    t_end: float,
    num_steps: int,
) -> Array:
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

    def loss(batch_key: Array, batch: Array, indices: Array) -> Array:
        del batch_key  # example g draws from fold_in(key, g) whatever its batch
        return _batch_loss(
            key, predict_fn, batch, indices, weighting=weighting, t_end=t_end, num_steps=num_steps
        )

    indices = np.arange(len(examples), dtype=np.uint32)
    return _over_batches(key, loss, examples, batch_size, "held-out loss", indices)


def histogram_bits_per_dim(train: np.ndarray, test: np.ndarray, max_count: int) -> float:
    """Bits per count of ``test`` under independent per-position histograms of ``train``.

    Position ``i`` (an entry of one example, whatever its shape) gets ``p_i(n) = (c_i(n) + 1) /
    (M + N + 1)``, ``c_i(n)`` the training examples with count ``n`` there (``M`` of them,
    add-one smoothing over ``0..N``); the result is ``-mean_{j, i} log2 p_i(test_{j,i})``. A
    trivial baseline that a trained model's bound should beat.
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
