"""``--mode=distill``: train the K-call mixture student of a trained run from its EMA teacher.

The student (:mod:`blackout_jax.distill`) is a small MLP on the flattened counts and the step's
times ``(log t, log max(s, 1e-4), [s = 0])``: two hidden SiLU layers of ``distill.hidden``
units output ``J = distill.num_components`` rate maps ``yhat_j = (N - n_t) sigmoid(z_j)`` and
``J`` mixture logits. Everything lives under ``WORKDIR/students/<K>calls/``:

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
from blackout_jax.run import checkpointing, chunked, parallel, reporting, trained
from blackout_jax.run.config import ExperimentConfig
from blackout_jax.run.streams import Stream, stream_key
from blackout_jax.run.trained import TrainedModel

DISTILL_STREAM = 0x64697374
"""Folded into ``key(seed)`` for every draw of ``--mode=distill`` (split in three: the
student's initialisation, the teacher's trajectories, the minibatches)."""

STUDENTS_DIR = "students"
TEACHER_STATES_FILE = "teacher_states.npz"
METRICS_FILE = "metrics.jsonl"
_INITIAL_RATE_LOGIT = 2.0  # rates start at 0.88 of the room: they cover most teacher births
_SMALLEST_S = 1e-4  # floor of s in the student's log-time feature (s = 0 at the last step)


def student_dir(workdir: str | os.PathLike[str], num_calls: int) -> Path:
    """``WORKDIR/students/<K>calls``: everything of the K-call student."""
    return Path(workdir, STUDENTS_DIR, f"{num_calls}calls")


def init_student(key: jax.Array, dim: int, num_components: int, hidden: int) -> dict[str, Any]:
    """The MLP's parameters: ``(3 + D) -> hidden -> hidden -> J (D + 1)``, LeCun-normal weights,
    the output layer scaled by 0.1 and its rate biases 2 (rates start near 0.88 of the room, so
    that they cover most of the teacher's births, mixture weights near uniform)."""
    sizes = (dim + 3, hidden, hidden, num_components * (dim + 1))
    keys = jax.random.split(key, len(sizes) - 1)
    params = {}
    for index, (key, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        scale = (0.1 if index == len(sizes) - 2 else 1.0) / np.sqrt(fan_in)
        params[f"w{index}"] = scale * jax.random.normal(key, (fan_in, fan_out), jnp.float32)
        params[f"b{index}"] = jnp.zeros((fan_out,), jnp.float32)
    last = f"b{len(sizes) - 2}"
    params[last] = params[last].at[: num_components * dim].set(_INITIAL_RATE_LOGIT)
    return params


def apply_student(
    params: dict[str, Any], counts: jax.Array, t: jax.Array, s: jax.Array, *, max_count: int
) -> tuple[jax.Array, jax.Array]:
    """``(rates (B, J, ...), logits (B, J))`` of the MLP for ``counts (B, ...)`` at ``t``,
    ``s`` ``(B,)``: ``rates = (N - n_t) sigmoid(z)``."""
    batch, shape = counts.shape[0], counts.shape[1:]
    flat = counts.reshape(batch, -1).astype(jnp.float32)
    dim = flat.shape[1]
    t = jnp.asarray(t, jnp.float32)
    s = jnp.asarray(s, jnp.float32)
    times = jnp.stack([jnp.log(t), jnp.log(jnp.maximum(s, _SMALLEST_S)), (s <= 0.0) * 1.0], 1)
    hidden = jnp.concatenate([flat / max_count, times], axis=1)
    layers = len(params) // 2
    for index in range(layers):
        hidden = hidden @ params[f"w{index}"] + params[f"b{index}"]
        if index < layers - 1:
            hidden = jax.nn.silu(hidden)
    num_components = hidden.shape[1] // (dim + 1)
    rates = jax.nn.sigmoid(hidden[:, : num_components * dim].reshape(batch, num_components, dim))
    rates = (max_count - flat)[:, None, :] * rates
    return rates.reshape(batch, num_components, *shape), hidden[:, num_components * dim :]


def student_fn(params: dict[str, Any], max_count: int) -> jax.tree_util.Partial:
    """:func:`apply_student` as a ``distill.StudentFn``, the parameters traced arguments."""
    return jax.tree_util.Partial(_apply_with_count, params, jnp.asarray(max_count, jnp.float32))


def _apply_with_count(params, max_count, counts, t, s):
    return apply_student(params, counts, t, s, max_count=max_count)


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
    path = student_dir(workdir, settings.num_calls) / TEACHER_STATES_FILE
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
            student_fn(params, max_count), states, times, max_count=max_count
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
    folder = student_dir(workdir, settings.num_calls)
    times = student_times(config, workdir, model, dataset)
    states = teacher_states(config, workdir, model, times)
    dim = int(np.prod(model.image_shape))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(settings.learning_rate))
    init_key, _, key = _distill_keys(config.seed)
    params = init_student(init_key, dim, settings.num_components, settings.hidden)
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
    start, cpu_seconds = 0, 0.0
    if store.latest_step() is not None:
        restored = store.restore(None, jax.tree.map(_abstract, state))
        start, state = restored.step, restored.state
        cpu_seconds = float(restored.data_iterator.get("cpu_seconds", 0.0))
        print(f"resuming the {settings.num_calls}-call student at step {start}", flush=True)
    step = _train_step(optimizer, model.max_count)
    device_times = jnp.asarray(times)
    params, opt_state = state["params"], state["opt_state"]
    for update in range(start + 1, settings.num_steps + 1):
        started = time.process_time()
        rows = jax.random.choice(
            jax.random.fold_in(key, update), states.shape[1], (settings.batch_size,)
        )
        batch = jnp.asarray(states[:, np.asarray(rows)]).astype(jnp.int32)
        params, opt_state, loss = step(params, opt_state, batch, device_times)
        if update % settings.log_every == 0 or update == settings.num_steps:
            loss = float(loss)
        cpu_seconds += time.process_time() - started
        if update % settings.log_every == 0 or update == settings.num_steps:
            _log(folder, update, loss, cpu_seconds)
        last = update == settings.num_steps
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
    print(f"the {settings.num_calls}-call student is in {folder}", flush=True)
    return folder


def _distill_keys(seed: int) -> jax.Array:
    """The keys of the initialisation, the teacher's trajectories and the minibatches."""
    return jax.random.split(jax.random.fold_in(jax.random.key(seed), DISTILL_STREAM), 3)


def _abstract(leaf: Any) -> Any:
    return jax.ShapeDtypeStruct(np.shape(leaf), jnp.asarray(leaf).dtype)


def _log(folder: Path, update: int, loss: float, cpu_seconds: float) -> None:
    row = {"step": update, "loss": loss, "cpu_seconds": cpu_seconds}
    print(
        f"student step {update} | loss {loss:.4f} nats per step | {cpu_seconds:.0f} CPU-s",
        flush=True,
    )
    if parallel.is_primary():
        with open(folder / METRICS_FILE, "a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")


def load_student(
    workdir: str | os.PathLike[str], num_calls: int
) -> tuple[jax.tree_util.Partial, np.ndarray, int]:
    """``(student_fn, times, step)`` of the newest checkpoint of the ``num_calls``-call student.

    Raises:
      FileNotFoundError: no such student (train it with ``--mode=distill``).
    """
    folder = student_dir(workdir, num_calls)
    store = checkpointing.CheckpointStore(
        folder / "checkpoints", checkpoint_every=1, keep_checkpoints=2**31 - 1, async_save=False
    )
    try:
        step = store.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"no {num_calls}-call student in {folder}: train it with --mode=distill "
                f"--config.distill.num_calls={num_calls}"
            )
        metadata = store.read_json(step, "metadata")
        dim = int(np.prod(metadata["image_shape"]))
        template = init_student(
            jax.random.key(0), dim, metadata["num_components"], metadata["hidden"]
        )
        _, tree = store.restore_part(step, {"params": jax.tree.map(_abstract_here, template)})
    finally:
        store.close()
    fn = student_fn(tree["params"], metadata["max_count"])
    return fn, np.asarray(metadata["times"], np.float32), int(step)


def _abstract_here(leaf: Any) -> Any:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(np.shape(leaf), jnp.asarray(leaf).dtype, sharding=sharding)


def draw_student_samples(
    config: ExperimentConfig, workdir: str | os.PathLike[str], model: TrainedModel
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(samples (num_samples, ...), times, student step)`` of the ``sampling.student_calls``
    student, in chunks of ``sampling.batch_size`` (chunk ``i`` with ``fold_in(key, i)``)."""
    sampler = config.sampling
    fn, times, step = load_student(workdir, sampler.student_calls)

    def draw(key: jax.Array) -> jax.Array:
        return distill.sample_student(
            key,
            fn,
            (sampler.batch_size, *model.image_shape),
            times,
            max_count=model.max_count,
            start=sampler.start,
        )

    samples = chunked.run_in_chunks(
        jax.random.fold_in(stream_key(config.seed, Stream.SAMPLE), model.step),
        draw,
        num_examples=sampler.num_samples,
        chunk_size=sampler.batch_size,
        description="student samples",
    )
    return np.asarray(samples, np.int32), times, step
