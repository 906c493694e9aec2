"""Turn a network into the ``predict_fn(counts, t) -> yhat`` used by the samplers and the bound.

:func:`blackout_jax.sample`, :func:`blackout_jax.impute` and :func:`blackout_jax.nll_bound` only
see ``predict_fn``. The adapter returns a :class:`jax.tree_util.Partial` whose arguments are the
graph definition (static, compared by value) and the state arrays, so a jitted sampler receives
the parameters as arguments: one compilation serves every parameter value (new checkpoints, EMA
weights) of the same network.
"""

from __future__ import annotations

import jax
from flax import nnx

Array = jax.Array


def _apply(graphdef: nnx.GraphDef, states: tuple[nnx.State, ...], counts: Array, t: Array) -> Array:
    model = nnx.merge(graphdef, *states)
    return model(counts, t, train=False)


def make_predict_fn(
    graphdef: nnx.GraphDef, state: nnx.State, *more_states: nnx.State
) -> jax.tree_util.Partial:
    """``predict_fn(counts (B, H, W, C), t (B,)) -> yhat`` float32, in evaluation mode.

    Args:
      graphdef, state: from ``nnx.split(model)`` or ``nnx.split(model, nnx.Param, ...)``; when
        the split gave several states (e.g. parameters and fixed Fourier frequencies), pass
        them all, in the order of the split.

    The returned function applies no dropout and has no side effects; it is a pytree
    (``jax.tree_util.Partial``) holding the state arrays as they are at this call (new
    variable containers around the same immutable arrays, so later in-place updates of a
    module or state are not seen).
    """
    states = jax.tree.map(lambda leaf: leaf, (state, *more_states))
    return jax.tree_util.Partial(_apply, graphdef, states)


def make_predict_fn_from_model(model: nnx.Module) -> jax.tree_util.Partial:
    """:func:`make_predict_fn` for a live module: a snapshot, later updates are not seen."""
    graphdef, state = nnx.split(model)
    return make_predict_fn(graphdef, state)
