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

**Class-conditional networks** (``model.num_classes > 0``). ``make_predict_fn(...,
labels=y)`` predicts ``yhat_c = E[n_0 - n_t | n_t, y]``; without labels the network sees the
null label and predicts ``yhat_null ~ E[n_0 - n_t | n_t]``. :func:`make_guided_predict_fn` gives
classifier-free guidance with scale ``w >= 0`` (:func:`guided_prediction`):

    yhat_w = exp((1 + w) log yhat_c - w log yhat_null) = yhat_c^(1 + w) / yhat_null^w,

computed from ONE network call on the doubled batch ``[n_t; n_t]`` with labels
``[y; null]``. Why in log space: the birth rate is ``lambda = yhat p_t / (1 - p_t)``, so the
same combination of the rates, ``lambda_c^(1 + w) / lambda_null^w``, is exactly ``yhat_w p_t /
(1 - p_t)``: guidance acts on the reverse-time rates geometrically (as guidance of
continuous-time discrete diffusions does, Nisonoff et al. 2024), which keeps every rate
positive for any ``w``, whereas a linear combination ``(1 + w) yhat_c - w yhat_null`` can turn
negative. What it does to the loss's meaning: the Poisson loss is minimised by a conditional
mean, so ``yhat_c`` and ``yhat_null`` are the model's conditional means of the missing counts
given the class and given no class; ``yhat_w`` for ``w > 0`` is neither: it is not the
minimiser of the loss for any data distribution the model was trained on, the samplers driven by
it no longer sample the model's ``p(n_0 | y)`` (they favour states where the class is more
likely than without it), and :func:`blackout_jax.nll_bound` evaluated with it is no likelihood
bound. Conditional likelihoods use ``w = 0`` (:func:`make_predict_fn` with labels).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

_FINGERPRINT_SEED = 0x5EED  # fixes the odd multipliers of the state fingerprint


def _apply(graphdef: nnx.GraphDef, states: tuple[nnx.State, ...], counts: Array, t: Array) -> Array:
    model = nnx.merge(graphdef, *states)
    return model(counts, t, train=False)


def _call(
    model: nnx.Module,
    dropout_key: Array | None,
    counts: Array,
    t: Array,
    labels: Array | None = None,
) -> Array:
    """The network on a batch (with labels or none), in evaluation mode or, with a
    ``dropout_key``, with dropout masks of :func:`example_dropout_keys` per example."""
    labelled = () if labels is None else (jnp.asarray(labels),)  # unconditional: as before
    if dropout_key is None:
        return model(counts, t, *labelled, train=False)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (counts.shape[0],))

    def one(key: Array, example: Array, time: Array, *label: Array) -> Array:
        rows = (example[None], time[None], *(row[None] for row in label))
        return model(*rows, train=True, dropout_key=key)[0]

    keys = example_dropout_keys(dropout_key, counts, t)
    return jax.vmap(one)(keys, counts, t, *labelled)


def _apply_labelled(
    graphdef: nnx.GraphDef,
    states: tuple[nnx.State, ...],
    dropout_key: Array | None,
    labels: Array,
    counts: Array,
    t: Array,
) -> Array:
    return _call(nnx.merge(graphdef, *states), dropout_key, counts, t, labels)


def guided_prediction(
    conditional_fn: Callable[[Array, Array, Array], Array],
    counts: Array,
    t: Array,
    labels: Array,
    guidance_scale: Array | float,
    *,
    null_label: int,
) -> Array:
    """Classifier-free guidance: ``exp((1 + w) log yhat_c - w log yhat_null)``, float32.

    Args:
      conditional_fn: ``(counts (2B, ...), t (2B,), labels (2B,)) -> yhat (2B, ...)``, called
        ONCE, on the batch concatenated with itself: rows ``0..B-1`` with ``labels`` give
        ``yhat_c``, rows ``B..2B-1`` with ``null_label`` give ``yhat_null``.
      counts: ``(B, ...)`` states; t: ``(B,)`` times (or a scalar); labels: ``(B,)`` ints.
      guidance_scale: ``w >= 0`` (``w = 0``: ``yhat_c``, up to float rounding).
      null_label: the label of "no class".

    Returns:
      ``(B, ...)``. Predictions below the smallest normal float32 count as that value in the
      logarithms, so zeros give finite results.
    """
    counts = jnp.asarray(counts)
    batch = counts.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
    labels = jnp.asarray(labels, jnp.int32)
    both = conditional_fn(
        jnp.concatenate([counts, counts]),
        jnp.concatenate([t, t]),
        jnp.concatenate([labels, jnp.full((batch,), null_label, jnp.int32)]),
    )
    tiny = jnp.finfo(jnp.float32).tiny
    log_conditional = jnp.log(jnp.maximum(both[:batch].astype(jnp.float32), tiny))
    log_null = jnp.log(jnp.maximum(both[batch:].astype(jnp.float32), tiny))
    w = jnp.asarray(guidance_scale, jnp.float32)
    return jnp.exp((1.0 + w) * log_conditional - w * log_null)


