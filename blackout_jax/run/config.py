"""The experiment config, typed: one frozen dataclass per section, the single source of truth.

Every field, its type, its default (the digits run), its meaning and its allowed values are
declared once, with :func:`blackout_jax.settings.setting`, in
:mod:`blackout_jax.run.config_sections` (re-exported here) and the network's own config (the
``model`` section). ``configs/default.py`` turns
the defaults into an ``ml_collections.ConfigDict``; the other files in ``configs/`` override it;
the command line overrides them again (``--config.training.num_steps=2000``). :func:`parse`
then builds an :class:`ExperimentConfig` from the nested dict, checking every field and the
fields against each other, once per command; the run layer reads only that typed object.

Sections: ``data`` (:class:`DataConfig`), ``diffusion`` (:class:`DiffusionConfig`), ``model``
(the network named by ``model.name``: :class:`blackout_jax.models.NCSNppConfig` for images,
:class:`blackout_jax.models.CountMLPConfig` for count vectors; :data:`MODEL_CONFIGS`),
``training`` (:class:`TrainingConfig`), ``eval``
(:class:`EvalConfig`), ``sampling`` (:class:`SamplingConfig`), ``distill``
(:class:`DistillConfig`) and the top-level ``seed``.
:func:`describe` prints every field with its value and meaning (``--mode=show_config``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from blackout_jax import schedule, settings
from blackout_jax.run.config_sections import (
    BALANCED_LABELS,
    DIGITS_MODEL,
    MODEL_CONFIGS,
    OPTIMISED_GRID,
    SAMPLE_METRICS,
    DataConfig,
    DiffusionConfig,
    DistillConfig,
    EvalConfig,
    ModelConfig,
    SamplingConfig,
    TrainingConfig,
    model_defaults,
)
from blackout_jax.settings import setting

__all__ = [
    "BALANCED_LABELS",
    "DIGITS_MODEL",
    "MODEL_CONFIGS",
    "OPTIMISED_GRID",
    "SAMPLE_METRICS",
    "DataConfig",
    "DiffusionConfig",
    "DistillConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ModelConfig",
    "SamplingConfig",
    "TrainingConfig",
    "balanced_labels",
    "default_dict",
    "describe",
    "fixed_sampling_times",
    "model_defaults",
    "parse",
    "sampling_labels",
]


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment; build it with :func:`parse`."""

    seed: int = setting(0, "seeds the initialisation, the data order and every draw", minimum=0)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    model: ModelConfig = dataclasses.field(default_factory=lambda: DIGITS_MODEL)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-ready; tuples become lists in JSON)."""
        return dataclasses.asdict(self)


def default_dict() -> dict[str, Any]:
    """Every config field with its default, as nested dicts (``configs/default.py`` uses it)."""
    return ExperimentConfig().to_dict()


def _sections() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(ExperimentConfig) if f.name != "seed")


def parse(config: Any, *, device_count: int = 1, process_count: int = 1) -> ExperimentConfig:
    """The typed :class:`ExperimentConfig` of a ConfigDict or nested mapping, every field checked.

    Missing fields take their defaults (those of :class:`ExperimentConfig`); an
    :class:`ExperimentConfig` is checked across fields and returned unchanged. Besides each
    field's own bounds (:func:`blackout_jax.settings.check_value`) the fields are checked
    against each other: ``data.path`` for own counts, ``sampling.num_steps`` against the
    training grid, ``data.max_count``, the class-conditional fields and ``sampling.labels``
    against ``model.num_classes``, and the batch sizes against ``device_count`` and
    ``process_count``.

    Raises:
      ValueError: an unknown field, a value of the wrong type or out of range, or fields that
        contradict each other; the message names the field (``training.batch_size``) and the
        value.
    """
    experiment = config if isinstance(config, ExperimentConfig) else _build(config)
    _check_across_fields(experiment)
    _check_conditional_fields(experiment)
    _check_devices(experiment, device_count, process_count)
    return experiment


def _build(config: Any) -> ExperimentConfig:
    values, defaults = settings.plain(config), ExperimentConfig()
    for key in values:
        if key != "seed" and key not in _sections():
            raise ValueError(
                f"config field {key} is unknown; the config sections are "
                f"{sorted(_sections())} and seed"
            )
    built: dict[str, Any] = {}
    for section in _sections():
        given = values.get(section, {})
        if not isinstance(given, Mapping) and not hasattr(given, "to_dict"):
            raise ValueError(f"config field {section} must be a section, got {given!r}")
        given = settings.plain(given)
        built[section] = settings.build(
            _section_defaults(defaults, section, given), given, section=section
        )
    seed_field = next(f for f in dataclasses.fields(ExperimentConfig) if f.name == "seed")
    seed = settings.check_value("seed", seed_field, values.get("seed", defaults.seed))
    return ExperimentConfig(seed=seed, **built)


def _section_defaults(defaults: ExperimentConfig, section: str, given: dict[str, Any]) -> Any:
    """The defaults a section's given fields replace: for ``model``, those of the network
    ``model.name`` names (:data:`MODEL_CONFIGS`)."""
    if section != "model":
        return getattr(defaults, section)
    name = given.get("name", defaults.model.name)
    if name not in MODEL_CONFIGS:
        settings.fail("model.name", f"one of {sorted(MODEL_CONFIGS)}", name)
    network = defaults.model if name == defaults.model.name else MODEL_CONFIGS[name]
    unknown = sorted(set(given) - {field.name for field in dataclasses.fields(network)})
    if unknown and name != defaults.model.name:
        raise ValueError(
            f"config field model.name = {name!r} takes other fields than {unknown}: replace "
            f"the whole section, config.model = ml_collections.ConfigDict("
            f"config_lib.model_defaults({name!r})), as configs/vectors_tiny.py does"
        )
    return network


def _check_across_fields(config: ExperimentConfig) -> None:
    data = config.data
    if data.name == "counts" and not data.path:
        raise ValueError(
            "config field data.path must name your counts file (.npy/.npz), PNG folder or "
            "count-matrix files when data.name is 'counts', got ''"
        )
    sampler, num_times = config.sampling, config.diffusion.num_steps
    if sampler.grid == "subgrid" and (
        sampler.num_steps > num_times or num_times % sampler.num_steps
    ):
        raise ValueError(
            "config field sampling.num_steps must divide diffusion.num_steps = "
            f"{num_times} with sampling.grid 'subgrid' (every d-th training time), got "
            f"{sampler.num_steps}; choose a divisor or sampling.grid 'logit'"
        )
    if data.max_count == 0 and data.name != "counts":
        raise ValueError(
            "config field data.max_count must be >= 1 (0 = infer from the data is only for "
            f"data.name 'counts'), got 0 for data.name {data.name!r}"
        )


def fixed_sampling_times(config: ExperimentConfig) -> Any:
    """The sampler's times of ``config.sampling`` (:func:`blackout_jax.schedule.sampling_times`).

    For ``sampling.grid = "optimised"``, which needs a trained model
    (:func:`blackout_jax.run.trained.model_sampling_times`), the ``"logit"`` grid: the sample grids
    drawn during training use it.
    """
    grid = config.sampling.grid
    return schedule.sampling_times(
        "logit" if grid == OPTIMISED_GRID else grid,
        config.sampling.num_steps,
        t_end=config.diffusion.t_end,
        diffusion_steps=config.diffusion.num_steps,
    )


def _check_conditional_fields(config: ExperimentConfig) -> None:
    """An unconditional model (``model.num_classes = 0``) needs ``training.label_dropout = 0``,
    ``sampling.guidance_scale = 0`` and ``sampling.labels = 'balanced'``; a conditional one
    well-formed ``sampling.labels``."""
    sampling_labels(config, 1)
    if config.model.num_classes:
        return
    for name, value in (
        ("training.label_dropout", config.training.label_dropout),
        ("sampling.guidance_scale", config.sampling.guidance_scale),
    ):
        if value != 0:
            raise ValueError(
                f"config field {name} must be 0 for an unconditional model "
                f"(model.num_classes = 0), got {value}"
            )


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """``floor(i C / n)`` for sample ``i`` of ``n``: classes in order, their counts differing by
    at most one; ``np.int32 (n,)``."""
    return (np.arange(num_samples, dtype=np.int64) * num_classes // num_samples).astype(np.int32)


def sampling_labels(config: ExperimentConfig, num_samples: int) -> np.ndarray | None:
    """The class labels of ``num_samples`` samples of ``sampling.labels``: ``np.int32``
    ``(num_samples,)``, or ``None`` for an unconditional model.

    ``"balanced"``: sample ``i`` gets ``floor(i C / num_samples)`` (``C = model.num_classes``),
    so classes come in order and their counts differ by at most one; a comma-separated list
    ``"l_0,...,l_{m-1}"``: sample ``i`` gets ``l_{i mod m}``.

    Raises:
      ValueError: a list entry that is not an integer in ``[0, C)``, or labels other than
        ``"balanced"`` for an unconditional model; naming the field, the entry and its value.
    """
    spec, num_classes = config.sampling.labels.strip(), config.model.num_classes
    if num_classes == 0:
        if spec != BALANCED_LABELS:
            raise ValueError(
                "config field sampling.labels must stay 'balanced' for an unconditional model "
                f"(model.num_classes = 0), got {config.sampling.labels!r}"
            )
        return None
    if spec == BALANCED_LABELS:
        return balanced_labels(num_samples, num_classes)
    entries = spec.split(",")
    labels = []
    for index, entry in enumerate(entries):
        text = entry.strip()
        if not text.lstrip("-").isdigit() or not 0 <= int(text) < num_classes:
            raise ValueError(
                f"config field sampling.labels must be 'balanced' or comma-separated integers "
                f"in [0, {num_classes}), got {config.sampling.labels!r} (entry {index} = "
                f"{text!r})"
            )
        labels.append(int(text))
    return np.resize(np.asarray(labels, np.int32), num_samples)


def _check_devices(config: ExperimentConfig, device_count: int, process_count: int) -> None:
    """The global training and evaluation batches must split evenly over devices and processes."""
    for name, value in (
        ("training.batch_size", config.training.batch_size),
        ("eval.batch_size", config.eval.batch_size),
    ):
        for count, what in ((device_count, "device count"), (process_count, "process count")):
            if value % count:
                raise ValueError(
                    f"config field {name} must be divisible by the {what} {count}, got {value}"
                )


def describe(config: ExperimentConfig) -> str:
    """Every field as ``section.field = value  # meaning``, one per line."""
    lines = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if not dataclasses.is_dataclass(value):
            lines.append(settings.describe(field.name, field, value))
            continue
        for inner in dataclasses.fields(value):
            name = f"{field.name}.{inner.name}"
            lines.append(settings.describe(name, inner, getattr(value, inner.name)))
    return "\n".join(lines)
