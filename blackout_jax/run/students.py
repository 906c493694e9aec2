"""The K-call students of ``--mode=distill``: their network, folder and use for sampling.

The student (:mod:`blackout_jax.distill`) is a small MLP on the flattened counts and the step's
times ``(log t, log max(s, 1e-4), [s = 0])``: two hidden SiLU layers of ``distill.hidden``
units output ``J = distill.num_components`` rate maps ``yhat_j = (N - n_t) sigmoid(z_j)`` and
``J`` mixture logits. :mod:`blackout_jax.run.distillation` trains it into
``WORKDIR/students/<K>calls/``; :func:`student_sample_run` samples with the newest checkpoint
(``--mode=sample --config.sampling.student_calls=K``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blackout_jax import distill
from blackout_jax.run import checkpointing, chunked, folder, outputs, parallel, reporting
from blackout_jax.run.config import ExperimentConfig
from blackout_jax.run.streams import Stream, stream_key
from blackout_jax.run.trained import TrainedModel

_INITIAL_RATE_LOGIT = 2.0  # rates start at 0.88 of the room: they cover most teacher births
_SMALLEST_S = 1e-4  # floor of s in the student's log-time feature (s = 0 at the last step)


def student_dir(workdir: str | os.PathLike[str], num_calls: int) -> Path:
    """``WORKDIR/students/<K>calls``: everything of the K-call student."""
    return Path(workdir, folder.STUDENTS_DIR, f"{num_calls}calls")


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
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        _, tree = store.restore_part(
            step, {"params": checkpointing.abstract_like(template, sharding)}
        )
    finally:
        store.close()
    fn = student_fn(tree["params"], metadata["max_count"])
    return fn, np.asarray(metadata["times"], np.float32), int(step)


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


def student_sample_run(
    config: ExperimentConfig, workdir: str | os.PathLike[str], model: TrainedModel
) -> Path:
    """``sampling.num_samples`` samples of the ``sampling.student_calls``-call student
    → ``samples/samples_<step>_student_<K>steps_...npz``
    (``method`` = ``"student"``, ``student_step`` the student's checkpoint) + PNG."""
    sampler = config.sampling
    samples, times, student_step = draw_student_samples(config, workdir, model)
    draws = folder.draws_name(
        method="student",
        num_steps=sampler.student_calls,
        grid=None,
        seed=config.seed,
        settings={
            "times": np.asarray(times, np.float32),
            "student_step": student_step,
            "start": sampler.start,
            "chunk_size": sampler.batch_size,
            "num_samples": sampler.num_samples,
        },
    )
    path = outputs.writable_output(workdir, "sample", model.step, draws)
    if parallel.is_primary():
        reporting.write_npz(
            path,
            samples=samples,
            method=np.asarray("student"),
            num_steps=np.asarray(sampler.student_calls),
            grid=np.asarray(times, np.float32),
            seed=np.asarray(config.seed),
            checkpoint_step=np.asarray(model.step),
            student_step=np.asarray(student_step),
            start=np.asarray(sampler.start),
        )
        reporting.save_sample_grid(samples[:100], model.max_count, path.with_suffix(".png"))
    print(f"wrote {len(samples)} samples of the {sampler.student_calls}-call student to {path}")
    return path