def _apply_guided(
    graphdef: nnx.GraphDef,
    states: tuple[nnx.State, ...],
    dropout_key: Array | None,
    labels: Array,
    guidance_scale: Array,
    counts: Array,
    t: Array,
) -> Array:
    model = nnx.merge(graphdef, *states)
    guided = guided_prediction(
        functools.partial(_call, model, dropout_key),
        counts,
        t,
        labels,
        guidance_scale,
        null_label=model.config.null_label,
    )
    return jnp.minimum(guided, float(model.max_count))


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
    return _call(nnx.merge(graphdef, *states), dropout_key, counts, t)


def make_predict_fn(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    *more_states: nnx.State,
    dropout_key: Array | None = None,
    labels: Array | None = None,
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
      labels: for a conditional network, ``(B,)`` class labels of the examples (a traced
        argument of the ``Partial`` too); ``None``: no labels (the null label of a
        conditional network).

    The returned function has no side effects; it is a pytree (``jax.tree_util.Partial``)
    holding the state arrays as they are at this call (new variable containers around the same
    immutable arrays, so later in-place updates of a module or state are not seen).
    """
    states = jax.tree.map(lambda leaf: leaf, (state, *more_states))
    if labels is not None:
        return jax.tree_util.Partial(
            _apply_labelled, graphdef, states, dropout_key, jnp.asarray(labels, jnp.int32)
        )
    if dropout_key is None:
        return jax.tree_util.Partial(_apply, graphdef, states)
    return jax.tree_util.Partial(_apply_with_dropout, graphdef, states, dropout_key)


def make_guided_predict_fn(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    *more_states: nnx.State,
    labels: Array,
    guidance_scale: float,
    dropout_key: Array | None = None,
) -> jax.tree_util.Partial:
    """The guided ``predict_fn(counts (B, H, W, C), t (B,)) -> yhat_w`` of a conditional network.

    ``yhat_w = min(N, exp((1 + w) log yhat_c - w log yhat_null))`` (:func:`guided_prediction`,
    one network call on the doubled batch; ``N`` = max count, the most any count can still
    grow, which keeps large ``w`` finite), with ``labels`` ``(B,)`` for ``yhat_c``. ``labels``
    and ``w = guidance_scale`` are traced arguments of the returned ``Partial``: chunks with
    other labels or another scale reuse one compilation. The other arguments are those of
    :func:`make_predict_fn`.
    """
    states = jax.tree.map(lambda leaf: leaf, (state, *more_states))
    return jax.tree_util.Partial(
        _apply_guided,
        graphdef,
        states,
        dropout_key,
        jnp.asarray(labels, jnp.int32),
        jnp.asarray(guidance_scale, jnp.float32),
    )


def make_label_predict_fn(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    *more_states: nnx.State,
    guidance_scale: float = 0.0,
    dropout_key: Array | None = None,
) -> Callable[[Array], jax.tree_util.Partial]:
    """``labels (B,) -> predict_fn`` of a conditional network with guidance scale ``w``.

    ``w = 0``: :func:`make_predict_fn` with the labels (one network call on the batch, the
    conditional prediction exactly); ``w > 0``: :func:`make_guided_predict_fn`. The samplers'
    chunk loop calls it with each chunk's labels.
    """

    def for_labels(labels: Array) -> jax.tree_util.Partial:
        if guidance_scale == 0:
            return make_predict_fn(
                graphdef, state, *more_states, dropout_key=dropout_key, labels=labels
            )
        return make_guided_predict_fn(
            graphdef,
            state,
            *more_states,
            labels=labels,
            guidance_scale=guidance_scale,
            dropout_key=dropout_key,
        )

    return for_labels


def make_predict_fn_from_model(
    model: nnx.Module, *, dropout_key: Array | None = None
) -> jax.tree_util.Partial:
    """:func:`make_predict_fn` for a live module: a snapshot, later updates are not seen."""
    graphdef, state = nnx.split(model)
    return make_predict_fn(graphdef, state, dropout_key=dropout_key)
