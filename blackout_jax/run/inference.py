"""Using a trained run: sampling, evaluation and imputation with its EMA parameters.

* :func:`sample_run` writes ``WORKDIR/samples/samples_<step>.npz`` (array ``samples``,
  ``(N, H, W, C)`` int32 counts) and ``samples_<step>.png``. Chunks are kept under
  ``samples/chunks_<step>_<method>_<K>_<chunk size>/`` while drawing, so an interrupted run
  continues where it stopped.
* :func:`evaluate_run` writes ``WORKDIR/eval/metrics_<step>.json``: the likelihood bound over the
  whole held-out split (nats and bits/dim, with a 95% confidence interval over examples) and
  sample-quality metrics of ``sampling.num_samples`` samples (digits: Fréchet distance in a
  classifier's feature space with its real-vs-real floor and the class distribution; image
  datasets: FID, IS and KID with the Inception network, see docs/metrics.md).
* Class-conditional models (``model.num_classes > 0``) sample the classes of
  ``sampling.labels`` with guidance ``sampling.guidance_scale`` (the ``.npz`` also holds
  ``labels`` and ``guidance_scale``); their evaluation adds the bound conditional on the true
  label and, on digits, the fraction of samples the classifier assigns to their label.
* :func:`impute_run` completes the unobserved entries of an ``.npz`` of ``counts`` and
  ``mask`` (``True``/1 = observed) and writes ``WORKDIR/imputed/imputed_<step>.npz``.
* :func:`unthin_run` draws posterior samples of the counts behind thinned observations (an
  ``.npz`` of ``counts``, optional ``survival`` and ``truth``) with :func:`blackout_jax.unthin`
  and writes ``WORKDIR/unthinned/unthinned_<step>.npz`` and a PNG.

Every process of a multi-host job calls these; process 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from blackout_jax import grids, likelihood, models, sampling
from blackout_jax.data import DataShape, count_checks
from blackout_jax.run import (
    checkpointing,
    folder,
    generate,
    grid_files,
    held_out,
    network,
    parallel,
    reporting,
)
from blackout_jax.run import config as config_lib
from blackout_jax.run.config import ExperimentConfig
from blackout_jax.run.streams import Stream, stream_key

INCEPTION_DATASETS = ("cifar10", "celeba64")


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """The EMA network of one checkpoint, ready for the samplers and the bound."""

    step: int
    predict_fn: jax.tree_util.Partial
    max_count: int
    image_shape: tuple[int, ...]
    label_predict_fn: Callable[..., Callable[[jax.Array], jax.tree_util.Partial]] | None = None
    """Conditional models: ``label_predict_fn(guidance_scale=w)`` is
    :func:`blackout_jax.models.make_label_predict_fn` of the EMA network (``labels ->
    predict_fn``); ``None`` for unconditional ones."""


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
    store = checkpointing.CheckpointStore(
        folder.checkpoints_dir(workdir),
        checkpoint_every=1,
        keep_checkpoints=2**31 - 1,  # inference never saves; no keep policy may remove anything
        async_save=False,
    )
    target = {"ema_params": abstract_params}

    def restore(step: int) -> tuple[int, Any, dict[str, Any]]:
        step, restored = store.restore_part(step, target)
        return step, restored, store.read_json(step, "metadata")

    try:
        wanted = config.sampling.checkpoint_step
        if wanted >= 0:
            step, restored, metadata = restore(wanted)
        else:
            found = store.restore_newest_usable(
                restore, set_aside=False, warn=functools.partial(print, file=sys.stderr)
            )
            if found is None:
                raise FileNotFoundError(f"no checkpoint in {store.directory}: train first")
            step, restored, metadata = found
    finally:
        store.close()
    checkpointing.check_metadata(metadata, shape, os.fspath(workdir))
    dropout_key = (
        stream_key(config.seed, Stream.SAMPLING_DROPOUT) if config.sampling.dropout else None
    )
    label_predict_fn = None
    if config.model.num_classes:
        label_predict_fn = functools.partial(
            models.make_label_predict_fn,
            graphdef,
            restored["ema_params"],
            rest,
            dropout_key=dropout_key,
        )
    return TrainedModel(
        step=step,
        predict_fn=models.make_predict_fn(
            graphdef, restored["ema_params"], rest, dropout_key=dropout_key
        ),
        max_count=shape.max_count,
        image_shape=shape.example_shape,
        label_predict_fn=label_predict_fn,
    )


GRID_EXAMPLES = 300  # training examples the optimised grid is fitted on


def sampler_times(
    config: ExperimentConfig, workdir: str | os.PathLike[str], model: TrainedModel, dataset: Any
) -> jax.Array:
    """The times the sampler walks: :func:`blackout_jax.run.config.sampling_times`, or for
    ``sampling.grid = "optimised"`` the grid of :func:`blackout_jax.grids.optimised_grid` for this
    checkpoint and ``K``, read from ``WORKDIR/grids/optimised_<step>_<K>.json`` or, the first
    time, fitted on the first :data:`GRID_EXAMPLES` training examples and written there."""
    sampler = config.sampling
    if sampler.grid != config_lib.OPTIMISED_GRID:
        return config_lib.sampling_times(config)
    path = folder.optimised_grid_file(workdir, model.step, sampler.num_steps)
    if path.exists():
        return jnp.asarray(grid_files.load_grid(path)[0])
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


def sample_chunk_dir(config: ExperimentConfig, workdir: str | os.PathLike[str], step: int) -> Path:
    """Where the chunks of a sample command are kept until its result is written (resume)."""
    sampler = config.sampling
    variant = f"{sampler.grid}_{sampler.start}" + ("_dropout" if sampler.dropout else "")
    name = f"chunks_{step}_{sampler.method}_{variant}_{sampler.num_steps}_{sampler.batch_size}"
    if config.model.num_classes:  # other labels or another scale: other chunks
        labels = config_lib.sampling_labels(config, sampler.num_samples)
        digest = hashlib.sha256(np.asarray(labels, np.int32).tobytes()).hexdigest()[:12]
        name += f"_w{sampler.guidance_scale:g}_labels{digest}"
    return Path(workdir, folder.SAMPLES_DIR, name)


def draw_samples(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    model: TrainedModel,
    times: jax.Array,
) -> np.ndarray:
    """``sampling.num_samples`` samples of ``model`` on ``times`` (resumable chunks under
    ``samples/``); a conditional model's of the classes :func:`sample_labels` gives."""
    sampler = config.sampling
    labels = sample_labels(config, model)
    predict_fn = model.predict_fn
    if labels is not None:
        predict_fn = model.label_predict_fn(guidance_scale=sampler.guidance_scale)
    return generate.generate_samples(
        jax.random.fold_in(stream_key(config.seed, Stream.SAMPLE), model.step),
        predict_fn,
        num_samples=sampler.num_samples,
        example_shape=model.image_shape,
        times=times,
        max_count=model.max_count,
        method=sampler.method,
        start=sampler.start,
        chunk_size=sampler.batch_size,
        chunk_dir=sample_chunk_dir(config, workdir, model.step),
        sharding=parallel.batch_sharding_for(sampler.batch_size),
        progress=True,
        labels=labels,
    )


