"""Turn a network into the ``predict_fn(counts, t) -> yhat`` used by the samplers and the bound.

:func:`blackout_jax.sample`, :func:`blackout_jax.impute` and :func:`blackout_jax.nll_bound` only
see ``predict_fn``. :func:`make_predict_fn` returns a :class:`jax.tree_util.Partial` whose
arguments are the graph definition (static, compared by value), the state arrays and the
optional dropout key, labels and guidance scale, so a jitted sampler receives them as
arguments: one compilation serves every parameter value (new checkpoints, EMA weights), every
key and every batch of labels of the same network. Whatever the options, the result is called
as ``predict_fn(counts (B, ...), t (B,)) -> yhat (B, ...)``; nothing in it assumes an image.

By default the network runs in evaluation mode (no dropout). With a ``dropout_key`` it runs
with dropout active, as the reference's generation code does (its network is called with
``train=True``): every example of every call draws its own masks from the key
:func:`example_dropout_keys` gives it, so the draws are reproducible for a key, independent
between the examples of a batch and new at each sampler step.

**Class-conditional networks** (``model.num_classes > 0``). With ``labels=y`` the network
predicts ``yhat_c = E[n_0 - n_t | n_t, y]``; without labels it sees the null label and predicts
``yhat_null ~ E[n_0 - n_t | n_t]``. ``guidance_scale=w > 0`` gives classifier-free guidance
(:func:`guided_prediction`), ``yhat_w = exp((1 + w) log yhat_c - w log yhat_null)``, from one
network call on the doubled batch; docs/guidance.md says why in log space and what it does to
the meaning of the loss and the bound (conditional likelihoods use ``w = 0``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

_FINGERPRINT_SEED = 0x5EED  # fixes the odd multipliers of the state fingerprint


def _network(
    model: nnx.Module,
    dropout_key: Array | None,
    counts: Array,
    t: Array,
    labels: Array | None,
) -> Array:
    """The network on a batch ``(B, ...)`` (with labels ``(B,)`` or none), in evaluation mode
    or, with a ``dropout_key``, with dropout masks of :func:`example_dropout_keys` per example."""
    labelled = () if labels is None else (jnp.asarray(labels),)
    if dropout_key is None:
        return model(counts, t, *labelled, train=False)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (counts.shape[0],))

    def one(key: Array, example: Array, time: Array, *label: Array) -> Array:
        rows = (example[None], time[None], *(row[None] for row in label))
        return model(*rows, train=True, dropout_key=key)[0]

    keys = example_dropout_keys(dropout_key, counts, t)
    return jax.vmap(one)(keys, counts, t, *labelled)


def _apply(
    graphdef: nnx.GraphDef,
    states: tuple[nnx.State, ...],
    dropout_key: Array | None,
    labels: Array | None,
    guidance_scale: Array | None,
    counts: Array,
    t: Array,
) -> Array:
    """``yhat (B, ...)`` of the merged network for ``counts (B, ...)`` at ``t (B,)``: one call
    (labels or the null label), or with a ``guidance_scale`` ``min(N, yhat_w)``."""
    model = nnx.merge(graphdef, *states)
    if guidance_scale is None:
        return _network(model, dropout_key, counts, t, labels)
    null_label, max_count = guidance_attributes(model)
    guided = guided_prediction(
        functools.partial(_network, model, dropout_key),
        counts,
        t,
        labels,
        guidance_scale,
        null_label=null_label,
    )
    return jnp.minimum(guided, float(max_count))


def guidance_attributes(model: nnx.Module) -> tuple[int, int]:
    """``(model.config.null_label, model.max_count)``: what guidance needs of a network.

    Any module whose ``__call__(counts, t, *labels, train=False)`` returns ``yhat`` serves
    :func:`make_predict_fn` without guidance; classifier-free guidance also needs the label
    of "no class" and the largest count ``N`` (the cap of the guided prediction).

    Raises:
      AttributeError: the module lacks one of them; the message names it.
    """
    null_label = getattr(getattr(model, "config", None), "null_label", None)
    if null_label is None:
        raise AttributeError(
            f"guidance_scale > 0 needs the network's null label, model.config.null_label, "
            f"which {type(model).__name__} does not have (a class-conditional network "
            f"such as NCSNpp with num_classes > 0 has it)"
        )
    max_count = getattr(model, "max_count", None)
    if max_count is None:
        raise AttributeError(
            f"guidance_scale > 0 needs the network's largest count, model.max_count (the cap "
            f"of the guided prediction), which {type(model).__name__} does not have"
        )
    return int(null_label), int(max_count)


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


def make_predict_fn(
    graphdef: nnx.GraphDef,
    *states: nnx.State,
    dropout_key: Array | None = None,
    labels: Array | None = None,
    guidance_scale: float | None = None,
) -> jax.tree_util.Partial:
    """``predict_fn(counts (B, ...), t (B,)) -> yhat (B, ...)`` float32, a ``Partial``.

    Args:
      graphdef, states: from ``nnx.split(model)`` or ``nnx.split(model, nnx.Param, ...)``; when
        the split gave several states (e.g. parameters and fixed Fourier frequencies), pass
        them all, in the order of the split.
      dropout_key: ``None`` (default): evaluation mode, no dropout. A PRNG key: dropout active
        (``train=True``), example ``i`` of a call with its own key
        :func:`example_dropout_keys` ``(dropout_key, counts, t)[i]``.
      labels: for a conditional network, ``(B,)`` class labels of the examples; ``None``: no
        labels (the null label of a conditional network).
      guidance_scale: ``None`` or ``0``: no guidance, one network call (``yhat_c``, or without
        labels ``yhat_null``). ``w > 0`` (needs ``labels``): ``yhat_w = min(N, exp((1 + w)
        log yhat_c - w log yhat_null))`` (:func:`guided_prediction`, one call on the doubled
        batch; ``N`` = max count, the most any count can still grow, which keeps large ``w``
        finite).

    The key, the labels and ``w`` are traced arguments of the returned ``Partial`` (no new
    compilation for another key, other labels of the same shape or another ``w > 0``). It has
    no side effects and holds the state arrays as they are at this call (new variable
    containers around the same immutable arrays, so later in-place updates of a module or
    state are not seen).

    Any NNX module whose ``__call__(counts, t, *labels, train=False)`` returns ``yhat`` is
    served: without guidance nothing else of the module is read (with a ``dropout_key`` it is
    called as ``model(..., train=True, dropout_key=key)``). Guidance (``guidance_scale > 0``)
    also reads ``model.config.null_label`` and ``model.max_count``
    (:func:`guidance_attributes`).

    Raises:
      ValueError: ``guidance_scale`` negative, or positive without ``labels``.
      AttributeError: ``guidance_scale > 0`` for a module without ``config.null_label`` or
        ``max_count``; the message names the attribute.
    """
    if guidance_scale is not None and (guidance_scale < 0 or (guidance_scale and labels is None)):
        raise ValueError(
            f"guidance_scale must be >= 0 and needs labels when > 0, got {guidance_scale} "
            f"with {'no ' if labels is None else ''}labels"
        )
    if guidance_scale:
        guidance_attributes(nnx.merge(graphdef, *states))
    return jax.tree_util.Partial(
        _apply,
        graphdef,
        jax.tree.map(lambda leaf: leaf, states),
        dropout_key,
        None if labels is None else jnp.asarray(labels, jnp.int32),
        jnp.asarray(guidance_scale, jnp.float32) if guidance_scale else None,
    )
