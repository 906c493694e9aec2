"""The commands that use a trained run (:func:`blackout_jax.run.trained.open_trained_run`):
sampling, evaluation, imputation and un-thinning with its EMA parameters.

* :func:`sample_run` writes ``WORKDIR/samples/samples_<step>_<draws>.npz`` (array ``samples``,
  ``(N, H, W, C)`` int32 counts, and what drew them: ``method``, ``num_steps``, ``grid`` (the
  times walked), ``grid_name``, ``start``, ``seed``, ``checkpoint_step``) and a PNG beside it.
  ``<draws>`` names the draws (:func:`blackout_jax.run.trained.sample_draws`), so results of
  other settings never replace each other. Chunks are kept under
  ``samples/chunks_<step>_<draws>/`` while drawing, so an interrupted run continues where it
  stopped.
* :func:`evaluate_run` writes ``WORKDIR/eval/metrics_<step>_<draws>.json`` and a copy,
  ``eval/metrics_<step>.json``, the latest evaluation of the step: the likelihood bound over the
  whole held-out split (nats and bits/dim, with a 95% confidence interval over examples) and
  sample-quality metrics of ``sampling.num_samples`` samples
  (:func:`blackout_jax.run.evaluation.evaluate_model`).
* Class-conditional models (``model.num_classes > 0``) sample the classes of
  ``sampling.labels`` with guidance ``sampling.guidance_scale`` (the ``.npz`` also holds
  ``labels`` and ``guidance_scale``); their evaluation adds the bound conditional on the true
  label and, on digits, the fraction of samples the classifier assigns to their label.
* :func:`impute_run` completes the unobserved entries of an ``.npz`` of ``counts`` and
  ``mask`` (``True``/1 = observed) and writes ``WORKDIR/imputed/imputed_<step>_<draws>.npz``.
* :func:`unthin_run` draws posterior samples of the counts behind thinned observations (an
  ``.npz`` of ``counts``, optional ``survival`` and ``truth``, read by
  :mod:`blackout_jax.data.inputs`) with :func:`blackout_jax.unthin`
  and writes ``WORKDIR/unthinned/unthinned_<step>_<draws>.npz`` and a PNG; without a
  ``survival`` array in the input a ``warning:`` line names the ``sampling.survival`` used.

Every process of a multi-host job calls these; process 0 writes the files, each with
:func:`blackout_jax.run.reporting.write_atomically`, after checking that the output folder
takes files before any work (a read-only run folder is named at once, not after the draws).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from blackout_jax import sampling
from blackout_jax.data import CountDataset, inputs, write_count_matrix
from blackout_jax.run import chunked, evaluation, folder, outputs, parallel, reporting, trained
from blackout_jax.run import config as config_lib
from blackout_jax.run.config import ExperimentConfig
from blackout_jax.run.progress import sampler_progress
from blackout_jax.run.streams import Stream, stream_key
from blackout_jax.run.trained import TrainedModel


def sample_run(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    dataset: CountDataset,
    model: TrainedModel,
) -> Path:
    """Draw ``sampling.num_samples`` samples → ``samples/samples_<step>_<draws>.npz`` + PNG;
    count vectors whose data name their features also store the ``feature_names`` in the npz
    and, with anndata installed (``pip install -e ".[cells]"``), write the samples as an
    ``.h5ad`` beside it."""
    if config.sampling.student_calls:
        from blackout_jax.run import students

        return students.student_sample_run(config, workdir, model)
    times = trained.model_sampling_times(config, workdir, model, dataset)
    draws = trained.sample_draws(config, model, times)
    path = outputs.writable_output(workdir, "sample", model.step, draws)
    samples = trained.draw_samples(config, workdir, model, times)
    if parallel.is_primary():
        sampler = config.sampling
        labels = config_lib.sampling_labels(config, sampler.num_samples)
        conditional = (
            {}
            if labels is None
            else {"labels": labels, "guidance_scale": np.asarray(sampler.guidance_scale)}
        )
        names = dataset.feature_names
        named = {} if names is None else {"feature_names": np.asarray(names)}
        reporting.write_npz(
            path,
            samples=samples,
            **_sampler_record(config, times, model.step),
            start=np.asarray(sampler.start),
            **conditional,
            **named,
        )
        if names is not None and importlib.util.find_spec("anndata") is not None:
            write_count_matrix(path.with_suffix(".h5ad"), samples, names)
        grid, columns = samples[:100], None
        if labels is not None:  # one row per class
            grid, columns = reporting.rows_by_label(samples, labels)
        reporting.save_sample_grid(grid, model.max_count, path.with_suffix(".png"), columns=columns)
        shutil.rmtree(folder.sample_chunks_dir(workdir, model.step, draws), ignore_errors=True)
    print(f"wrote {len(samples)} samples of step {model.step} to {path}")
    return path


def evaluate_run(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    dataset: CountDataset,
    model: TrainedModel,
) -> Path:
    """Likelihood bound over the held-out split and sample metrics →
    ``eval/metrics_<step>_<draws>.json`` (:func:`blackout_jax.run.evaluation.evaluate_model`;
    ``<draws>``: :func:`blackout_jax.run.evaluation.evaluation_draws`) and the same results
    in ``eval/metrics_<step>.json``, the latest evaluation of that step. Returns the first."""
    latest = outputs.writable_output(workdir, "evaluate", model.step)
    results = evaluation.evaluate_model(config, workdir, dataset, model)
    draws = evaluation.evaluation_draws(config, results)
    path, latest = folder.evaluation_outputs(workdir, model.step, draws)
    if parallel.is_primary():
        reporting.write_json(path, results)
        reporting.write_json(latest, results)
        if "sampler" in results:
            chunks = folder.sample_chunks_dir(workdir, model.step, results["sampler"]["draws"])
            shutil.rmtree(chunks, ignore_errors=True)
    print(
        f"step {model.step}: {results['bits_per_dim']:.4f} ± {results['bits_per_dim_ci95']:.4f} "
        f"bits/dim on {results['num_test_examples']} held-out examples; wrote {path}"
    )
    if "conditional_bits_per_dim" in results:
        print(
            f"conditional on the true label: {results['conditional_bits_per_dim']:.4f} ± "
            f"{results['conditional_bits_per_dim_ci95']:.4f} bits/dim"
        )
    if "sample_metrics" in results:
        print(f"samples: {evaluation.summarise_sample_metrics(results['sample_metrics'])}")
    return path


def impute_run(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    dataset: CountDataset,
    model: TrainedModel,
    input_path: str | os.PathLike[str],
) -> Path:
    """Complete the unobserved counts of ``input_path`` → ``imputed/imputed_<step>_<draws>.npz``
    (the ``counts`` completed, the ``mask``, and ``method``, ``num_steps``, ``grid``, ``seed``,
    ``checkpoint_step``) + PNG; ``<draws>`` covers the input's arrays and every setting used.

    Chunk ``i`` of ``sampling.batch_size`` examples is imputed with ``fold_in(key, i)``
    (:func:`blackout_jax.run.chunked.run_in_chunks`), split over every device.
    """
    counts, mask = inputs.read_imputation_input(input_path, model.image_shape, model.max_count)
    sampler = config.sampling
    times = trained.model_sampling_times(config, workdir, model, dataset)
    options = {
        "start": sampler.start,
        "resamples": sampler.impute_resamples,
        "particles": sampler.impute_particles,
    }
    draws = folder.draws_name(
        method=sampler.method,
        num_steps=sampler.num_steps,
        grid=sampler.grid,
        seed=config.seed,
        settings={
            "times": np.asarray(times, np.float32),
            **options,
            "chunk_size": sampler.batch_size,
            "max_count": model.max_count,
            "counts": counts,
            "mask": mask,
        },
    )
    path = outputs.writable_output(workdir, "impute", model.step, draws)

    def complete(key: jax.Array, observed_counts: jax.Array, observed: jax.Array) -> jax.Array:
        return sampling.impute(
            key,
            model.predict_fn,
            observed_counts,
            observed,
            times,
            max_count=model.max_count,
            method=sampler.method,
            **options,
            progress=sampler_progress(parallel.is_primary()),
            sharding=parallel.batch_sharding_for(sampler.batch_size),
        )

    completed = chunked.run_in_chunks(
        stream_key(config.seed, Stream.IMPUTE),
        complete,
        num_examples=len(counts),
        chunk_size=sampler.batch_size,
        inputs=(counts, mask),
        sharding=parallel.batch_sharding_for(sampler.batch_size),
    )
    if parallel.is_primary():
        record = _sampler_record(config, times, model.step)
        _write_imputation(path, counts, mask, completed, model.max_count, record)
    print(f"imputed {int((~mask).sum())} missing counts in {len(completed)} examples; wrote {path}")
    return path


def _write_imputation(
    path: Path,
    counts: np.ndarray,
    mask: np.ndarray,
    completed: np.ndarray,
    max_count: int,
    record: dict[str, np.ndarray],
) -> None:
    """The completed ``counts``, the ``mask`` and the sampler ``record`` → ``path``; a PNG of
    the first 50 (observed, completed) pairs beside it."""
    reporting.write_npz(path, counts=completed, mask=mask, **record)
    pairs = reporting.imputation_pairs(counts[:50], mask[:50], completed[:50], max_count)
    reporting.save_sample_grid(
        pairs, max_count, path.with_suffix(".png"), columns=2, log_counts=counts.ndim == 2
    )


def unthin_run(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    model: TrainedModel,
    input_path: str | os.PathLike[str],
) -> Path:
    """Posterior samples of the counts behind thinned observations →
    ``unthinned/unthinned_<step>_<draws>.npz`` + PNG.

    Every example is repeated ``S = sampling.num_posterior_samples`` times and the rows go
    through :func:`blackout_jax.unthin` (``sampling.unthin_method``, ``sampling.num_steps``
    steps from ``t* = -ln q`` to 0) in chunks of ``sampling.batch_size``
    (:func:`blackout_jax.run.chunked.run_in_chunks`, chunk ``i`` with ``fold_in(key, i)``).
    The npz holds ``samples`` ``(N, S, H, W, C)`` int32, their ``mean`` ``(N, H, W, C)``,
    the ``survival`` used ``(N,)``, the observed ``counts``, when given ``truth``, and
    ``method``, ``num_steps``, ``seed``, ``checkpoint_step``; ``<draws>`` covers the input's
    arrays and every setting used. Without a ``survival`` array in the input every example is
    taken as thinned with ``sampling.survival``, named in one ``warning:`` line. The
    PNG has one row per example (the first 50): truth (when given) | observed | ``y / q`` |
    the samples (at most 16) | their mean.
    """
    sampler = config.sampling
    counts, survival, truth = inputs.read_unthinning_input(
        input_path,
        model.image_shape,
        model.max_count,
        t_end=config.diffusion.t_end,
        default_survival=sampler.survival,
        warn=_warn,
    )
    per_sample = sampler.num_posterior_samples
    sharding = parallel.batch_sharding_for(sampler.batch_size)
    path = outputs.writable_output(
        workdir, "unthin", model.step, _unthinning_draws(config, model, counts, survival)
    )

    def draw(key: jax.Array, observed: jax.Array, q: jax.Array) -> jax.Array:
        return sampling.unthin(
            key,
            model.predict_fn,
            observed,
            jnp.where(q > 0, q, 1.0),  # rows padding the last chunk: q = 0 -> returned as given
            max_count=model.max_count,
            num_steps=sampler.num_steps,
            method=sampler.unthin_method,
            progress=sampler_progress(parallel.is_primary()),
            sharding=sharding,
        )

    samples = chunked.run_in_chunks(
        stream_key(config.seed, Stream.UNTHIN),
        draw,
        num_examples=len(counts) * per_sample,
        chunk_size=sampler.batch_size,
        inputs=(np.repeat(counts, per_sample, axis=0), np.repeat(survival, per_sample)),
        sharding=sharding,
    )
    samples = samples.reshape(len(counts), per_sample, *model.image_shape).astype(np.int32)
    if parallel.is_primary():
        provenance = {
            "method": np.asarray(sampler.unthin_method),
            "num_steps": np.asarray(sampler.num_steps),
            "seed": np.asarray(config.seed),
            "checkpoint_step": np.asarray(model.step),
        }
        _write_unthinned(path, samples, counts, survival, truth, model.max_count, provenance)
    print(
        f"drew {per_sample} posterior samples for each of {len(counts)} thinned examples "
        f"(survival {float(survival.min()):.3g}..{float(survival.max()):.3g}); wrote {path}"
    )
    return path


def _write_unthinned(
    path: Path,
    samples: np.ndarray,
    counts: np.ndarray,
    survival: np.ndarray,
    truth: np.ndarray | None,
    max_count: int,
    provenance: dict[str, np.ndarray],
) -> None:
    """The npz of :func:`unthin_run` (with the samples' mean) and its PNG beside it."""
    mean = samples.mean(axis=1, dtype=np.float64).astype(np.float32)
    extra = {} if truth is None else {"truth": truth}
    reporting.write_npz(
        path, samples=samples, mean=mean, survival=survival, counts=counts, **extra, **provenance
    )
    shown = slice(0, 50)
    rows = reporting.unthinning_rows(
        counts[shown],
        survival[shown],
        samples[shown, :16],
        mean[shown],
        None if truth is None else truth[shown],
    )
    reporting.save_sample_grid(
        rows.reshape(-1, *counts.shape[1:]),
        max_count,
        path.with_suffix(".png"),
        columns=rows.shape[1],
    )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _unthinning_draws(
    config: ExperimentConfig, model: TrainedModel, counts: np.ndarray, survival: np.ndarray
) -> str:
    """:func:`~blackout_jax.run.folder.draws_name` of an un-thinning: its sampler settings and
    its input's arrays."""
    sampler = config.sampling
    return folder.draws_name(
        method=sampler.unthin_method,
        num_steps=sampler.num_steps,
        grid=None,
        seed=config.seed,
        settings={
            "posterior_samples": sampler.num_posterior_samples,
            "chunk_size": sampler.batch_size,
            "max_count": model.max_count,
            "counts": counts,
            "survival": survival,
        },
    )


def _sampler_record(config: ExperimentConfig, times: jax.Array, step: int) -> dict[str, np.ndarray]:
    """What drew the arrays of an output npz: ``method``, ``num_steps``, ``grid`` (the times),
    ``grid_name``, ``seed`` and ``checkpoint_step``."""
    sampler = config.sampling
    return {
        "method": np.asarray(sampler.method),
        "num_steps": np.asarray(sampler.num_steps),
        "grid": np.asarray(times, np.float32),
        "grid_name": np.asarray(sampler.grid),
        "seed": np.asarray(config.seed),
        "checkpoint_step": np.asarray(step),
    }