def sample_labels(config: ExperimentConfig, model: TrainedModel) -> np.ndarray | None:
    """The classes of the ``sampling.num_samples`` samples (``sampling.labels``; ``None`` for an
    unconditional model)."""
    if model.label_predict_fn is None:
        return None
    return config_lib.sampling_labels(config, config.sampling.num_samples)


def sample_run(config: ExperimentConfig, workdir: str | os.PathLike[str], dataset: Any) -> Path:
    """Draw ``sampling.num_samples`` samples and write ``samples/samples_<step>.npz`` + PNG."""
    model = load_trained_model(config, workdir, dataset.shape)
    samples = draw_samples(config, workdir, model, sampler_times(config, workdir, model, dataset))
    path = folder.command_output(workdir, "sample", model.step)
    if parallel.is_primary():
        labels = sample_labels(config, model)
        conditional = (
            {}
            if labels is None
            else {"labels": labels, "guidance_scale": np.asarray(config.sampling.guidance_scale)}
        )
        np.savez(
            path,
            samples=samples,
            method=np.asarray(config.sampling.method),
            num_steps=np.asarray(config.sampling.num_steps),
            **conditional,
        )
        grid, columns = samples[:100], None
        if labels is not None:  # one row per class
            grid, columns = reporting.rows_by_label(samples, labels)
        reporting.save_sample_grid(grid, model.max_count, path.with_suffix(".png"), columns=columns)
        shutil.rmtree(sample_chunk_dir(config, workdir, model.step), ignore_errors=True)
    print(f"wrote {len(samples)} samples of step {model.step} to {path}")
    return path


