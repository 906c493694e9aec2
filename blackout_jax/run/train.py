"""The training loop: math (losses, bound, sampler) + network + optax + data + orbax.

:func:`train_and_evaluate` trains the network of ``config.model`` on the data of
``config.data`` and leaves in ``workdir``: ``checkpoints/``, ``metrics.jsonl``,
``tensorboard/``, ``samples/grid_<step>.png`` at each evaluation, ``loss_curve.png``,
``config.json`` and ``metadata.json``. Running it again on the same folder resumes from the
latest checkpoint. It reads like the Flax examples: restore or initialise, then a loop of
:meth:`Trainer.step` / :meth:`Trainer.log` / :meth:`Trainer.evaluate` / :meth:`Trainer.save`.

One training step (:func:`make_train_step`) is a pure function compiled once with ``jax.jit``
over a device mesh: the global batch is split over the devices, parameters, optimiser state and
EMA are replicated. At step ``s`` with base key ``k`` and global batch size ``B``:

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
  optimiser state; after ``training.max_consecutive_nonfinite`` skipped updates in a row training
  stops with :class:`NonFiniteTrainingError`, keeping the last checkpoint written before the run
  went bad.
* EMA: ``ema <- d ema + (1 - d) params`` with ``d = min(ema_decay, (1 + s) / (10 + s))``, so
  the average forgets the random initialisation quickly in short runs.

Nothing crosses hosts or waits for the device on a step where nothing is logged, evaluated or
saved: the metrics of a log period are fetched together at its end, and a multi-process job
checks for a shutdown signal only at those boundaries (one process alone checks every step).

Evaluation (every ``training.eval_every`` steps and at the end) uses the EMA parameters: the
held-out loss (the training loss on the fixed held-out examples with a fixed key), the
likelihood bound in bits/dim (:func:`blackout_jax.run.held_out.bound_over`) and a PNG grid of
samples (:func:`blackout_jax.run.generate.generate_samples`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from blackout_jax import likelihood, losses, models
from blackout_jax.data import CountDataset, DataShape
from blackout_jax.run import (
    checkpointing,
    folder,
    generate,
    held_out,
    network,
    parallel,
    reporting,
)
from blackout_jax.run import config as config_lib
from blackout_jax.run.config import ExperimentConfig, TrainingConfig
from blackout_jax.run.lock import RunFolderLock
from blackout_jax.run.streams import DROPOUT_STREAM, LABEL_DROPOUT_STREAM, Stream, stream_key

# optax.apply_if_finite applies updates anyway after this many skipped in a row; training stops
# long before (training.max_consecutive_nonfinite), so it never does.
_NEVER_APPLY_NONFINITE = 2**31 - 1


class NonFiniteTrainingError(RuntimeError):
    """Training stopped after too many non-finite updates in a row."""


class DiskFullError(OSError):
    """The disk of the run folder is full; the message names what was being written."""


def _no_space_error(error: BaseException) -> OSError | None:
    """The ``ENOSPC`` error behind ``error`` (its causes and contexts included), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return current
        current = current.__cause__ or current.__context__
    return None


