"""A trained run opened for use: the EMA network of one checkpoint and the samples it draws.

:func:`open_trained_run` is the one way in for the sample/evaluate/impute/unthin commands and
the studies under ``experiments/``: the config (the run folder's stored settings overlaid by
the sampling and evaluation ones given, parsed once), the data, and the EMA network of
checkpoint ``sampling.checkpoint_step`` (:func:`load_trained_model`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blackout_jax import grids, models, settings
from blackout_jax.data import CountDataset, DataShape
from blackout_jax.run import (
    checkpointing,
    chunked,
    digests,
    flat_params,
    folder,
    grid_files,
    network,
    parallel,
)
from blackout_jax.run import config as config_lib
from blackout_jax.run.config import ExperimentConfig
from blackout_jax.run.streams import Stream, stream_key


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """The EMA network of one checkpoint, ready for the samplers and the bound."""

    step: int
    predict_for: Callable[..., jax.tree_util.Partial]
    """``predict_for(labels=y, guidance_scale=w)``: :func:`blackout_jax.models.make_predict_fn`
    of the EMA network (labels ``None``: none, or a conditional model's null label)."""
    max_count: int
    image_shape: tuple[int, ...]

    @property
    def predict_fn(self) -> jax.tree_util.Partial:
        """The predict function without labels: ``predict_for(labels=None)``."""
        return self.predict_for(labels=None)


def load_trained_model(
    config: ExperimentConfig, workdir: str | os.PathLike[str], shape: DataShape
) -> TrainedModel:
    """The EMA parameters of checkpoint ``sampling.checkpoint_step`` (-1 = latest), and nothing
    else: the restore target is the network's abstract parameters (``nnx.eval_shape``) and
    only the checkpoint's ``ema_params`` are read (no optimiser state, no training copy).

    Raises:
      FileNotFoundError: no (such) checkpoint in ``WORKDIR/checkpoints``.
      ValueError: the checkpoint was trained on data of another ``max_count`` or shape.
    """
    replicated = parallel.replicated_sharding(parallel.create_mesh())
    graphdef, abstract_params, rest = network.network_parts(config, shape, replicated)
    step, ema_params = _restore_ema_params(
        workdir, config.sampling.checkpoint_step, abstract_params, shape
    )
    dropout_key = (
        stream_key(config.seed, Stream.SAMPLING_DROPOUT) if config.sampling.dropout else None
    )
    return TrainedModel(
        step=step,
        predict_for=functools.partial(
            models.make_predict_fn, graphdef, ema_params, rest, dropout_key=dropout_key
        ),
        max_count=shape.max_count,
        image_shape=shape.example_shape,
    )


def _restore_ema_params(
    workdir: str | os.PathLike[str], wanted: int, abstract_params: Any, shape: DataShape
) -> tuple[int, Any]:
    """``(step, EMA parameters as the network's tree)`` of checkpoint ``wanted`` (-1 = the
    newest that restores; damaged ones are reported and skipped, never moved). Only the
    ``ema_params`` of the ``state`` item are read, in either layout, and checked against their
    digests."""
    layout = flat_params.FlatLayout.of(abstract_params)
    sharding = jax.tree.leaves(abstract_params)[0].sharding
    store = checkpointing.CheckpointStore(
        folder.checkpoints_dir(workdir),
        checkpoint_every=1,
        keep_checkpoints=2**31 - 1,  # inference never saves; no keep policy may remove anything
        async_save=False,
    )

    def restore(step: int) -> tuple[int, Any]:
        metadata = store.read_json(step, "metadata")
        checkpointing.check_metadata(metadata, shape, os.fspath(workdir))
        flat = checkpointing.state_layout(metadata) == checkpointing.FLAT_LAYOUT
        target = layout.abstract(sharding) if flat else abstract_params
        store.check_shapes(step, target, prefix="ema_params")
        step, restored = store.restore_part(step, {"ema_params": target})
        digests.verify_digests(restored["ema_params"], metadata, step, prefix="ema_params")
        ema_params = restored["ema_params"]
        return step, jax.jit(layout.unravel)(ema_params) if flat else ema_params

    try:
        if wanted >= 0:
            return restore(wanted)
        found = store.restore_newest_usable(
            restore, set_aside=False, warn=functools.partial(print, file=sys.stderr)
        )
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {store.directory}: train first")
        return found
    finally:
        store.close()


def open_trained_run(
    values: Mapping[str, Any] | Any,
    workdir: str | os.PathLike[str],
    *,
    device_count: int = 1,
    process_count: int = 1,
) -> tuple[ExperimentConfig, CountDataset, TrainedModel]:
    """The config, the data and the EMA network of the run in ``workdir``.

    ``values`` (a ConfigDict or nested dicts) give the sampling and evaluation settings; the
    network, data and diffusion come from the run folder
    (:func:`blackout_jax.run.folder.with_stored_config`); the result is parsed once
    (:func:`blackout_jax.run.config.parse`, the batch sizes checked against ``device_count``
    and ``process_count``).

    Raises:
      ValueError: a bad config field, unreadable data, or a checkpoint made for other data.
      FileNotFoundError: missing data or no (such) checkpoint.
    """
    merged = folder.with_stored_config(settings.plain(values), workdir)
    config = config_lib.parse(merged, device_count=device_count, process_count=process_count)
    dataset = network.load_data(config)
    return config, dataset, load_trained_model(config, workdir, dataset.shape)


GRID_EXAMPLES = 300  # training examples the optimised grid is fitted on


def model_sampling_times(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    model: TrainedModel,
    dataset: CountDataset,
) -> jax.Array:
    """The times the sampler walks: :func:`blackout_jax.run.config.fixed_sampling_times`, or for
    ``sampling.grid = "optimised"`` the grid of :func:`blackout_jax.grids.optimised_grid` for this
    checkpoint and ``K``, read from ``WORKDIR/grids/optimised_<step>_<K>.json`` or, the first
    time, fitted on the first :data:`GRID_EXAMPLES` training examples and written there.

    A stored file that holds no valid ``K``-step grid ending at ``diffusion.t_end`` is not used:
    one ``warning:`` line on stderr names it, and the grid is fitted again and written over it.

    Raises:
      ValueError: a folder stands where the file goes (checked before any fitting).
    """
    sampler = config.sampling
    if sampler.grid != config_lib.OPTIMISED_GRID:
        return config_lib.fixed_sampling_times(config)
    path = folder.optimised_grid_file(workdir, model.step, sampler.num_steps)
    if path.is_dir():
        raise ValueError(f"{path} is a folder where the fitted grid is kept; move it aside")
    if path.exists():
        try:
            times, _ = grid_files.load_grid(
                path, num_steps=sampler.num_steps, t_end=config.diffusion.t_end
            )
            return jnp.asarray(times)
        except (OSError, ValueError) as error:
            message = str(error).removeprefix(f"{path}: ")
            print(f"warning: {path} is not used ({message}); fitting it again", file=sys.stderr)
    count = min(int(dataset.num_train), GRID_EXAMPLES)
    print(
        f"fitting an optimised {sampler.num_steps}-step grid to the model of step {model.step} "
        f"on {count} training examples ...",
        flush=True,
    )
    examples = np.asarray(dataset.train_source.read(np.arange(count)))
    times, _ = grids.optimised_grid(
        stream_key(config.seed, Stream.GRID),
        model.predict_fn,
        jnp.asarray(examples.reshape(count, *model.image_shape)),
        sampler.num_steps,
        t_end=config.diffusion.t_end,
    )
    if parallel.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {"step": model.step, "num_examples": count, "t_end": config.diffusion.t_end}
        grid_files.save_grid(path, times, info)
    return times


def sample_draws(config: ExperimentConfig, model: TrainedModel, times: jax.Array) -> str:
    """The name (:func:`blackout_jax.run.folder.draws_name`) of the samples that
    :func:`draw_samples` draws: the method, ``K``, the grid and the seed in words, and in its
    digest everything else they depend on (the times walked, the start, dropout, the chunk
    size, ``num_samples``, the model's ``max_count`` and shape, the labels and the guidance)."""
    sampler = config.sampling
    labels = config_lib.sampling_labels(config, sampler.num_samples)
    settings = {
        "times": np.asarray(times, np.float32),
        "start": sampler.start,
        "dropout": sampler.dropout,
        "chunk_size": sampler.batch_size,
        "num_samples": sampler.num_samples,
        "max_count": model.max_count,
        "example_shape": tuple(model.image_shape),
        "labels": None if labels is None else np.asarray(labels, np.int32),
        "guidance_scale": sampler.guidance_scale if labels is not None else None,
    }
    return folder.draws_name(
        method=sampler.method,
        num_steps=sampler.num_steps,
        grid=sampler.grid,
        seed=config.seed,
        settings=settings,
    )


def draw_samples(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    model: TrainedModel,
    times: jax.Array,
) -> np.ndarray:
    """``sampling.num_samples`` samples of ``model`` on ``times`` (resumable chunks in
    ``samples/chunks_<step>_<draws>/``, :func:`sample_draws`); a conditional model's of the
    classes :func:`blackout_jax.run.config.sampling_labels` gives."""
    sampler = config.sampling
    draws = sample_draws(config, model, times)
    return chunked.generate_samples(
        jax.random.fold_in(stream_key(config.seed, Stream.SAMPLE), model.step),
        functools.partial(model.predict_for, guidance_scale=sampler.guidance_scale),
        num_samples=sampler.num_samples,
        example_shape=model.image_shape,
        times=times,
        max_count=model.max_count,
        method=sampler.method,
        start=sampler.start,
        chunk_size=sampler.batch_size,
        chunk_dir=folder.sample_chunks_dir(workdir, model.step, draws),
        sharding=parallel.batch_sharding_for(sampler.batch_size),
        progress=True,
        labels=config_lib.sampling_labels(config, sampler.num_samples),
    )