def sample_quality_kind(config: ExperimentConfig, dataset_name: str) -> str:
    """Which sample metrics ``eval.sample_metrics`` selects: 'digits', 'inception' or 'none'."""
    chosen = config.eval.sample_metrics
    if chosen != "auto":
        return chosen
    if dataset_name == "digits":
        return "digits"
    return "inception" if dataset_name in INCEPTION_DATASETS else "none"


def evaluate_run(config: ExperimentConfig, workdir: str | os.PathLike[str], dataset: Any) -> Path:
    """Likelihood bound over the held-out split and sample metrics → ``eval/metrics_<step>.json``.

    Raises:
      FileNotFoundError: Inception metrics were asked for and the weights file is missing
        (checked before any work).
    """
    kind = sample_quality_kind(config, str(dataset.name))
    extractor = None
    if kind == "inception":
        from blackout_jax.metrics import inception

        extractor = inception.TorchFidelityInception(config.eval.inception_weights or None)
    model = load_trained_model(config, workdir, dataset.shape)
    nats = held_out.bound_over(
        stream_key(config.seed, Stream.EVALUATE),
        model.predict_fn,
        np.asarray(dataset.test_examples(None)),
        batch_size=config.eval.batch_size,
        t_end=config.diffusion.t_end,
        max_count=model.max_count,
        num_time_samples=config.eval.num_time_samples,
    )
    results: dict[str, Any] = {
        "step": model.step,
        "num_test_examples": len(nats),
        "num_time_samples": config.eval.num_time_samples,
        **bound_summary(nats, math.prod(model.image_shape)),
    }
    if model.label_predict_fn is not None:
        results.update(_conditional_bound(config, model, dataset))
    if kind != "none":
        samples = draw_samples(
            config, workdir, model, sampler_times(config, workdir, model, dataset)
        )
        results["sampler"] = {
            "method": config.sampling.method,
            "num_steps": config.sampling.num_steps,
            "grid": config.sampling.grid,
            "start": config.sampling.start,
            "dropout": config.sampling.dropout,
            "num_samples": len(samples),
        }
        labels = sample_labels(config, model)
        if labels is not None:
            results["sampler"]["labels"] = config.sampling.labels
            results["sampler"]["guidance_scale"] = config.sampling.guidance_scale
        if kind == "digits":
            from blackout_jax.metrics import digits_features

            results["sample_metrics"] = digits_features.digits_sample_metrics(samples)
            if labels is not None:
                results["sample_metrics"]["label_accuracy"] = digits_features.label_accuracy(
                    samples, labels
                )
        else:
            results["sample_metrics"] = _inception_metrics(config, dataset, samples, extractor)
    path = folder.command_output(workdir, "evaluate", model.step)
    if parallel.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        reporting.write_json(path, results)
        shutil.rmtree(sample_chunk_dir(config, workdir, model.step), ignore_errors=True)
    print(
        f"step {model.step}: {results['bits_per_dim']:.4f} ± {results['bits_per_dim_ci95']:.4f} "
        f"bits/dim on {len(nats)} held-out examples; wrote {path}"
    )
    if "conditional_bits_per_dim" in results:
        print(
            f"conditional on the true label: {results['conditional_bits_per_dim']:.4f} ± "
            f"{results['conditional_bits_per_dim_ci95']:.4f} bits/dim"
        )
    if "sample_metrics" in results:
        print(f"samples: {summarise_sample_metrics(results['sample_metrics'])}")
    return path