class _DropDiskFullTracebacks(logging.Filter):
    """Drops the log records (with tracebacks) of orbax's background threads whose error is a
    full disk: :func:`train_and_evaluate` reports that in one line naming the file."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or _no_space_error(error) is None


@contextlib.contextmanager
def _disk_full_reported_once() -> Any:
    logger, log_filter = logging.getLogger("absl"), _DropDiskFullTracebacks()
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


class IncompatibleRunError(ValueError):
    """The run folder was trained with settings that cannot change on resume."""


def check_resumable(config: ExperimentConfig, workdir: str) -> None:
    """Compare ``config`` with the run folder's stored ``config.json`` before any restore.

    Raises:
      IncompatibleRunError: one line naming every changed field that matters
        (``model.nf: 8 -> 16``) and what may change on resume.
    """
    if not folder.has_checkpoints(workdir):
        return
    try:
        stored = folder.read_stored_config(workdir)
    except ValueError:
        return  # an unreadable copy: the checkpoints' own metadata still guards the restore
    if stored is None:
        return
    changed = config_lib.changed_fields(
        stored, config.to_dict(), allowed=config_lib.RESUMABLE_FIELDS
    )
    if changed:
        listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in changed)
        raise IncompatibleRunError(
            f"{workdir} was trained with other settings ({listed}): use a new "
            "--workdir, or change only what may change on resume ("
            f"{', '.join(config_lib.RESUMABLE_FIELDS)})"
        )


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; replicated on every device).

    Attributes:
      step: int32 scalar, training steps taken (skipped updates included).
      params: network parameters (``nnx.State`` of ``nnx.Param``), float32.
      opt_state: state of ``optax.apply_if_finite(make_optimizer(...))``; it counts the skipped
        updates (``notfinite_count`` in a row, ``total_notfinite``).
      ema_params: exponential moving average of ``params``.
      rng: uint32 key data of the base key of training draws.
      longest_nonfinite: int32, the longest run of skipped updates so far.
    """

    step: jax.Array
    params: Any
    opt_state: optax.ApplyIfFiniteState
    ema_params: Any
    rng: jax.Array
    longest_nonfinite: jax.Array

    @property
    def consecutive_nonfinite(self) -> jax.Array:
        """Skipped updates in a row up to now."""
        return self.opt_state.notfinite_count

    @property
    def total_nonfinite(self) -> jax.Array:
        """Skipped updates since the start of training."""
        return self.opt_state.total_notfinite

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict (the checkpoint layout)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train_and_evaluate` did.

    Attributes:
      step: the step training ended at.
      stopped_by_signal: a SIGTERM/SIGINT ended training early (after saving).
      last_eval: the metrics of the last evaluation of this call (empty if none ran).
    """

    step: int
    stopped_by_signal: bool
    last_eval: dict[str, float]


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
        base_key = jax.random.wrap_key_data(state.rng)
        step_key = jax.random.fold_in(base_key, state.step)
        first_index = state.step.astype(jnp.uint32) * jnp.uint32(global_batch_size)
        indices = first_index + jnp.arange(global_batch_size, dtype=jnp.uint32)
        if batch_sharding is not None:
            indices = jax.lax.with_sharding_constraint(indices, batch_sharding)
        example_keys = losses.example_keys(step_key, indices)
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

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        applied_before = state.step - state.total_nonfinite
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)  # zero updates when skipped
        finite = opt_state.last_finite
        decay = ema_decay_at(state.step, ema_decay)
        ema_params = jax.tree.map(
            lambda ema, p: jnp.where(finite, decay * ema + (1.0 - decay) * p, ema),
            state.ema_params,
            params,
        )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema_params,
            longest_nonfinite=jnp.maximum(state.longest_nonfinite, opt_state.notfinite_count),
        )
        metrics = {
            "loss": loss.astype(jnp.float32),
            "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
            "learning_rate": jnp.asarray(learning_rate(applied_before), jnp.float32),
            "finite": (finite & jnp.isfinite(loss)).astype(jnp.float32),
        }
        return new_state, metrics

    return train_step


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
) -> tuple[nnx.GraphDef, TrainState, Any]:
    """Build the network for examples of ``shape`` and a fresh train state, placed on
    ``sharding`` (replicated).

    Returns:
      ``(graphdef, state, rest)``: the network's graph definition, the :class:`TrainState` at
      step 0, and the network's non-parameter variables.
    """
    factory = network.model_factory(config, shape)
    graphdef, _, _ = nnx.split(nnx.eval_shape(factory), nnx.Param, ...)
    rng = jax.random.key_data(stream_key(config.seed, Stream.TRAINING))

    def build() -> tuple[TrainState, Any]:
        _, params, rest = nnx.split(factory(), nnx.Param, ...)
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            ema_params=jax.tree.map(jnp.copy, params),
            rng=rng,
            longest_nonfinite=jnp.zeros((), jnp.int32),
        )
        return state, rest

    state, rest = jax.jit(build, out_shardings=sharding)()
    return graphdef, state, rest


class _ShutdownFlag:
    """SIGTERM/SIGINT handling while training (a context manager).

    Until :meth:`arm` (called once the first step of this process has run, i.e. compiled) there
    is nothing to save since the last checkpoint, so SIGTERM keeps its default action and ends
    the process at once, even inside a long compilation; afterwards SIGTERM and SIGINT set
    :attr:`requested` and training saves and exits at the next step boundary.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def _install(self, signum: int, handler: Any) -> None:
        previous = signal.signal(signum, handler)
        self._previous.setdefault(signum, previous)

    def __enter__(self) -> _ShutdownFlag:
        if threading.current_thread() is threading.main_thread():  # else handlers can't be set
            self._install(signal.SIGTERM, signal.SIG_DFL)
            self._install(signal.SIGINT, self._handle)
        return self

    def arm(self) -> None:
        """From now on SIGTERM saves before exiting."""
        if self._previous:
            self._install(signal.SIGTERM, self._handle)

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class Evaluator:
    """Held-out loss, bits/dim and a sample grid with the EMA parameters."""

    def __init__(
        self, config: ExperimentConfig, dataset: Any, graphdef: nnx.GraphDef, rest: Any
    ) -> None:
        self.config = config
        self.graphdef, self.rest = graphdef, rest
        self.max_count = int(dataset.max_count)
        self.image_shape = tuple(int(d) for d in dataset.image_shape)
        self.examples = np.asarray(dataset.test_examples(config.eval.num_examples or None))
        self.key = stream_key(config.seed, Stream.EVAL)
        self.times = config_lib.sampling_times(config)

    def metrics(self, ema_params: Any) -> dict[str, float]:
        """Held-out loss and the likelihood bound (nats and bits/dim) on the fixed examples."""
        config = self.config
        predict_fn = models.make_predict_fn(self.graphdef, ema_params, self.rest)
        loss = held_out.loss_over(
            jax.random.fold_in(self.key, 0),
            predict_fn,
            self.examples,
            batch_size=config.eval.batch_size,
            weighting=config.diffusion.weighting,
            t_end=config.diffusion.t_end,
            num_steps=config.diffusion.num_steps,
        )
        nats = held_out.bound_over(
            jax.random.fold_in(self.key, 1),
            predict_fn,
            self.examples,
            batch_size=config.eval.batch_size,
            t_end=config.diffusion.t_end,
            max_count=self.max_count,
            num_time_samples=config.eval.num_time_samples,
        )
        num_dims = int(np.prod(self.image_shape))
        return {
            "loss": float(np.mean(loss)),
            "nll_nats": float(np.mean(nats)),
            "bits_per_dim": float(likelihood.bits_per_dim(np.mean(nats), num_dims)),
            "num_examples": len(nats),
        }

    def baseline_bits_per_dim(self, dataset: Any, max_examples: int = 10_000) -> float:
        """:func:`~blackout_jax.run.held_out.histogram_bits_per_dim` of the evaluation examples,
        fitted on (at most ``max_examples`` of) the training split."""
        indices = np.arange(min(int(dataset.num_train), max_examples))
        train_examples = np.asarray(dataset.train_source.read(indices))
        return held_out.histogram_bits_per_dim(train_examples, self.examples, self.max_count)

    @property
    def grid_labels(self) -> np.ndarray | None:
        """A conditional model's grid: ``k = max(1, eval.num_grid_samples // C)`` samples of
        each class ``0..C-1`` in order (one grid row per class); ``None`` if unconditional."""
        num_classes = self.config.model.num_classes
        if not num_classes:
            return None
        per_class = max(1, self.config.eval.num_grid_samples // num_classes)
        return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)

    @property
    def grid_columns(self) -> int | None:
        """Columns of the grid image: the samples per class of a conditional model."""
        labels = self.grid_labels
        return None if labels is None else len(labels) // self.config.model.num_classes

    def samples(self, ema_params: Any, step: int) -> np.ndarray:
        """``eval.num_grid_samples`` samples ``(N, H, W, C)`` int32 from the EMA network; for a
        conditional model those of :attr:`grid_labels`, with ``sampling.guidance_scale``."""
        labels = self.grid_labels
        if labels is None:
            predict_fn = models.make_predict_fn(self.graphdef, ema_params, self.rest)
        else:
            predict_fn = models.make_label_predict_fn(
                self.graphdef,
                ema_params,
                self.rest,
                guidance_scale=self.config.sampling.guidance_scale,
            )
        return generate.generate_samples(
            jax.random.fold_in(jax.random.fold_in(self.key, 2), step),
            predict_fn,
            num_samples=self.config.eval.num_grid_samples if labels is None else len(labels),
            example_shape=self.image_shape,
            times=self.times,
            max_count=self.max_count,
            method=self.config.sampling.method,
            start=self.config.sampling.start,
            chunk_size=self.config.sampling.batch_size,
            progress=True,
            labels=labels,
        )


def open_checkpoints(workdir: str, training: TrainingConfig) -> checkpointing.CheckpointStore:
    """The run's checkpoint store, with the keep policy of ``training``."""
    return checkpointing.CheckpointStore(
        folder.checkpoints_dir(workdir),
        checkpoint_every=training.checkpoint_every,
        keep_checkpoints=training.keep_checkpoints,
        keep_every=training.keep_every,
    )


class Trainer:
    """One training run in ``workdir``: its state, data stream, checkpoints and reports.

    Build it with :meth:`restore_or_init`; :func:`train_and_evaluate` drives it.
    """

    def __init__(self, config: ExperimentConfig, workdir: str, dataset: Any) -> None:
        self.config, self.workdir, self.dataset = config, workdir, dataset
        training = config.training
        self.primary = parallel.is_primary()
        mesh = parallel.create_mesh()
        self.replicated = parallel.replicated_sharding(mesh)
        self.batch_sharding = parallel.batch_sharding(mesh)
        optimizer = skipping_nonfinite(make_optimizer(training))
        self.graphdef, self.state, self.rest = init_train_state(
            config, dataset.shape, optimizer, self.replicated
        )
        self.iterator = dataset.train_iterator(
            global_batch_size=training.batch_size,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        self.store = open_checkpoints(workdir, training)
        self.metadata = {
            "dataset": str(dataset.name),
            "max_count": int(dataset.max_count),
            "image_shape": [int(d) for d in dataset.image_shape],
            "num_train": int(dataset.num_train),
            "num_devices": jax.device_count(),
            "num_processes": jax.process_count(),
        }
        self.start_step = 0
        self.train_step = jit_train_step(
            config, self.graphdef, optimizer, self.replicated, self.batch_sharding
        )
        self.evaluator = Evaluator(config, dataset, self.graphdef, self.rest)
        self.pending_metrics: list[dict[str, jax.Array]] = []
        self.writer: reporting.MetricsWriter | None = None
        self.progress: reporting.ProgressReporter | None = None
        self.longest_at_start = 0

    @classmethod
    def restore_or_init(cls, config: ExperimentConfig, workdir: str, dataset: Any) -> Trainer:
        """A fresh run, or the newest checkpoint in ``workdir`` that restores, with its
        data-stream position (damaged ones are set aside; see
        :meth:`~blackout_jax.run.checkpointing.CheckpointStore.restore_newest_usable`)."""
        check_resumable(config, workdir)
        trainer = cls(config, workdir, dataset)
        target = checkpointing.abstract_like(trainer.state.as_dict(), trainer.replicated)

        def restore(step: int) -> checkpointing.RestoredCheckpoint:
            restored = trainer.store.restore(step, target)
            trainer.iterator.set_state(restored.data_iterator)
            return restored

        restored = trainer.store.restore_newest_usable(
            restore, set_aside=True, warn=functools.partial(print, file=sys.stderr, flush=True)
        )
        if restored is not None:
            checkpointing.check_metadata(restored.metadata, dataset.shape, workdir)
            trainer.state = TrainState(**restored.state)
            trainer.start_step = restored.step
        trainer.longest_at_start = trainer.counters()["longest_nonfinite"]
        trainer._open_reports()
        return trainer

    def _open_reports(self) -> None:
        if self.primary:
            os.makedirs(os.path.join(self.workdir, folder.SAMPLES_DIR), exist_ok=True)
            folder.remove_later_grids(self.workdir, self.start_step)
            reporting.write_json(
                os.path.join(self.workdir, folder.CONFIG_FILE), self.config.to_dict()
            )
            reporting.write_json(os.path.join(self.workdir, folder.METADATA_FILE), self.metadata)
            self.writer = reporting.MetricsWriter(self.workdir, resume_step=self.start_step)
        self.progress = reporting.ProgressReporter(
            self.config.training.num_steps, self.start_step, enabled=self.primary
        )
        if self.start_step:
            self.progress.message(
                f"resumed from the checkpoint of step {self.start_step} in {self.workdir}"
            )

    def step(self) -> None:
        """One training step on the next global batch (asynchronous: nothing is fetched)."""
        batch = jax.tree.map(
            functools.partial(parallel.global_batch, sharding=self.batch_sharding),
            next(self.iterator),
        )
        self.state, metrics = self.train_step(self.state, self.rest, batch)
        self.pending_metrics.append(metrics)

    def counters(self) -> dict[str, int]:
        """The skipped-update counters of the current state (waits for the device)."""
        values = parallel.to_host(
            (
                self.state.consecutive_nonfinite,
                self.state.total_nonfinite,
                self.state.longest_nonfinite,
            )
        )
        names = ("consecutive_nonfinite", "total_nonfinite", "longest_nonfinite")
        return {name: int(value) for name, value in zip(names, values, strict=True)}

    def log(self, step: int) -> dict[str, int]:
        """Fetch the period's metrics, write one row (``loss`` = mean over applied updates);
        returns the counters."""
        fetched = parallel.to_host(self.pending_metrics)
        self.pending_metrics = []
        finite = np.array([m["finite"] for m in fetched]) > 0
        step_losses = np.array([m["loss"] for m in fetched])
        counts = self.counters()
        row = {
            "loss": float(np.mean(step_losses[finite])) if finite.any() else float("nan"),
            "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
            "learning_rate": float(fetched[-1]["learning_rate"]),
            "skipped_updates": counts["total_nonfinite"],
        }
        row["steps_per_second"] = self.progress.log(step, row)
        if self.writer is not None:
            self.writer.write(step, row, split="train")
        return counts

    def check_nonfinite(self, step: int, counts: dict[str, int]) -> None:
        """Raise :class:`NonFiniteTrainingError` after too many skipped updates in a row."""
        limit = self.config.training.max_consecutive_nonfinite
        new_longest = counts["longest_nonfinite"] > self.longest_at_start
        if counts["consecutive_nonfinite"] >= limit or (
            new_longest and counts["longest_nonfinite"] >= limit
        ):
            self.store.wait()
            latest = self.store.latest_step()
            kept = (
                f"The last checkpoint (step {latest}) holds the last good state."
                if latest is not None
                else "No checkpoint was written before it."
            )
            raise NonFiniteTrainingError(
                f"training stopped at step {step}: {counts['longest_nonfinite']} updates in a "
                "row had a non-finite loss or gradient (limit "
                f"training.max_consecutive_nonfinite={limit}); those updates were skipped. "
                f"{kept} Lower training.learning_rate or check the data."
            )

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out loss, bound and a sample grid with the EMA parameters; one eval row."""
        self.progress.message(
            f"evaluating at step {step}: held-out loss and likelihood bound on "
            f"{len(self.evaluator.examples)} examples, {self.config.eval.num_grid_samples} samples "
            f"of {self.config.sampling.num_steps} steps ..."
        )
        results = self.evaluator.metrics(self.state.ema_params)
        if self.config.eval.num_grid_samples > 0:
            grid = self.evaluator.samples(self.state.ema_params, step)
            if self.primary:
                path = folder.grid_image(self.workdir, step)
                reporting.save_sample_grid(
                    grid, self.evaluator.max_count, path, columns=self.evaluator.grid_columns
                )
        if step == self.config.training.num_steps:
            self._compare_with_baseline(results)
        if self.writer is not None:
            self.writer.write(step, results, split="eval")
            reporting.plot_loss_curve(
                reporting.read_metrics(self.writer.path),
                os.path.join(self.workdir, folder.LOSS_CURVE_FILE),
            )
        self.progress.message(
            f"eval at step {step}: held-out loss {results['loss']:.4f}, "
            f"bound {results['bits_per_dim']:.4f} bits/dim on {results['num_examples']} examples"
        )
        self.progress.reset_clock(step)
        return results

    def _compare_with_baseline(self, results: dict[str, float]) -> None:
        """Add the per-position histogram baseline to the final results; warn when the model's
        bound does not beat it (an undertrained model: its samples are noise)."""
        baseline = self.evaluator.baseline_bits_per_dim(self.dataset)
        results["histogram_baseline_bits_per_dim"] = baseline
        if results["bits_per_dim"] > baseline:
            self.progress.message(
                f"warning: the bound {results['bits_per_dim']:.3f} bits/dim is above the "
                f"{baseline:.3f} bits/dim of independent per-pixel histograms of the training "
                "data: the model is undertrained and its samples will be noise; train longer "
                "(training.num_steps) or see docs/data.md"
            )

    def save(self, step: int, *, force: bool) -> bool:
        """Checkpoint ``step`` unless inside a run of skipped updates; returns whether saved."""
        counts = self.counters()
        if counts["consecutive_nonfinite"]:
            return False
        return self.store.save(
            step,
            self.state.as_dict(),
            data_iterator=self.iterator.get_state(),
            config=self.config.to_dict(),
            metadata={**self.metadata, **counts, "step": step},
            force=force,
        )

    def shut_down(self, step: int, signal_name: str) -> None:
        """Save ``step`` (if the state is good) after a shutdown signal, and say so."""
        reason = f"{signal_name or 'shutdown request'} received"
        if self.save(step, force=True) or step in self.store.all_steps():
            self.progress.message(
                f"{reason}: saved the checkpoint of step {step} in {self.workdir}; run the "
                "same command again to resume"
            )
        else:
            self.store.wait()
            self.progress.message(
                f"{reason} at step {step}, in a run of skipped non-finite updates: kept the "
                f"checkpoint of step {self.store.latest_step()} in {self.workdir}"
            )

    def intact_checkpoint(self) -> str:
        """``"step 40 in WORKDIR/checkpoints"`` for the newest finished checkpoint, or a phrase."""
        steps = self.store.all_steps()
        if not steps:
            return f"none (no checkpoint in {self.store.directory})"
        return f"step {steps[-1]} in {self.store.directory}"

    def close(self, *, raise_errors: bool = True) -> None:
        """Finish pending saves; close the reports. With ``raise_errors=False`` (while another
        error is being reported) failures here are swallowed, and a half-written checkpoint
        folder is removed (orbax writes into a temporary folder first)."""
        closers = [self.store.close]
        if self.progress is not None:
            closers.append(self.progress.close)
        if self.writer is not None:
            closers.append(self.writer.close)
        for close in closers:
            try:
                close()
            except Exception:
                if raise_errors:
                    raise
        if not raise_errors and self.primary:
            checkpointing.remove_unfinished(self.store.directory)


def train_and_evaluate(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    *,
    dataset: CountDataset | None = None,
) -> TrainResult:
    """Train (or resume training) the experiment ``config`` in ``workdir``.

    Every process of a multi-host job calls this with the same arguments (after
    :func:`blackout_jax.run.parallel.initialize_distributed`); process 0 writes the metrics, images
    and JSON files, orbax coordinates the checkpoints.

    Args:
      config: the experiment config (:func:`blackout_jax.run.config.parse`).
      workdir: the run folder; created if missing. A checkpoint in it is resumed.
      dataset: an already loaded :class:`blackout_jax.data.CountDataset` (default: load
        ``config.data``).

    Returns:
      A :class:`TrainResult`.

    Raises:
      ValueError: a checkpoint in ``workdir`` made for other data or settings.
      NonFiniteTrainingError: ``training.max_consecutive_nonfinite`` skipped updates in a row.
    """
    if not jax.config.jax_threefry_partitionable:
        raise ValueError(
            "training needs jax_threefry_partitionable=True (JAX's default) so that random "
            "draws do not depend on how the batch is split over devices"
        )
    dataset = dataset if dataset is not None else network.load_data(config)
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if parallel.is_primary():
            stack.enter_context(RunFolderLock(workdir))
        shutdown = stack.enter_context(_ShutdownFlag())
        stack.enter_context(_disk_full_reported_once())
        trainer = Trainer.restore_or_init(config, workdir, dataset)
        try:
            result = _train_loop(trainer, shutdown)
            trainer.close()  # waits for the last save, whose failure shows only here
        except Exception as error:
            full = _no_space_error(error)
            trainer.close(raise_errors=False)
            if full is None:
                raise
            raise DiskFullError(
                f"no space left on the device while writing {full.filename or workdir}; the "
                f"last intact checkpoint is {trainer.intact_checkpoint()}; free space and run "
                "the same command again to resume",
            ) from None
        return result


def _train_loop(trainer: Trainer, shutdown: _ShutdownFlag) -> TrainResult:
    """Step / log / evaluate / checkpoint until ``training.num_steps`` or a shutdown signal."""
    training = trainer.config.training
    step, last_eval, stopped = trainer.start_step, {}, False
    one_process = jax.process_count() == 1
    if step >= training.num_steps:
        trainer.progress.message(
            f"training already reached step {step} (training.num_steps={training.num_steps})"
        )
    if step < training.num_steps:
        trainer.progress.message(
            f"compiling the training step (batch {training.batch_size}, {jax.device_count()} "
            "device(s)); the compilation cache makes this fast on later runs ..."
        )
    while step < training.num_steps:
        trainer.step()
        if step == trainer.start_step:
            shutdown.arm()  # compiled and stepped: from now on a signal saves first
        step += 1
        trainer.progress.update(step)
        if step == trainer.start_step + 1:
            trainer.progress.reset_clock(step)  # steps/s without the first compilation
        last = step == training.num_steps
        at_log = step % training.log_every == 0 or last
        at_checkpoint = step % training.checkpoint_every == 0 or last
        if at_log:
            trainer.check_nonfinite(step, trainer.log(step))
        if step % training.eval_every == 0 or last:
            last_eval = trainer.evaluate(step)
        if at_checkpoint:
            trainer.save(step, force=last)
        # One process checks its own flag every step; a multi-process job agrees on it
        # (a collective) only where the hosts synchronise anyway.
        if (one_process or at_log or at_checkpoint) and parallel.any_process(shutdown.requested):
            trainer.shut_down(step, shutdown.signal_name)
            stopped = True
            break
    return TrainResult(step=step, stopped_by_signal=stopped, last_eval=last_eval)
