"""The random streams of a run: every key of the run layer derives from ``seed`` through here.

``stream_key(seed, Stream.X) = fold_in(key(seed), X)``; each command and each part of training
draws from its own stream, so adding draws to one never changes another's.
"""

from __future__ import annotations

import enum

import jax


class Stream(enum.IntEnum):
    """Streams folded into the seed's key."""

    TRAINING = 1  # every draw of the training steps (times, n_t, dropout)
    TRAINING_EVAL = 2  # the evaluations during training (held-out loss, bound, sample grids)
    SAMPLE = 3  # --mode=sample (and the samples of --mode=evaluate)
    EVALUATE_COMMAND = 4  # the bound of --mode=evaluate
    IMPUTE = 5  # --mode=impute
    SAMPLING_DROPOUT = 6  # the network's dropout masks when sampling.dropout is on
    GRID = 7  # the forward draws of the optimised grid's error measurements
    UNTHIN = 8  # --mode=unthin


DROPOUT_STREAM = 0x64726F70
"""Folded into a training step's key for the dropout masks."""


def stream_key(seed: int, stream: Stream) -> jax.Array:
    """``fold_in(key(seed), stream)``: the base key of one stream."""
    return jax.random.fold_in(jax.random.key(seed), int(stream))


LABEL_DROPOUT_STREAM = 0x6C61626C
"""Folded into a training step's key for the label dropout of conditional models."""


DISTILL_STREAM = 0x64697374
"""Folded into ``key(seed)`` for every draw of ``--mode=distill`` (split in three: the
student's initialisation, the teacher's trajectories, the minibatches)."""