def _conditional_bound(
    config: ExperimentConfig, model: TrainedModel, dataset: Any
) -> dict[str, float]:
    """The bound on ``-log p(n_0 | label)`` over the held-out split with its true labels
    (``w = 0``; the same time draws as the unconditional bound)."""
    nats = held_out.bound_over(
        stream_key(config.seed, Stream.EVALUATE),
        model.label_predict_fn(guidance_scale=0.0),
        np.asarray(dataset.test_examples(None)),
        batch_size=config.eval.batch_size,
        t_end=config.diffusion.t_end,
        max_count=model.max_count,
        num_time_samples=config.eval.num_time_samples,
        labels=np.asarray(dataset.test_labels(None)),
    )
    return bound_summary(nats, math.prod(model.image_shape), prefix="conditional_")


def bound_summary(nats: np.ndarray, num_dims: int, prefix: str = "") -> dict[str, float]:
    """Mean bound per example in nats and bits/dim, each with the half-width of its 95%
    confidence interval over the examples (``1.96 sd / sqrt(n)``); keys start with ``prefix``."""
    half_width = 1.96 * float(np.std(nats, ddof=1)) / math.sqrt(len(nats)) if len(nats) > 1 else 0.0
    return {
        f"{prefix}nll_nats": float(np.mean(nats)),
        f"{prefix}nll_nats_ci95": half_width,
        f"{prefix}bits_per_dim": float(likelihood.bits_per_dim(np.mean(nats), num_dims)),
        f"{prefix}bits_per_dim_ci95": float(likelihood.bits_per_dim(half_width, num_dims)),
    }


def summarise_sample_metrics(metrics: dict[str, Any]) -> str:
    """One line of the sample metrics: every number, and the class shares in percent."""
    parts = []
    for name, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{name} {value:.4g}")
        elif isinstance(value, list) and name == "class_distribution":
            shares = " ".join(f"{index}:{100 * share:.0f}%" for index, share in enumerate(value))
            parts.append(f"classes {shares}")
    if "frechet_distance" in metrics and metrics.get("frechet_floor"):
        ratio = metrics["frechet_distance"] / metrics["frechet_floor"]
        parts.insert(1, f"({ratio:.2f}x the real-vs-real floor)")
    return ", ".join(parts)


def _inception_metrics(
    config: ExperimentConfig, dataset: Any, samples: np.ndarray, extractor: Any
) -> dict[str, Any]:
    from blackout_jax.metrics import inception

    cache_dir = config.eval.reference_cache_dir or os.path.join(
        os.path.expanduser("~"), ".cache", "blackout_jax", "reference"
    )

    def training_batches(batch_size: int = 1000):
        total = dataset.num_train
        for start in range(0, total, batch_size):
            indices = np.arange(start, min(start + batch_size, total))
            batch = np.asarray(dataset.train_source.read(indices), np.int32)
            yield batch.reshape(len(indices), *dataset.image_shape)

    reference = inception.load_or_compute_reference_statistics(
        cache_dir, str(dataset.name), extractor, training_batches, max_count=int(dataset.max_count)
    )
    return inception.inception_sample_metrics(
        samples,
        reference,
        extractor,
        max_count=int(dataset.max_count),
        kid_subset_size=min(config.eval.kid_subset_size, len(samples)),
    )


