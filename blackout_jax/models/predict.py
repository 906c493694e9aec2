"""Turn a network into the ``predict_fn(counts, t) -> yhat`` used by the samplers and the bound.

:func:`blackout_jax.sample`, :func:`blackout_jax.impute` and :func:`blackout_jax.nll_bound` only
see ``predict_fn``. The adapter returns a :class:`jax.tree_util.Partial` whose arguments are the
graph definition (static, compared by value) and the state arrays, so a jitted sampler receives
the parameters as arguments: one compilation serves every parameter value (new checkpoints, EMA
weights) of the same network.

By default the network runs in evaluation mode (no dropout). With a ``dropout_key`` it runs
with dropout active, as the reference's generation code does (its network is called with
``train=True``): every example of every call draws its own masks from the key
:func:`example_dropout_keys` gives it, so the draws are reproducible for a key, independent
between the examples of a batch and new at each sampler step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

_FINGERPRINT_SEED = 0x5EED  # fixes the odd multipliers of the state fingerprint


def _apply(graphdef: nnx.GraphDef, states: tuple[nnx.State, ...], counts: Array, t: Array) -> Array:
    model = nnx.merge(graphdef, *states)
    return model(counts, t, train=False)


def example_dropout_keys(key: Array, counts: Array, t: Array) -> Array:
    """One dropout key per example, shape ``(B,)``, for states ``counts (B, ...)`` at ``t (B,)``.

    Example ``i`` gets ``fold_in(fold_in(fold_in(key, i), bits(t_i)), h(n_i))``: its row ``i``,
    the bit pattern of its float32 time (a new key at each step of a sampler grid) and the
    fingerprint ``h(n) = sum_j a_j n_j mod 2**32`` of its state (fixed odd multipliers ``a``),
    so examples in the same row of different sampler chunks get different masks once their
    states differ.
    """
    counts = jnp.asarray(counts)
    batch = counts.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
    multipliers = jax.random.bits(
        jax.random.key(_FINGERPRINT_SEED), counts.shape[1:], jnp.uint32
    ) | jnp.uint32(1)
    flat = counts.astype(jnp.uint32).reshape(batch, -1)
    fingerprints = jnp.sum(flat * multipliers.reshape(-1), axis=1, dtype=jnp.uint32)
    time_bits = jax.lax.bitcast_convert_type(t, jnp.uint32)

    def one(row: Array, bits: Array, fingerprint: Array) -> Array:
        return jax.random.fold_in(
            jax.random.fold_in(jax.random.fold_in(key, row), bits), fingerprint
        )

    return jax.vmap(one)(jnp.arange(batch, dtype=jnp.uint32), time_bits, fingerprints)


def _apply_with_dropout(
    graphdef: nnx.GraphDef,
    states: tuple[nnx.State, ...],
    dropout_key: Array,
    counts: Array,
    t: Array,
) -> Array:
    model = nnx.merge(graphdef, *states)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (counts.shape[0],))

    def one(key: Array, example: Array, time: Array) -> Array:
        return model(example[None], time[None], train=True, dropout_key=key)[0]

    return jax.vmap(one)(example_dropout_keys(dropout_key, counts, t), counts, t)


def make_predict_fn(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    *more_states: nnx.State,
    dropout_key: Array | None = None,
) -> jax.tree_util.Partial:
    """``predict_fn(counts (B, H, W, C), t (B,)) -> yhat`` float32.

    Args:
      graphdef, state: from ``nnx.split(model)`` or ``nnx.split(model, nnx.Param, ...)``; when
        the split gave several states (e.g. parameters and fixed Fourier frequencies), pass
        them all, in the order of the split.
      dropout_key: ``None`` (default): evaluation mode, no dropout. A PRNG key: dropout active
        (``train=True``), example ``i`` of a call with its own key
        :func:`example_dropout_keys` ``(dropout_key, counts, t)[i]``; the key travels as an
        argument of the returned ``Partial`` (no recompilation for a new key).

    The returned function has no side effects; it is a pytree (``jax.tree_util.Partial``)
    holding the state arrays as they are at this call (new variable containers around the same
    immutable arrays, so later in-place updates of a module or state are not seen).
    """
    states = jax.tree.map(lambda leaf: leaf, (state, *more_states))
    if dropout_key is None:
        return jax.tree_util.Partial(_apply, graphdef, states)
    return jax.tree_util.Partial(_apply_with_dropout, graphdef, states, dropout_key)


def make_predict_fn_from_model(
    model: nnx.Module, *, dropout_key: Array | None = None
) -> jax.tree_util.Partial:
    """:func:`make_predict_fn` for a live module: a snapshot, later updates are not seen."""
    graphdef, state = nnx.split(model)
    return make_predict_fn(graphdef, state, dropout_key=dropout_key)
