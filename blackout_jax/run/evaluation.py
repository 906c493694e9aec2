"""Evaluation of a model, the same during training and in ``--mode=evaluate``.

Both report the likelihood bound over held-out examples through :func:`held_out_bound` and
:func:`bound_summary` (``nll_nats``, ``bits_per_dim`` and the half-widths of their 95%
confidence intervals):

* during training, :class:`Evaluator` adds the held-out loss and draws a PNG grid of samples
  with the EMA parameters (the fixed examples of ``eval.num_examples``; stream
  ``TRAINING_EVAL``);
* :func:`evaluate_model` uses the whole held-out split (stream ``EVALUATE_COMMAND``), adds the
  bound conditional on the true label for class-conditional models, and the sample-quality metrics
  of ``sampling.num_samples`` samples (digits: Fréchet distance in a classifier's feature space
  with its real-vs-real floor and the class distribution; image datasets: FID, IS and KID with
  the Inception network, see docs/metrics.md; count vectors: per-gene mean, variance and
  zero-fraction agreement, library sizes and a PCA Fréchet distance with its floor, and a PNG
  of them beside the results).

Both compare the bound with baselines fitted on the training split (:meth:`Evaluator.baselines`,
:func:`baselines`): images the per-position histogram, count vectors the per-gene Poisson,
negative binomial and negative-binomial mixture (:mod:`blackout_jax.metrics.count_baselines`).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from blackout_jax import likelihood, models
from blackout_jax.data import CountDataset
from blackout_jax.run import chunked, folder, held_out, parallel, reporting, trained
from blackout_jax.run import config as config_lib
from blackout_jax.run.config import ExperimentConfig
from blackout_jax.run.streams import Stream, stream_key
from blackout_jax.run.trained import TrainedModel

INCEPTION_DATASETS = ("cifar10", "celeba64")
BASELINE_EXAMPLES = 10_000
"""The baselines are fitted on at most this many training examples."""


def sample_quality_kind(config: ExperimentConfig, dataset: CountDataset) -> str:
    """Which sample metrics ``eval.sample_metrics`` selects: 'digits', 'inception', 'counts'
    or 'none' ('auto': by the dataset, 'counts' for examples of shape ``(D,)``)."""
    chosen = config.eval.sample_metrics
    if chosen != "auto":
        return chosen
    if dataset.name == "digits":
        return "digits"
    if len(dataset.shape.example_shape) == 1:
        return "counts"
    return "inception" if dataset.name in INCEPTION_DATASETS else "none"


def baseline_training_examples(dataset: CountDataset) -> np.ndarray:
    """The first :data:`BASELINE_EXAMPLES` (or fewer) training examples, which the baselines
    are fitted on."""
    indices = np.arange(min(int(dataset.num_train), BASELINE_EXAMPLES))
    return np.asarray(dataset.train_source.read(indices))


def baselines(config: ExperimentConfig, dataset: CountDataset, examples: np.ndarray) -> dict:
    """Bits per entry of baselines fitted on (at most :data:`BASELINE_EXAMPLES` of) the
    training split and scored on ``examples``: for count vectors ``(D,)``
    ``baseline_poisson_bits_per_dim``, ``baseline_nb_bits_per_dim`` and
    ``baseline_nb_mixture_bits_per_dim`` (with the mixture's ``..._num_components``; see
    :func:`blackout_jax.metrics.count_baselines.baseline_bits_per_entry`), for images
    ``histogram_baseline_bits_per_dim``
    (:func:`blackout_jax.run.held_out.histogram_bits_per_dim`)."""
    train = baseline_training_examples(dataset)
    if len(dataset.shape.example_shape) != 1:
        return {
            "histogram_baseline_bits_per_dim": held_out.histogram_bits_per_dim(
                train, examples, dataset.shape.max_count
            )
        }
    from blackout_jax.metrics import count_baselines

    fitted = count_baselines.baseline_bits_per_entry(train, examples, seed=config.seed)
    return {name: value for name, value in fitted.items() if not isinstance(value, dict)}


BASELINES = {
    "histogram_baseline_bits_per_dim": "independent per-position histograms",
    "baseline_poisson_bits_per_dim": "a per-gene Poisson",
    "baseline_nb_bits_per_dim": "a per-gene negative binomial",
    "baseline_nb_mixture_bits_per_dim": "a negative-binomial mixture",
}
"""The baselines' result keys, and what each is in words."""


def best_baseline(results: dict) -> tuple[str, float]:
    """``(what, bits)`` of the lowest of the :data:`BASELINES` in ``results``."""
    name = min((name for name in BASELINES if name in results), key=results.__getitem__)
    return BASELINES[name], results[name]