def _read_arrays(
    path: str | os.PathLike[str], names: tuple[str, ...], optional: tuple[str, ...] = ()
) -> list[np.ndarray | None]:
    """The named arrays of an ``.npz`` (no pickled objects), then the ``optional`` ones (``None``
    where the file has none); errors name the file and array."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise ValueError(f"{path} is a single .npy array; expected an .npz with {names}")
            missing = [name for name in names if name not in archive.files]
            if missing:
                raise ValueError(f"{path} has no array {missing[0]!r} (found {archive.files})")
            arrays = []
            for name in (*names, *optional):
                if name not in archive.files:
                    arrays.append(None)
                    continue
                try:
                    arrays.append(archive[name])
                except ValueError as error:  # object arrays need pickle, which is refused
                    raise ValueError(f"{path}[{name!r}] cannot be read: {error}") from None
            return arrays
    except (EOFError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable .npz file ({error})") from None


def read_imputation_input(
    path: str | os.PathLike[str], image_shape: tuple[int, ...], max_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read and check ``counts`` and ``mask`` of an ``.npz`` before any work is done.

    Shapes ``(N, H, W, C)`` or ``(N, H, W)`` (one channel); ``mask`` is boolean or 0/1
    (``True`` = observed), ``counts`` whole numbers in ``0..max_count`` where observed (the
    unobserved entries are ignored).

    Returns:
      ``(counts int32, mask bool)``, both ``(N, *image_shape)``.

    Raises:
      ValueError: naming the file, the array, the global index and the value of the first
        problem (or the two lengths when they differ).
    """
    counts, mask = _read_arrays(path, ("counts", "mask"))
    arrays = _image_arrays(path, {"counts": counts, "mask": mask}, image_shape)
    counts, mask = arrays["counts"], arrays["mask"]
    if len(counts) != len(mask):
        raise ValueError(f"{path}: 'counts' has {len(counts)} examples but 'mask' has {len(mask)}")
    if mask.dtype != np.bool_:
        if mask.dtype.kind not in "biuf":
            raise ValueError(f"{path}['mask'] must be boolean or 0/1, got dtype {mask.dtype}")
        bad = ~np.isin(mask, (0, 1))
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{path}['mask'][{', '.join(map(str, index))}] = {mask[index].item()!r}: the "
                "mask must be boolean or 0/1"
            )
        mask = mask.astype(bool)
    if counts.dtype.kind not in "biuf":
        raise ValueError(f"{path}['counts'] must hold numbers, got dtype {counts.dtype}")
    observed = np.where(mask, counts, 0)
    counts = count_checks.check_count_values(
        observed, source=f"{path}['counts']", max_count=max_count
    )
    return counts, mask


def impute_run(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    dataset: Any,
    input_path: str | os.PathLike[str],
) -> Path:
    """Complete the unobserved counts of ``input_path`` → ``imputed/imputed_<step>.npz`` + PNG.

    Chunk ``i`` of ``sampling.batch_size`` examples is imputed with ``fold_in(key, i)``
    (:func:`blackout_jax.run.generate.run_in_chunks`), split over every device.
    """
    image_shape = tuple(int(d) for d in dataset.image_shape)
    counts, mask = read_imputation_input(input_path, image_shape, int(dataset.max_count))
    model = load_trained_model(config, workdir, dataset.shape)
    sampler = config.sampling
    times = sampler_times(config, workdir, model, dataset)

    def complete(key: jax.Array, observed_counts: jax.Array, observed: jax.Array) -> jax.Array:
        return sampling.impute(
            key,
            model.predict_fn,
            observed_counts,
            observed,
            times,
            max_count=model.max_count,
            method=sampler.method,
            start=sampler.start,
            resamples=sampler.impute_resamples,
            particles=sampler.impute_particles,
            progress=parallel.is_primary(),
            sharding=parallel.batch_sharding_for(sampler.batch_size),
        )

    completed = generate.run_in_chunks(
        stream_key(config.seed, Stream.IMPUTE),
        complete,
        num_examples=len(counts),
        chunk_size=sampler.batch_size,
        inputs=(counts, mask),
        sharding=parallel.batch_sharding_for(sampler.batch_size),
    )
    path = folder.command_output(workdir, "impute", model.step)
    if parallel.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, counts=completed, mask=mask)
        pairs = reporting.imputation_pairs(counts[:50], mask[:50], completed[:50], model.max_count)
        reporting.save_sample_grid(pairs, model.max_count, path.with_suffix(".png"), columns=2)
    print(f"imputed {int((~mask).sum())} missing counts in {len(completed)} examples; wrote {path}")
    return path


