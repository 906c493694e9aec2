"""The training step: the train state, the optimiser and one pure, jit-compiled update.

One training step (:func:`make_train_step`) is a pure function compiled once with ``jax.jit``
over a device mesh: the global batch is split over the devices, parameters, optimiser state and
EMA are replicated. Parameters, optimiser moments and EMA are held as one vector per dtype
(:class:`~blackout_jax.run.flat_params.FlatLayout`), so Adam, clipping, the EMA and the
non-finite guard cost a handful of kernels whatever the number of parameter arrays; the step
unravels the parameters for the network and ravels its gradient once. At step ``s`` with base
key ``k`` and global batch size ``B``:

* ``step_key = fold_in(k, s)``; example ``i`` of the batch (global index ``g = s B + i``) draws
  its time, weight and ``n_t`` from ``fold_in(step_key, g)`` (:func:`blackout_jax.example_keys`);
  dropout uses ``fold_in(step_key, DROPOUT_STREAM)``; a conditional model's batch is
  ``(counts, labels)`` and label ``i`` is replaced by the null label where
  ``bernoulli(fold_in(step_key, LABEL_DROPOUT_STREAM), training.label_dropout, (B,))[i]``.
  With the partitionable threefry generator
  (JAX's default) no draw depends on how the batch is split, so N steps give the same
  parameters on 1 or 8 devices, up to float rounding of the gradient sum.
* loss = mean over the batch of :func:`blackout_jax.training_loss`; the optimiser is
  :func:`make_optimizer` wrapped in ``optax.apply_if_finite``: an update whose gradient is not
  finite is skipped (parameters and optimiser state stay, the EMA too) and counted in the
  optimiser state (:class:`TrainState` keeps the longest run of them).
* EMA: ``ema <- d ema + (1 - d) params`` with ``d = min(ema_decay, (1 + s) / (10 + s))``, so
  the average forgets the random initialisation quickly in short runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from blackout_jax import losses
from blackout_jax.data import DataShape
from blackout_jax.run import network
from blackout_jax.run.config import ExperimentConfig, TrainingConfig
from blackout_jax.run.flat_params import FlatLayout
from blackout_jax.run.streams import DROPOUT_STREAM, LABEL_DROPOUT_STREAM, Stream, stream_key

# optax.apply_if_finite applies updates anyway after this many skipped in a row; training stops
# long before (training.max_consecutive_nonfinite), so it never does.
_NEVER_APPLY_NONFINITE = 2**31 - 1


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; replicated on every device).

    Attributes:
      step: int32 scalar, training steps taken (skipped updates included).
      params: network parameters as ``{dtype name: vector}`` (``layout.ravel`` of the
        ``nnx.State`` of ``nnx.Param``; :meth:`network_params` gives the tree back).
      opt_state: state of ``optax.apply_if_finite(make_optimizer(...))`` on those vectors; it
        counts the skipped updates (``notfinite_count`` in a row, ``total_notfinite``).
      ema_params: exponential moving average of ``params``, the same vectors.
      rng: uint32 key data of the base key of training draws.
      longest_nonfinite: int32, the longest run of skipped updates so far.
      layout: where each parameter array lives in the vectors (static, not an array).
    """

    step: jax.Array
    params: dict[str, jax.Array]
    opt_state: optax.ApplyIfFiniteState
    ema_params: dict[str, jax.Array]
    rng: jax.Array
    longest_nonfinite: jax.Array
    layout: FlatLayout = flax.struct.field(pytree_node=False)

    @property
    def consecutive_nonfinite(self) -> jax.Array:
        """Skipped updates in a row up to now."""
        return self.opt_state.notfinite_count

    @property
    def total_nonfinite(self) -> jax.Array:
        """Skipped updates since the start of training."""
        return self.opt_state.total_notfinite

    @classmethod
    def create(
        cls, params: Any, optimizer: optax.GradientTransformation, rng: jax.Array
    ) -> TrainState:
        """The state at step 0 for the network parameters ``params`` (a pytree), with the
        base key data ``rng``."""
        layout = FlatLayout.of(params)
        vectors = layout.ravel(params)
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=vectors,
            opt_state=optimizer.init(vectors),
            ema_params=jax.tree.map(jnp.copy, vectors),
            rng=rng,
            longest_nonfinite=jnp.zeros((), jnp.int32),
            layout=layout,
        )

    def network_params(self, vectors: dict[str, jax.Array] | None = None) -> Any:
        """``vectors`` (default: :attr:`params`; e.g. :attr:`ema_params`) as the network's
        ``nnx.State``."""
        return self.layout.unravel(self.params if vectors is None else vectors)

    def as_dict(self) -> dict[str, Any]:
        """The array fields as a dict (the checkpoint's ``state`` item)."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "layout"
        }


def learning_rate_schedule(learning_rate: float, warmup_steps: int) -> optax.Schedule:
    """``lr * min(1, (u + 1) / warmup_steps)`` at update ``u`` (constant ``lr`` if no warm-up)."""
    if warmup_steps <= 0:
        return optax.constant_schedule(learning_rate)

    def rate(count: jax.Array) -> jax.Array:
        fraction = jnp.minimum(1.0, (count + 1.0) / warmup_steps)
        return learning_rate * fraction

    return rate


def make_optimizer(training: TrainingConfig) -> optax.GradientTransformation:
    """Gradient clipping to global norm (if ``grad_clip_norm > 0``), then Adam with warm-up."""
    rate = learning_rate_schedule(training.learning_rate, training.warmup_steps)
    adam = optax.adam(learning_rate=rate, b1=0.9, b2=0.999, eps=1e-8)
    if training.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(training.grad_clip_norm), adam)
    return adam


def skipping_nonfinite(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer`` that skips (and counts) every update whose gradient is not finite."""
    return optax.apply_if_finite(optimizer, max_consecutive_errors=_NEVER_APPLY_NONFINITE)


