"""``--mode=distill``: train the K-call mixture student of a trained run from its EMA teacher.

The student is the mixture MLP of :mod:`blackout_jax.run.students` (its step and law:
:mod:`blackout_jax.distill`). Everything lives under ``WORKDIR/students/<K>calls/``:

* ``teacher_states.npz``: the teacher's states at the student's times, ``states`` int8/int32
  ``(K + 1, M, ...)`` for ``M = distill.num_trajectories`` trajectories of
  ``distill.teacher_method`` on the student's grid merged with a ``distill.teacher_steps``-step
  logit grid, ``times`` ``(K + 1,)`` and the seconds they took; drawn once, in chunks of
  ``sampling.batch_size`` (chunk ``i`` with ``fold_in(key, i)``);
* ``checkpoints/<step>/``: the student's parameters and Adam state
  (:class:`blackout_jax.run.checkpointing.CheckpointStore`), resumed from the latest;
* ``metrics.jsonl``: ``step``, ``loss`` (nats per example and step) and the process CPU
  seconds spent so far on the training steps.

The student's grid is ``distill.grid``: ``logit`` (``observation_times(K, t_end)``) or
``optimised`` (:func:`blackout_jax.run.trained.model_sampling_times` for ``K`` steps, fitted to
the teacher).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from blackout_jax import distill, observation_times
from blackout_jax.data import CountDataset
from blackout_jax.run import checkpointing, chunked, parallel, reporting, students, trained
from blackout_jax.run.config import ExperimentConfig
from blackout_jax.run.streams import DISTILL_STREAM
from blackout_jax.run.trained import TrainedModel

TEACHER_STATES_FILE = "teacher_states.npz"
METRICS_FILE = "metrics.jsonl"


def student_times(
    config: ExperimentConfig, workdir: str | os.PathLike[str], model: TrainedModel, dataset
) -> np.ndarray:
    """The student's grid ``(K + 1,)`` of ``distill.grid`` for ``K = distill.num_calls``."""
    settings = config.distill
    sampling = dataclasses.replace(
        config.sampling, grid=settings.grid, num_steps=settings.num_calls
    )
    times = trained.model_sampling_times(
        dataclasses.replace(config, sampling=sampling), workdir, model, dataset
    )
    return np.asarray(times, np.float32)


def teacher_states(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    model: TrainedModel,
    times: np.ndarray,
) -> np.ndarray:
    """The teacher's states at ``times``, ``(K + 1, M, ...)``: read from
    ``teacher_states.npz`` or drawn and written there (see the module's docstring)."""
    settings = config.distill
    path = students.student_dir(workdir, settings.num_calls) / TEACHER_STATES_FILE
    if path.exists():
        with np.load(path) as stored:
            if np.allclose(stored["times"], times) and stored["states"].shape[1] == (
                settings.num_trajectories
            ):
                return stored["states"]
        print(f"warning: {path} was drawn for other settings; drawing it again", flush=True)
    fine = distill.refined_grid(
        times, observation_times(settings.teacher_steps, config.diffusion.t_end)
    )
    positions = distill.grid_positions(fine, times)
    started = time.process_time()

    def trajectories(key: jax.Array) -> jax.Array:
        states = distill.teacher_trajectories(
            key,
            model.predict_fn,
            (config.sampling.batch_size, *model.image_shape),
            fine,
            max_count=model.max_count,
            method=settings.teacher_method,
            start=config.sampling.start,
        )
        return jnp.moveaxis(states[positions], 0, 1)  # (batch, K + 1, ...)

    drawn = chunked.run_in_chunks(
        _distill_keys(config.seed)[1],
        trajectories,
        num_examples=settings.num_trajectories,
        chunk_size=config.sampling.batch_size,
        progress=True,
        description="teacher trajectories",
    )
    states = np.moveaxis(np.asarray(drawn), 1, 0)
    states = states.astype(np.int8 if model.max_count <= 127 else np.int32)
    seconds = time.process_time() - started
    if parallel.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        reporting.write_npz(path, states=states, times=times, cpu_seconds=np.asarray(seconds))
    return states


