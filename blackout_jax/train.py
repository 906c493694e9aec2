"""The training loop: math (losses, bound, sampler) + network + optax + data + orbax.

:func:`train_and_evaluate` trains the network of ``config.model`` on the data of
``config.data`` and leaves in ``workdir``: ``checkpoints/``, ``metrics.jsonl``,
``tensorboard/``, ``samples/grid_<step>.png`` at each evaluation, ``loss_curve.png``,
``config.json`` and ``metadata.json``. Running it again on the same folder resumes from the
latest checkpoint.

One training step (:func:`make_train_step`) is a pure function compiled once with ``jax.jit``
over a device mesh: the global batch is split over the devices, parameters, optimiser state and
EMA are replicated. At step ``s`` with base key ``k`` and global batch size ``B``:

* ``step_key = fold_in(k, s)``; example ``i`` of the batch (global index ``g = s B + i``) draws
  its time, weight and ``n_t`` from ``fold_in(step_key, g)`` (:func:`blackout_jax.example_keys`);
  dropout uses ``fold_in(step_key, DROPOUT_STREAM)``. With the partitionable threefry generator
  (JAX's default) no draw depends on how the batch is split, so N steps give the same
  parameters on 1 or 8 devices, up to float rounding of the gradient sum.
* loss = mean over the batch of :func:`blackout_jax.training_loss`; gradients are clipped to
  global norm ``training.grad_clip_norm`` and fed to Adam with a linear warm-up
  ``lr * min(1, (u + 1) / warmup_steps)`` (``u`` = updates applied so far).
* EMA: ``ema <- d ema + (1 - d) params`` with ``d = min(ema_decay, (1 + s) / (10 + s))``, so
  the average forgets the random initialisation quickly in short runs.
* A non-finite loss or gradient norm skips the update (parameters, optimiser state and EMA
  stay as they were) and counts it; after ``training.max_consecutive_nonfinite`` skipped
  updates in a row training stops with :class:`NonFiniteTrainingError`, keeping the last
  checkpoint written before the run went bad.

Evaluation (every ``training.eval_every`` steps and at the end) uses the EMA parameters: the
held-out loss (the training loss on the fixed held-out examples with a fixed key), the
likelihood bound in bits/dim (:func:`blackout_jax.nll_bound`) and a PNG grid of samples.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from blackout_jax import (
    checkpointing,
    config_validation,
    likelihood,
    losses,
    parallel,
    reporting,
    schedule,
)
from blackout_jax import sampling as sampling_lib

DROPOUT_STREAM = 0x64726F70  # folded into a step's key for the dropout masks
_TRAINING_STREAM = 1  # folded into the seed's key for every draw of training
_EVAL_STREAM = 2  # folded into the seed's key for the evaluation draws
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
SAMPLES_DIR = "samples"
LOSS_CURVE_FILE = "loss_curve.png"


class NonFiniteTrainingError(RuntimeError):
    """Training stopped after too many non-finite updates in a row."""


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; replicated on every device).

    Attributes:
      step: int32 scalar, training steps taken (skipped updates included).
      params: network parameters (``nnx.State`` of ``nnx.Param``), float32.
      opt_state: optax state of the optimiser.
      ema_params: exponential moving average of ``params``.
      rng: uint32 key data of the base key of training draws.
      consecutive_nonfinite: int32, skipped updates in a row up to now.
      total_nonfinite: int32, skipped updates since the start of training.
      longest_nonfinite: int32, the longest run of skipped updates so far.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array
    consecutive_nonfinite: jax.Array
    total_nonfinite: jax.Array
    longest_nonfinite: jax.Array

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


def make_optimizer(training_config: Mapping[str, Any]) -> optax.GradientTransformation:
    """Gradient clipping to global norm (if ``grad_clip_norm > 0``), then Adam with warm-up."""
    rate = learning_rate_schedule(
        float(training_config["learning_rate"]), int(training_config["warmup_steps"])
    )
    adam = optax.adam(learning_rate=rate, b1=0.9, b2=0.999, eps=1e-8)
    clip_norm = float(training_config["grad_clip_norm"])
    if clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(clip_norm), adam)
    return adam


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
) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure training step ``(state, rest, batch) -> (new_state, metrics)``; jit it.

    Args:
      graphdef: the network's graph definition (``nnx.split``); ``rest`` holds its
        non-parameter variables (passed through unchanged).
      optimizer: the optax transformation (see :func:`make_optimizer`).
      weighting, t_end, num_steps: the loss (:func:`blackout_jax.training_loss`).
      global_batch_size: ``B``; example ``i`` of step ``s`` has global index ``s B + i``.
      ema_decay: the EMA's decay cap (see :func:`ema_decay_at`).
      learning_rate: the schedule, for the logged ``learning_rate`` metric.
      batch_sharding: the batch's sharding, to lay out the example indices the same way.

    The metrics are float32 scalars: ``loss`` (batch mean), ``grad_norm`` (before clipping),
    ``learning_rate`` and ``finite`` (1.0 if the update was applied).
    """

    def train_step(
        state: TrainState, rest: Any, batch: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        base_key = jax.random.wrap_key_data(state.rng)
        step_key = jax.random.fold_in(base_key, state.step)
        first_index = state.step.astype(jnp.uint32) * jnp.uint32(global_batch_size)
        indices = first_index + jnp.arange(global_batch_size, dtype=jnp.uint32)
        if batch_sharding is not None:
            indices = jax.lax.with_sharding_constraint(indices, batch_sharding)
        example_keys = losses.example_keys(step_key, indices)
        dropout_key = jax.random.fold_in(step_key, DROPOUT_STREAM)

        def loss_fn(params: Any) -> jax.Array:
            model = nnx.merge(graphdef, params, rest)

            def predict(counts: jax.Array, t: jax.Array) -> jax.Array:
                return model(counts, t, train=True, dropout_key=dropout_key)

            per_example = losses.training_loss(
                example_keys,
                predict,
                batch,
                weighting=weighting,
                t_end=t_end,
                num_steps=num_steps,
            )
            return jnp.mean(per_example)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # Zero non-finite gradients before the optimiser so no NaN enters its state, then
        # keep the old state wholesale when the step is skipped.
        safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        updates, new_opt_state = optimizer.update(safe_grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        decay = ema_decay_at(state.step, ema_decay)
        new_ema = jax.tree.map(
            lambda ema, p: decay * ema + (1.0 - decay) * p, state.ema_params, new_params
        )

        def select(new: Any, old: Any) -> Any:
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        consecutive = jnp.where(finite, 0, state.consecutive_nonfinite + 1)
        applied_updates = state.step - state.total_nonfinite
        new_state = state.replace(
            step=state.step + 1,
            params=select(new_params, state.params),
            opt_state=select(new_opt_state, state.opt_state),
            ema_params=select(new_ema, state.ema_params),
            consecutive_nonfinite=consecutive.astype(jnp.int32),
            total_nonfinite=state.total_nonfinite + jnp.where(finite, 0, 1).astype(jnp.int32),
            longest_nonfinite=jnp.maximum(state.longest_nonfinite, consecutive).astype(jnp.int32),
        )
        metrics = {
            "loss": loss.astype(jnp.float32),
            "grad_norm": grad_norm.astype(jnp.float32),
            "learning_rate": jnp.asarray(learning_rate(applied_updates), jnp.float32),
            "finite": finite.astype(jnp.float32),
        }
        return new_state, metrics

    return train_step


def _model_factory(config: ml_collections.ConfigDict, dataset: Any) -> Callable[[], nnx.Module]:
    from blackout_jax import models

    return functools.partial(
        models.create_model,
        config.model,
        image_shape=tuple(int(d) for d in dataset.image_shape),
        max_count=int(dataset.max_count),
        t_end=float(config.diffusion.t_end),
        num_steps=int(config.diffusion.num_steps),
        seed=int(config.seed),
    )


def abstract_model(config: ml_collections.ConfigDict, dataset: Any) -> nnx.Module:
    """The network of ``config`` with shapes only (``nnx.eval_shape``; no memory, no compute).

    Building it checks the model fields against the data (errors name ``model.<field>``).
    """
    return nnx.eval_shape(_model_factory(config, dataset))


def init_train_state(
    config: ml_collections.ConfigDict,
    dataset: Any,
    optimizer: optax.GradientTransformation,
    sharding: jax.sharding.Sharding,
) -> tuple[nnx.GraphDef, TrainState, Any]:
    """Build the network and a fresh train state, placed on ``sharding`` (replicated).

    Returns:
      ``(graphdef, state, rest)``: the network's graph definition, the :class:`TrainState` at
      step 0, and the network's non-parameter variables.
    """
    factory = _model_factory(config, dataset)
    graphdef, _, _ = nnx.split(nnx.eval_shape(factory), nnx.Param, ...)
    training_key = jax.random.fold_in(jax.random.key(int(config.seed)), _TRAINING_STREAM)
    rng = jax.random.key_data(training_key)

    def build() -> tuple[TrainState, Any]:
        _, params, rest = nnx.split(factory(), nnx.Param, ...)
        zero = jnp.zeros((), jnp.int32)
        state = TrainState(
            step=zero,
            params=params,
            opt_state=optimizer.init(params),
            ema_params=jax.tree.map(jnp.copy, params),
            rng=rng,
            consecutive_nonfinite=zero,
            total_nonfinite=zero,
            longest_nonfinite=zero,
        )
        return state, rest

    state, rest = jax.jit(build, out_shardings=sharding)()
    return graphdef, state, rest


def make_eval_fns(
    graphdef: nnx.GraphDef,
    *,
    weighting: str,
    t_end: float,
    num_steps: int,
    max_count: int,
    num_time_samples: int,
) -> tuple[Callable[..., jax.Array], Callable[..., jax.Array], Callable[..., jax.Array]]:
    """Jitted evaluation functions of the network in eval mode (no dropout).

    Returns:
      ``held_out_loss(params, rest, batch, first_index, key) -> (B,)`` per-example training loss
      (example ``i`` keyed by ``fold_in(key, first_index + i)``),
      ``bound(params, rest, batch, key) -> (B,)`` likelihood bound in nats,
      ``apply(params, rest, counts, t) -> yhat`` (for the sampler, via ``Partial``).
    """

    def apply(params: Any, rest: Any, counts: jax.Array, t: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, rest)(counts, t, train=False)

    @jax.jit
    def held_out_loss(
        params: Any, rest: Any, batch: jax.Array, first_index: jax.Array, key: jax.Array
    ) -> jax.Array:
        indices = first_index.astype(jnp.uint32) + jnp.arange(batch.shape[0], dtype=jnp.uint32)
        return losses.training_loss(
            losses.example_keys(key, indices),
            functools.partial(apply, params, rest),
            batch,
            weighting=weighting,
            t_end=t_end,
            num_steps=num_steps,
        )

    @jax.jit
    def bound(params: Any, rest: Any, batch: jax.Array, key: jax.Array) -> jax.Array:
        return likelihood.nll_bound(
            key,
            functools.partial(apply, params, rest),
            batch,
            t_end=t_end,
            max_count=max_count,
            num_time_samples=num_time_samples,
        )

    return held_out_loss, bound, apply


class _ShutdownFlag:
    """Set by SIGTERM/SIGINT while installed; training saves and exits at the next step."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _write_json(path: str, payload: Mapping[str, Any]) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(payload, file, indent=2, sort_keys=True)
        file.write("\n")
    os.replace(temporary, path)


class _Evaluator:
    """Held-out loss, bits/dim and a sample grid with the EMA parameters."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        dataset: Any,
        graphdef: nnx.GraphDef,
        mesh: jax.sharding.Mesh,
    ) -> None:
        self.config = config
        self.max_count = int(dataset.max_count)
        self.image_shape = tuple(int(d) for d in dataset.image_shape)
        self.batch_sharding = parallel.batch_sharding(mesh)
        num_examples = int(config.eval.num_examples)
        examples = np.asarray(dataset.test_examples(num_examples if num_examples > 0 else None))
        self.num_examples = int(examples.shape[0])
        batch_size = int(config.eval.batch_size)
        padded = -(-self.num_examples // batch_size) * batch_size
        padding = np.zeros((padded - self.num_examples,) + examples.shape[1:], examples.dtype)
        self.batches = np.concatenate([examples, padding]).reshape(
            (-1, batch_size) + examples.shape[1:]
        )
        self.held_out_loss, self.bound, apply = make_eval_fns(
            graphdef,
            weighting=config.diffusion.weighting,
            t_end=float(config.diffusion.t_end),
            num_steps=int(config.diffusion.num_steps),
            max_count=self.max_count,
            num_time_samples=int(config.eval.num_time_samples),
        )
        self.apply = apply
        self.key = jax.random.fold_in(jax.random.key(int(config.seed)), _EVAL_STREAM)
        self.times = schedule.sampling_times(
            config.sampling.grid,
            int(config.sampling.num_steps),
            t_end=float(config.diffusion.t_end),
            training_steps=int(config.diffusion.num_steps),
        )

    def metrics(self, params: Any, rest: Any) -> dict[str, float]:
        """Held-out loss and the likelihood bound (nats and bits/dim) on the fixed examples."""
        loss_key = jax.random.fold_in(self.key, 0)
        bound_key = jax.random.fold_in(self.key, 1)
        loss_values, nats_values = [], []
        batch_size = self.batches.shape[1]
        for index, batch in enumerate(self.batches):
            device_batch = parallel.shared_array(batch, self.batch_sharding)
            first = jnp.asarray(index * batch_size, jnp.uint32)
            loss_values.append(self.held_out_loss(params, rest, device_batch, first, loss_key))
            nats_values.append(
                self.bound(params, rest, device_batch, jax.random.fold_in(bound_key, index))
            )
        loss = np.concatenate(parallel.to_host(loss_values))[: self.num_examples]
        nats = np.concatenate(parallel.to_host(nats_values))[: self.num_examples]
        num_dims = int(np.prod(self.image_shape))
        return {
            "loss": float(np.mean(loss)),
            "nll_nats": float(np.mean(nats)),
            "bits_per_dim": float(np.mean(nats) / (num_dims * np.log(2.0))),
            "num_examples": self.num_examples,
        }

    def samples(self, params: Any, rest: Any, step: int) -> np.ndarray:
        """``eval.num_grid_samples`` samples ``(N, H, W, C)`` int32 from the EMA network."""
        total = int(self.config.eval.num_grid_samples)
        chunk = int(self.config.sampling.batch_size)
        predict_fn = jax.tree_util.Partial(self.apply, params, rest)
        key = jax.random.fold_in(jax.random.fold_in(self.key, 2), step)
        parts = []
        for start in range(0, total, chunk):
            size = min(chunk, total - start)
            drawn = sampling_lib.sample(
                jax.random.fold_in(key, start),
                predict_fn,
                (size, *self.image_shape),
                self.times,
                max_count=self.max_count,
                method=self.config.sampling.method,
                start=self.config.sampling.start,
            )
            parts.append(parallel.to_host(drawn))
        return np.concatenate(parts)


def check_restored_metadata(metadata: Mapping[str, Any], dataset: Any, workdir: str) -> None:
    """Raise ``ValueError`` when a checkpoint's ``max_count`` or ``image_shape`` differ from
    ``dataset``'s (the checkpoint was trained on other data)."""
    for name, current in (
        ("max_count", int(dataset.max_count)),
        ("image_shape", [int(d) for d in dataset.image_shape]),
    ):
        saved = metadata.get(name)
        if saved is not None and saved != current:
            raise ValueError(
                f"the checkpoint in {workdir} was trained with {name}={saved}, but the data now "
                f"has {name}={current}; use a new --workdir for different data"
            )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike[str],
    *,
    dataset: Any | None = None,
) -> TrainResult:
    """Train (or resume training) the experiment ``config`` in ``workdir``.

    Every process of a multi-host job calls this with the same arguments (after
    :func:`blackout_jax.parallel.initialize_distributed`); process 0 writes the metrics, images
    and JSON files, orbax coordinates the checkpoints.

    Args:
      config: the experiment config (see ``configs/default.py``); validated here.
      workdir: the run folder; created if missing. A checkpoint in it is resumed.
      dataset: an already loaded :class:`blackout_jax.data.CountDataset` (default: load
        ``config.data``).

    Returns:
      A :class:`TrainResult`.

    Raises:
      ValueError: a bad config field, or a checkpoint in ``workdir`` made for other data.
      NonFiniteTrainingError: ``training.max_consecutive_nonfinite`` skipped updates in a row.
    """
    config_validation.validate_config(config, jax.device_count(), jax.process_count())
    if not jax.config.jax_threefry_partitionable:
        raise ValueError(
            "training needs jax_threefry_partitionable=True (JAX's default) so that random "
            "draws do not depend on how the batch is split over devices"
        )
    if dataset is None:
        from blackout_jax import data

        dataset = data.load_dataset(
            config.data, seed=int(config.seed), size_divisor=2 ** (len(config.model.ch_mult) - 1)
        )
    workdir = os.fspath(workdir)
    primary = parallel.is_primary()
    training = config.training
    num_steps = int(training.num_steps)
    global_batch_size = int(training.batch_size)

    mesh = parallel.create_mesh()
    replicated = parallel.replicated_sharding(mesh)
    batch_sharding = parallel.batch_sharding(mesh)
    optimizer = make_optimizer(training)
    graphdef, state, rest = init_train_state(config, dataset, optimizer, replicated)

    iterator = dataset.train_iterator(
        global_batch_size=global_batch_size,
        seed=int(config.seed),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    store = checkpointing.CheckpointStore(
        os.path.join(workdir, "checkpoints"),
        checkpoint_every=int(training.checkpoint_every),
        keep_checkpoints=int(training.keep_checkpoints),
        keep_every=int(training.keep_every),
    )
    metadata = {
        "dataset": str(dataset.name),
        "max_count": int(dataset.max_count),
        "image_shape": [int(d) for d in dataset.image_shape],
        "num_train": int(dataset.num_train),
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
    }
    config_dict = json.loads(config.to_json())

    start_step = 0
    latest = store.latest_step()
    if latest is not None:
        restored = store.restore(latest, checkpointing.abstract_like(state.as_dict(), replicated))
        check_restored_metadata(restored.metadata, dataset, workdir)
        state = TrainState(**restored.state)
        iterator.set_state(restored.data_iterator)
        start_step = restored.step

    if primary:
        os.makedirs(os.path.join(workdir, SAMPLES_DIR), exist_ok=True)
        _write_json(os.path.join(workdir, CONFIG_FILE), config_dict)
        _write_json(os.path.join(workdir, METADATA_FILE), metadata)
    writer = reporting.MetricsWriter(workdir, resume_step=start_step) if primary else None
    progress = reporting.ProgressReporter(num_steps, start_step, enabled=primary)
    if start_step:
        progress.message(f"resumed from the checkpoint of step {start_step} in {workdir}")

    train_step = jax.jit(
        make_train_step(
            graphdef,
            optimizer,
            weighting=config.diffusion.weighting,
            t_end=float(config.diffusion.t_end),
            num_steps=int(config.diffusion.num_steps),
            global_batch_size=global_batch_size,
            ema_decay=float(training.ema_decay),
            learning_rate=learning_rate_schedule(
                float(training.learning_rate), int(training.warmup_steps)
            ),
            batch_sharding=batch_sharding,
        ),
        in_shardings=(replicated, replicated, batch_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    evaluator = _Evaluator(config, dataset, graphdef, mesh)

    def counters(current: TrainState) -> dict[str, int]:
        values = parallel.to_host(
            (current.consecutive_nonfinite, current.total_nonfinite, current.longest_nonfinite)
        )
        return {
            "consecutive_nonfinite": int(values[0]),
            "total_nonfinite": int(values[1]),
            "longest_nonfinite": int(values[2]),
        }

    def save(step: int, current: TrainState, *, force: bool) -> bool:
        return store.save(
            step,
            current.as_dict(),
            data_iterator=iterator.get_state(),
            config=config_dict,
            metadata={**metadata, **counters(current), "step": step},
            force=force,
        )

    def evaluate(step: int, current: TrainState) -> dict[str, float]:
        results = evaluator.metrics(current.ema_params, rest)
        if int(config.eval.num_grid_samples) > 0:
            grid = evaluator.samples(current.ema_params, rest, step)
            if primary:
                reporting.save_sample_grid(
                    grid,
                    evaluator.max_count,
                    os.path.join(workdir, SAMPLES_DIR, f"grid_{step}.png"),
                )
        if writer is not None:
            writer.write(step, results, split="eval")
            reporting.plot_loss_curve(
                reporting.read_metrics(writer.path), os.path.join(workdir, LOSS_CURVE_FILE)
            )
        progress.message(
            f"eval at step {step}: held-out loss {results['loss']:.4f}, "
            f"bound {results['bits_per_dim']:.4f} bits/dim on {results['num_examples']} examples"
        )
        return results

    shutdown = _ShutdownFlag()
    shutdown.install()
    pending_metrics: list[dict[str, jax.Array]] = []
    last_eval: dict[str, float] = {}
    stopped_by_signal = False
    step = start_step
    max_nonfinite = int(training.max_consecutive_nonfinite)
    longest_at_start = counters(state)["longest_nonfinite"]  # runs before a resume do not count
    try:
        if start_step >= num_steps:
            progress.message(
                f"training already reached step {start_step} (training.num_steps={num_steps})"
            )
        while step < num_steps:
            local_batch = next(iterator)
            batch = parallel.global_batch(local_batch, batch_sharding)
            state, step_metrics = train_step(state, rest, batch)
            step += 1
            pending_metrics.append(step_metrics)
            progress.update(step)
            if step == start_step + 1:
                progress.reset_clock(step)  # steps/s without the compilation of the first step
            last = step == num_steps

            if step % int(training.log_every) == 0 or last:
                fetched = parallel.to_host(pending_metrics)
                pending_metrics = []
                finite = np.array([m["finite"] for m in fetched]) > 0
                losses_seen = np.array([m["loss"] for m in fetched])
                state_counts = counters(state)
                row = {
                    "loss": float(np.mean(losses_seen[finite])) if finite.any() else float("nan"),
                    "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
                    "learning_rate": float(fetched[-1]["learning_rate"]),
                    "skipped_updates": state_counts["total_nonfinite"],
                }
                row["steps_per_second"] = progress.log(step, row)
                if writer is not None:
                    writer.write(step, row, split="train")
                new_longest = state_counts["longest_nonfinite"] > longest_at_start
                if state_counts["consecutive_nonfinite"] >= max_nonfinite or (
                    new_longest and state_counts["longest_nonfinite"] >= max_nonfinite
                ):
                    store.wait()
                    raise NonFiniteTrainingError(
                        f"training stopped at step {step}: {state_counts['longest_nonfinite']} "
                        "updates in a row had a non-finite loss or gradient (limit "
                        f"training.max_consecutive_nonfinite={max_nonfinite}); those updates "
                        "were skipped. The last checkpoint "
                        f"(step {store.latest_step()}) holds the last good state. Lower "
                        "training.learning_rate or check the data."
                    )

            if step % int(training.eval_every) == 0 or last:
                last_eval = evaluate(step, state)
                progress.reset_clock(step)

            # Checkpoint, but not in the middle of a run of skipped updates.
            checkpoint_due = step % int(training.checkpoint_every) == 0 or last
            if checkpoint_due and counters(state)["consecutive_nonfinite"] == 0:
                save(step, state, force=last)

            if parallel.any_process(shutdown.requested):
                stopped_by_signal = True
                reason = f"{shutdown.signal_name or 'shutdown request'} received"
                if counters(state)["consecutive_nonfinite"] == 0:
                    save(step, state, force=True)
                    progress.message(
                        f"{reason}: saved the checkpoint of step {step} in {workdir}; run the "
                        "same command again to resume"
                    )
                else:
                    store.wait()
                    progress.message(
                        f"{reason} at step {step}, in a run of skipped non-finite updates: kept "
                        f"the checkpoint of step {store.latest_step()} in {workdir}"
                    )
                break
    finally:
        shutdown.uninstall()
        store.close()
        progress.close()
        if writer is not None:
            writer.close()
    return TrainResult(step=step, stopped_by_signal=stopped_by_signal, last_eval=last_eval)