def ema_decay_at(step: jax.Array, ema_decay: float) -> jax.Array:
    """``min(ema_decay, (1 + s) / (10 + s))``: the EMA decay used at update step ``s``."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    *,
    weighting: str,
    t_end: float,
    num_steps: int,
    global_batch_size: int,
    ema_decay: float,
    learning_rate: Callable[[jax.Array], jax.Array],
    batch_sharding: jax.sharding.Sharding | None = None,
    label_dropout: float = 0.0,
    null_label: int = 0,
) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure training step ``(state, rest, batch) -> (new_state, metrics)``; jit it.

    Args:
      graphdef: the network's graph definition (``nnx.split``); ``rest`` holds its
        non-parameter variables (passed through unchanged).
      optimizer: an ``optax.apply_if_finite`` transformation (see :func:`skipping_nonfinite`).
      weighting, t_end, num_steps: the loss (:func:`blackout_jax.training_loss`).
      global_batch_size: ``B``; example ``i`` of step ``s`` has global index ``s B + i``.
      ema_decay: the EMA's decay cap (see :func:`ema_decay_at`).
      learning_rate: the schedule, for the logged ``learning_rate`` metric.
      batch_sharding: the batch's sharding, to lay out the example indices the same way.
      label_dropout, null_label: for a conditional network (``batch = (counts, labels)``), the
        probability that a label becomes ``null_label`` (``model.num_classes``).

    The metrics are float32 scalars: ``loss`` (batch mean), ``grad_norm`` (before clipping),
    ``learning_rate`` and ``finite`` (1.0 if the update was applied).
    """

    def train_step(
        state: TrainState, rest: Any, batch: Any
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        batch, labels = batch if isinstance(batch, tuple) else (batch, None)
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        example_keys = _example_keys(step_key, state.step, global_batch_size, batch_sharding)
        dropout_key = jax.random.fold_in(step_key, DROPOUT_STREAM)
        if labels is not None and label_dropout > 0:
            label_key = jax.random.fold_in(step_key, LABEL_DROPOUT_STREAM)
            dropped = jax.random.bernoulli(label_key, label_dropout, labels.shape)
            labels = jnp.where(dropped, null_label, labels)

        def loss_fn(params: Any) -> jax.Array:
            model = nnx.merge(graphdef, params, rest)

            def predict(counts: jax.Array, t: jax.Array) -> jax.Array:
                labelled = () if labels is None else (labels,)  # unconditional: as before
                return model(counts, t, *labelled, train=True, dropout_key=dropout_key)

            per_example = losses.training_loss(
                example_keys, predict, batch, weighting=weighting, t_end=t_end, num_steps=num_steps
            )
            return jnp.mean(per_example)

        loss, grads = jax.value_and_grad(loss_fn)(state.network_params())
        grads = state.layout.ravel(grads)  # one concatenation per dtype
        new_state = _apply_update(state, grads, optimizer, ema_decay)
        finite = new_state.opt_state.last_finite
        metrics = {
            "loss": loss.astype(jnp.float32),
            "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
            "learning_rate": jnp.asarray(
                learning_rate(state.step - state.total_nonfinite), jnp.float32
            ),
            "finite": (finite & jnp.isfinite(loss)).astype(jnp.float32),
        }
        return new_state, metrics

    return train_step


def _example_keys(
    step_key: jax.Array,
    step: jax.Array,
    global_batch_size: int,
    batch_sharding: jax.sharding.Sharding | None,
) -> jax.Array:
    """The keys of the step's examples ``(B,)``: example ``i`` of step ``s`` is keyed on its
    global index ``s B + i`` (:func:`blackout_jax.losses.example_keys`), laid out as the batch."""
    first_index = step.astype(jnp.uint32) * jnp.uint32(global_batch_size)
    indices = first_index + jnp.arange(global_batch_size, dtype=jnp.uint32)
    if batch_sharding is not None:
        indices = jax.lax.with_sharding_constraint(indices, batch_sharding)
    return losses.example_keys(step_key, indices)


def _apply_update(
    state: TrainState, grads: Any, optimizer: optax.GradientTransformation, ema_decay: float
) -> TrainState:
    """The state after one update: parameters moved by ``optimizer`` (zero updates when the
    gradients are not finite), the EMA ``decay ema + (1 - decay) params`` where the update was
    applied, the step and the longest run of skipped updates counted."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = opt_state.last_finite
    decay = ema_decay_at(state.step, ema_decay)
    ema_params = jax.tree.map(
        lambda ema, p: jnp.where(finite, decay * ema + (1.0 - decay) * p, ema),
        state.ema_params,
        params,
    )
    return state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        ema_params=ema_params,
        longest_nonfinite=jnp.maximum(state.longest_nonfinite, opt_state.notfinite_count),
    )


def tree_layout_target(
    template: dict[str, Any], layout: FlatLayout, optimizer: optax.GradientTransformation
) -> dict[str, Any]:
    """The abstract ``state`` item of a checkpoint written before the flat layout: ``template``
    (the abstract ``TrainState.as_dict()``) with parameters, optimiser state and EMA as the
    network's pytrees, on the template's sharding."""
    sharding = template["step"].sharding
    params = layout.abstract_tree(sharding)
    opt_state = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        jax.eval_shape(optimizer.init, params),
    )
    return {**template, "params": params, "opt_state": opt_state, "ema_params": params}


def from_tree_layout(
    stored: dict[str, Any], template: dict[str, Any], layout: FlatLayout
) -> dict[str, Any]:
    """A checkpoint's ``state`` item of the tree layout (:func:`tree_layout_target`) in the flat
    layout of ``template`` (the abstract ``TrainState.as_dict()``): every pytree of parameters,
    optimiser moments included, ravelled; counters and keys as they are. Jitted onto the
    template's shardings."""

    def is_vectors(node: Any) -> bool:
        return isinstance(node, dict) and node.keys() == layout.sizes.keys()

    def migrate(stored: dict[str, Any]) -> dict[str, Any]:
        return jax.tree.map(
            lambda new, old: layout.ravel(old) if is_vectors(new) else old,
            template,
            stored,
            is_leaf=is_vectors,
        )

    shardings = jax.tree.map(lambda leaf: leaf.sharding, template)
    return jax.jit(migrate, out_shardings=shardings)(stored)


def jit_train_step(
    config: ExperimentConfig,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    replicated: jax.sharding.Sharding,
    batch_sharding: jax.sharding.Sharding,
) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """:func:`make_train_step` of ``config`` jitted over the mesh as training runs it: state and
    network variables replicated, the batch split, the old state's buffers donated."""
    training = config.training
    step = make_train_step(
        graphdef,
        optimizer,
        weighting=config.diffusion.weighting,
        t_end=config.diffusion.t_end,
        num_steps=config.diffusion.num_steps,
        global_batch_size=training.batch_size,
        ema_decay=training.ema_decay,
        learning_rate=learning_rate_schedule(training.learning_rate, training.warmup_steps),
        batch_sharding=batch_sharding,
        label_dropout=training.label_dropout,
        null_label=config.model.null_label,
    )
    return jax.jit(
        step,
        in_shardings=(replicated, replicated, batch_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )


def init_train_state(
    config: ExperimentConfig,
    shape: DataShape,
    optimizer: optax.GradientTransformation,
    sharding: jax.sharding.Sharding,
    feature_moments: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[nnx.GraphDef, TrainState, Any]:
    """Build the network for examples of ``shape`` and a fresh train state, placed on
    ``sharding`` (replicated); ``feature_moments`` as :func:`blackout_jax.run.network.
    model_factory` takes them.

    Returns:
      ``(graphdef, state, rest)``: the network's graph definition, the :class:`TrainState` at
      step 0, and the network's non-parameter variables.
    """
    factory = network.model_factory(config, shape, feature_moments)
    graphdef, _, _ = nnx.split(nnx.eval_shape(factory), nnx.Param, ...)
    rng = jax.random.key_data(stream_key(config.seed, Stream.TRAINING))

    def build() -> tuple[TrainState, Any]:
        _, params, rest = nnx.split(factory(), nnx.Param, ...)
        return TrainState.create(params, optimizer, rng), rest

    state, rest = jax.jit(build, out_shardings=sharding)()
    return graphdef, state, rest