def _train_step(optimizer, max_count: int):
    def loss(params, states, times):
        return distill.distillation_loss(
            students.student_fn(params, max_count), states, times, max_count=max_count
        )

    @jax.jit
    def step(params, opt_state, states, times):
        value, grads = jax.value_and_grad(loss)(params, states, times)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def distill_run(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    dataset: CountDataset,
    model: TrainedModel,
) -> Path:
    """Train (or resume) the ``distill.num_calls``-call student of ``model``; returns its folder.

    ``distill.num_steps`` Adam updates (learning rate ``distill.learning_rate``, gradients
    clipped to norm 1) on minibatches of ``distill.batch_size`` trajectories (every step of
    each), drawn with ``fold_in(key, update)``; a checkpoint every ``distill.checkpoint_every``
    updates and at the end, a metrics row every ``distill.log_every``.
    """
    settings = config.distill
    if settings.num_calls < 1:
        raise ValueError(
            f"config field distill.num_calls must be >= 1 for --mode=distill, got "
            f"{settings.num_calls}"
        )
    folder = students.student_dir(workdir, settings.num_calls)
    times = student_times(config, workdir, model, dataset)
    states = teacher_states(config, workdir, model, times)
    dim = int(np.prod(model.image_shape))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(settings.learning_rate))
    init_key, _, key = _distill_keys(config.seed)
    params = students.init_student(init_key, dim, settings.num_components, settings.hidden)
    state = {"params": params, "opt_state": optimizer.init(params)}
    store = checkpointing.CheckpointStore(
        folder / "checkpoints",
        checkpoint_every=settings.checkpoint_every,
        keep_checkpoints=2,
        async_save=False,
    )
    metadata = {
        "num_calls": settings.num_calls,
        "times": [float(x) for x in times],
        "num_components": settings.num_components,
        "hidden": settings.hidden,
        "teacher_step": model.step,
        "max_count": model.max_count,
        "image_shape": list(model.image_shape),
    }
    start, state, cpu_seconds = _restore_student(store, state, metadata)
    _fit_student(
        folder,
        store,
        optimizer,
        state,
        (states, jnp.asarray(times)),
        key,
        start,
        config.distill,
        model.max_count,
        cpu_seconds,
        metadata,
    )
    print(f"the {settings.num_calls}-call student is in {folder}", flush=True)
    return folder


def _restore_student(
    store: checkpointing.CheckpointStore, state: dict[str, Any], metadata: dict[str, Any]
) -> tuple[int, dict[str, Any], float]:
    """``(step, state, CPU seconds)`` of the newest student checkpoint, or of a fresh start.

    Raises:
      CheckpointMismatchError: the stored student has other settings (named field by field).
    """
    step = store.latest_step()
    if step is None:
        return 0, state, 0.0
    stored = store.read_json(step, "metadata")
    changed = [
        f"{name}: {stored.get(name)} -> {value}"
        for name, value in metadata.items()
        if stored.get(name) != value
    ]
    if changed:
        raise checkpointing.CheckpointMismatchError(
            f"the student in {store.directory} was trained with other settings "
            f"({'; '.join(changed)}): use the settings it was trained with, or remove that folder"
        )
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored = store.restore(step, checkpointing.abstract_like(state, sharding))
    print(f"resuming the {metadata['num_calls']}-call student at step {step}", flush=True)
    return step, restored.state, float(restored.data_iterator.get("cpu_seconds", 0.0))


def _fit_student(
    folder: Path,
    store: checkpointing.CheckpointStore,
    optimizer: optax.GradientTransformation,
    state: dict[str, Any],
    trajectories: tuple[np.ndarray, jax.Array],
    key: jax.Array,
    start: int,
    settings: Any,
    max_count: int,
    cpu_seconds: float,
    metadata: dict[str, Any],
) -> None:
    """Updates ``start + 1 .. distill.num_steps`` on minibatches of the teacher's
    ``trajectories`` (states ``(K + 1, M, ...)``, times ``(K + 1,)``); logged and checkpointed."""
    states, times = trajectories
    step = _train_step(optimizer, max_count)
    params, opt_state = state["params"], state["opt_state"]
    for update in range(start + 1, settings.num_steps + 1):
        started = time.process_time()
        rows = jax.random.choice(
            jax.random.fold_in(key, update), states.shape[1], (settings.batch_size,)
        )
        batch = jnp.asarray(states[:, np.asarray(rows)]).astype(jnp.int32)
        params, opt_state, loss = step(params, opt_state, batch, times)
        last = update == settings.num_steps
        if update % settings.log_every == 0 or last:
            loss = float(loss)
        cpu_seconds += time.process_time() - started
        if update % settings.log_every == 0 or last:
            _log(folder, update, loss, cpu_seconds)
        if update % settings.checkpoint_every == 0 or last:
            store.save(
                update,
                {"params": params, "opt_state": opt_state},
                data_iterator={"cpu_seconds": cpu_seconds},
                metadata=metadata,
                force=last,
            )
    store.wait()
    store.close()


def _distill_keys(seed: int) -> jax.Array:
    """The keys of the initialisation, the teacher's trajectories and the minibatches."""
    return jax.random.split(jax.random.fold_in(jax.random.key(seed), DISTILL_STREAM), 3)


def _log(folder: Path, update: int, loss: float, cpu_seconds: float) -> None:
    row = {"step": update, "loss": loss, "cpu_seconds": cpu_seconds}
    print(
        f"student step {update} | loss {loss:.4f} nats per step | {cpu_seconds:.0f} CPU-s",
        flush=True,
    )
    if parallel.is_primary():
        with open(folder / METRICS_FILE, "a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")