def _image_arrays(
    path: str | os.PathLike[str], named: dict[str, np.ndarray], image_shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Each array as ``(N, *image_shape)`` (a missing channel axis of size 1 added)."""
    shaped = {}
    for name, array in named.items():
        if array.ndim == len(image_shape) and image_shape[-1] == 1:
            array = array[..., None]
        if array.shape[1:] != tuple(image_shape) or array.shape[0] < 1:
            raise ValueError(
                f"{path}[{name!r}] has shape {array.shape}; expected (N, *{tuple(image_shape)})"
            )
        shaped[name] = array
    return shaped


def check_survival_values(
    values: np.ndarray, *, source: str, t_end: float, locate: Any = None
) -> np.ndarray:
    """Survival probabilities ``q`` as float32: finite, in ``(0, 1]`` and ``>= exp(-t_end)``.

    ``t* = -ln q`` must not pass the model's ``t_end``: the network has learnt the reverse
    process only on ``[0, t_end]``.

    Raises:
      ValueError: ``source[index] = value: ...`` for the first bad value.
    """
    locate = locate or count_checks.index_locator(source)
    if values.dtype.kind not in "iuf":
        raise ValueError(f"{source} must hold numbers in (0, 1], got dtype {values.dtype}")
    values = values.astype(np.float64)
    smallest = math.exp(-t_end)
    for bad, problem in (
        (~np.isfinite(values) | (values <= 0) | (values > 1), "survival must be in (0, 1]"),
        (
            values < smallest,
            f"survival below exp(-t_end) = {smallest:.4g} gives t* = -ln q beyond the model's "
            f"t_end = {t_end:g}",
        ),
    ):
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{locate(index)} = {values[index].item()!r}: {problem}")
    return values.astype(np.float32)


def read_unthinning_input(
    path: str | os.PathLike[str],
    image_shape: tuple[int, ...],
    max_count: int,
    *,
    t_end: float,
    default_survival: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read and check the thinned observations of an ``.npz`` before any work is done.

    ``counts`` ``(N, H, W, C)`` or ``(N, H, W)``: whole numbers in ``0..max_count``; optional
    ``survival`` ``(N,)``, one ``q`` per example in ``(0, 1]`` (else ``default_survival``, the
    config's ``sampling.survival``, for every example), each ``>= exp(-t_end)``; optional
    ``truth`` with the shape of ``counts``, whole numbers in ``0..max_count`` and ``>= counts``
    (the thinning only removes units).

    Returns:
      ``(counts int32, survival float32 (N,), truth int32 or None)``.

    Raises:
      ValueError: naming the file, the array, the global index and the value of the first
        problem (or the config field for a bad ``sampling.survival``).
    """
    counts, survival, truth = _read_arrays(path, ("counts",), optional=("survival", "truth"))
    named = {"counts": counts} | ({} if truth is None else {"truth": truth})
    named = _image_arrays(path, named, image_shape)
    checked = {
        name: count_checks.check_count_values(a, source=f"{path}[{name!r}]", max_count=max_count)
        for name, a in named.items()
    }
    counts = checked["counts"]
    if truth is not None:
        truth = checked["truth"]
        if len(truth) != len(counts):
            raise ValueError(
                f"{path}: 'counts' has {len(counts)} examples but 'truth' has {len(truth)}"
            )
        below = truth < counts
        if below.any():
            index = tuple(int(i) for i in np.argwhere(below)[0])
            raise ValueError(
                f"{path}['truth'][{', '.join(map(str, index))}] = {truth[index].item()} is below "
                f"the observed count {counts[index].item()}: thinning only removes units"
            )
    if survival is None:
        if not 0.0 < default_survival <= 1.0:
            raise ValueError(
                f"config field sampling.survival must be in (0, 1], got {default_survival!r}"
            )
        source = "config field sampling.survival"
        survival = check_survival_values(
            np.full(len(counts), default_survival),
            source=source,
            t_end=t_end,
            locate=lambda index: source,
        )
    else:
        if survival.shape != (len(counts),):
            raise ValueError(
                f"{path}['survival'] has shape {survival.shape}; expected ({len(counts)},), one "
                "survival probability per example"
            )
        survival = check_survival_values(survival, source=f"{path}['survival']", t_end=t_end)
    return counts, survival, truth


def unthin_run(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    dataset: Any,
    input_path: str | os.PathLike[str],
) -> Path:
    """Posterior samples of the counts behind thinned observations →
    ``unthinned/unthinned_<step>.npz`` + PNG.

    Every example is repeated ``S = sampling.num_posterior_samples`` times and the rows go
    through :func:`blackout_jax.unthin` (``sampling.unthin_method``, ``sampling.num_steps``
    steps from ``t* = -ln q`` to 0) in chunks of ``sampling.batch_size``
    (:func:`blackout_jax.run.generate.run_in_chunks`, chunk ``i`` with ``fold_in(key, i)``).
    The npz holds ``samples`` ``(N, S, H, W, C)`` int32, their ``mean`` ``(N, H, W, C)``,
    the ``survival`` used ``(N,)``, the observed ``counts`` and, when given, ``truth``. The
    PNG has one row per example (the first 50): truth (when given) | observed | ``y / q`` |
    the samples (at most 16) | their mean.
    """
    image_shape = tuple(int(d) for d in dataset.image_shape)
    sampler = config.sampling
    counts, survival, truth = read_unthinning_input(
        input_path,
        image_shape,
        int(dataset.max_count),
        t_end=config.diffusion.t_end,
        default_survival=sampler.survival,
    )
    model = load_trained_model(config, workdir, dataset.shape)
    per_sample = sampler.num_posterior_samples
    sharding = parallel.batch_sharding_for(sampler.batch_size)

    def draw(key: jax.Array, observed: jax.Array, q: jax.Array) -> jax.Array:
        return sampling.unthin(
            key,
            model.predict_fn,
            observed,
            jnp.where(q > 0, q, 1.0),  # rows padding the last chunk: q = 0 -> returned as given
            max_count=model.max_count,
            num_steps=sampler.num_steps,
            method=sampler.unthin_method,
            progress=parallel.is_primary(),
            sharding=sharding,
        )

    samples = generate.run_in_chunks(
        stream_key(config.seed, Stream.UNTHIN),
        draw,
        num_examples=len(counts) * per_sample,
        chunk_size=sampler.batch_size,
        inputs=(np.repeat(counts, per_sample, axis=0), np.repeat(survival, per_sample)),
        sharding=sharding,
    )
    samples = samples.reshape(len(counts), per_sample, *image_shape).astype(np.int32)
    mean = samples.mean(axis=1, dtype=np.float64).astype(np.float32)
    path = folder.command_output(workdir, "unthin", model.step)
    if parallel.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {} if truth is None else {"truth": truth}
        np.savez(path, samples=samples, mean=mean, survival=survival, counts=counts, **extra)
        shown = slice(0, 50)
        rows = reporting.unthinning_rows(
            counts[shown],
            survival[shown],
            samples[shown, :16],
            mean[shown],
            None if truth is None else truth[shown],
        )
        reporting.save_sample_grid(
            rows.reshape(-1, *image_shape),
            model.max_count,
            path.with_suffix(".png"),
            columns=rows.shape[1],
        )
    print(
        f"drew {per_sample} posterior samples for each of {len(counts)} thinned examples "
        f"(survival {float(survival.min()):.3g}..{float(survival.max()):.3g}); wrote {path}"
    )
    return path