class Evaluator:
    """Held-out loss, bits/dim and a sample grid with the EMA parameters."""

    def __init__(
        self, config: ExperimentConfig, dataset: CountDataset, graphdef: nnx.GraphDef, rest: Any
    ) -> None:
        self.config = config
        self.graphdef, self.rest = graphdef, rest
        self.max_count = dataset.shape.max_count
        self.image_shape = dataset.shape.example_shape
        self.examples = np.asarray(dataset.test_examples(config.eval.num_examples or None))
        self.key = stream_key(config.seed, Stream.TRAINING_EVAL)
        self.times = config_lib.fixed_sampling_times(config)

    def metrics(self, ema_params: Any) -> dict[str, float]:
        """Held-out loss and the likelihood bound (:func:`bound_summary`) on the fixed examples."""
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
        nats = held_out_bound(
            jax.random.fold_in(self.key, 1),
            lambda labels: predict_fn,
            self.examples,
            config,
            self.max_count,
        )
        return {
            "loss": float(np.mean(loss)),
            **bound_summary(nats, math.prod(self.image_shape)),
            "num_examples": len(nats),
        }

    def baselines(self, dataset: CountDataset) -> dict:
        """:func:`baselines` of the evaluation examples."""
        return baselines(self.config, dataset, self.examples)

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
        predict_for = functools.partial(
            models.make_predict_fn,
            self.graphdef,
            ema_params,
            self.rest,
            guidance_scale=self.config.sampling.guidance_scale,
        )
        return chunked.generate_samples(
            jax.random.fold_in(jax.random.fold_in(self.key, 2), step),
            predict_for,
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


def evaluate_model(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    dataset: CountDataset,
    model: TrainedModel,
) -> dict[str, Any]:
    """The results of ``--mode=evaluate``: the bound over the whole held-out split (and, for a
    conditional model, the bound given the true labels), then the sample metrics that
    :func:`sample_quality_kind` selects.

    Raises:
      FileNotFoundError: Inception metrics were asked for and the weights file is missing
        (checked before any sampling).
    """
    kind = sample_quality_kind(config, dataset)
    extractor = _inception_extractor(config) if kind == "inception" else None
    key = stream_key(config.seed, Stream.EVALUATE_COMMAND)
    examples = np.asarray(dataset.test_examples(None))
    nats = held_out_bound(key, model.predict_for, examples, config, model.max_count)
    results: dict[str, Any] = {
        "step": model.step,
        "num_test_examples": len(nats),
        "num_time_samples": config.eval.num_time_samples,
        **bound_summary(nats, math.prod(model.image_shape)),
        **baselines(config, dataset, examples),
    }
    if config.model.num_classes:
        conditional = held_out_bound(
            key,  # the same time draws as the unconditional bound
            model.predict_for,
            examples,
            config,
            model.max_count,
            labels=np.asarray(dataset.test_labels(None)),
        )
        results.update(
            bound_summary(conditional, math.prod(model.image_shape), prefix="conditional_")
        )
    if kind != "none":
        results.update(_sample_quality(config, workdir, dataset, model, kind, extractor))
    return results


def evaluation_draws(config: ExperimentConfig, results: dict[str, Any]) -> str:
    """:func:`blackout_jax.run.folder.evaluation_draws` of the results of
    :func:`evaluate_model`: the samples' draws (if any) and the bound's settings."""
    sampler = results.get("sampler")
    settings = {
        "num_time_samples": config.eval.num_time_samples,
        "num_test_examples": results["num_test_examples"],
        "sample_metrics": config.eval.sample_metrics,
        "kid_subset_size": config.eval.kid_subset_size,
    }
    return folder.evaluation_draws(
        seed=config.seed,
        settings=settings,
        sample_draws=None if sampler is None else sampler["draws"],
    )


def fidelity_plot_path(metrics_path: str | os.PathLike[str]) -> Path:
    """Where ``--mode=evaluate`` draws the count-fidelity PNG: beside its results file."""
    return Path(metrics_path).with_suffix(".png")


def _inception_extractor(config: ExperimentConfig) -> Any:
    from blackout_jax.metrics import inception

    return inception.TorchFidelityInception(config.eval.inception_weights or None)


def _sample_quality(
    config: ExperimentConfig,
    workdir: str | os.PathLike[str],
    dataset: CountDataset,
    model: TrainedModel,
    kind: str,
    extractor: Any,
) -> dict[str, Any]:
    """``{"sampler": ..., "sample_metrics": ...}`` of ``sampling.num_samples`` samples."""
    times = trained.model_sampling_times(config, workdir, model, dataset)
    samples = trained.draw_samples(config, workdir, model, times)
    sampler = config.sampling
    described = {
        "method": sampler.method,
        "num_steps": sampler.num_steps,
        "grid": sampler.grid,
        "start": sampler.start,
        "dropout": sampler.dropout,
        "num_samples": len(samples),
        "draws": trained.sample_draws(config, model, times),
    }
    labels = config_lib.sampling_labels(config, sampler.num_samples)
    if labels is not None:
        described["labels"] = sampler.labels
        described["guidance_scale"] = sampler.guidance_scale
    if kind == "counts":
        from blackout_jax.metrics import count_fidelity

        real = np.asarray(dataset.test_examples(None))
        metrics = count_fidelity.count_sample_fidelity(samples, real, seed=config.seed)
        if parallel.is_primary():
            path = fidelity_plot_path(folder.command_output(workdir, "evaluate", model.step))
            path.parent.mkdir(parents=True, exist_ok=True)
            reporting.write_atomically(
                path, lambda file: count_fidelity.plot_count_fidelity(samples, real, file)
            )
    elif kind == "digits":
        from blackout_jax.metrics import digits_features

        metrics = digits_features.digits_sample_metrics(samples)
        if labels is not None:
            metrics["label_accuracy"] = digits_features.label_accuracy(samples, labels)
    else:
        metrics = _inception_metrics(config, dataset, samples, extractor)
    return {"sampler": described, "sample_metrics": metrics}


def held_out_bound(
    key: jax.Array,
    predict_for: chunked.PredictFor,
    examples: np.ndarray,
    config: ExperimentConfig,
    max_count: int,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """The bound in nats ``(N,)`` of each of the ``examples`` ``(N, ...)``
    (:func:`blackout_jax.run.held_out.bound_over` with the ``eval`` settings of ``config``;
    batch ``i`` with ``predict_for(labels=y_i)``, ``y_i = None`` without ``labels``)."""
    return held_out.bound_over(
        key,
        predict_for,
        examples,
        batch_size=config.eval.batch_size,
        t_end=config.diffusion.t_end,
        max_count=max_count,
        num_time_samples=config.eval.num_time_samples,
        labels=labels,
    )


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
    config: ExperimentConfig, dataset: CountDataset, samples: np.ndarray, extractor: Any
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
