"""The experiment config, typed: one frozen dataclass per section, the single source of truth.

Every field, its type, its default (the digits run), its meaning and its allowed values are
declared once, with :func:`blackout_jax.settings.setting`: the sections below and the network's
:class:`blackout_jax.models.NCSNppConfig` (the ``model`` section). ``configs/default.py`` turns
the defaults into an ``ml_collections.ConfigDict``; the other files in ``configs/`` override it;
the command line overrides them again (``--config.training.num_steps=2000``). :func:`parse`
then builds an :class:`ExperimentConfig` from the nested dict, checking every field and the
fields against each other, once per command; the run layer reads only that typed object.

Sections: ``data`` (:class:`DataConfig`), ``diffusion`` (:class:`DiffusionConfig`), ``model``
(the network named by ``model.name``: :class:`blackout_jax.models.NCSNppConfig` for images,
:class:`blackout_jax.models.CountMLPConfig` for count vectors; :data:`MODEL_CONFIGS`),
``training`` (:class:`TrainingConfig`), ``eval``
(:class:`EvalConfig`), ``sampling`` (:class:`SamplingConfig`) and the top-level ``seed``.
:func:`describe` prints every field with its value and meaning (``--mode=show_config``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from blackout_jax import schedule, settings
from blackout_jax.data import DATASET_NAMES, FEATURE_SELECTIONS
from blackout_jax.losses import WEIGHTINGS
from blackout_jax.models import CountMLPConfig, NCSNppConfig
from blackout_jax.models.ncsnpp import CIFAR10_REFERENCE
from blackout_jax.sampling import METHODS, STARTS
from blackout_jax.schedule import GRIDS
from blackout_jax.settings import setting

SAMPLE_METRICS = ("auto", "digits", "inception", "none")
BALANCED_LABELS = "balanced"
OPTIMISED_GRID = "optimised"  # a grid fitted to a trained model: see blackout_jax.run.inference


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the counts come from (:func:`blackout_jax.data.load_dataset`)."""

    name: str = setting("digits", "the dataset", choices=DATASET_NAMES)
    data_dir: str = setting("", "TFDS data directory ('' = $TFDS_DATA_DIR or TFDS's default)")
    path: str = setting(
        "",
        "own counts (data.name 'counts'): an .npy/.npz file or a PNG folder of images, or "
        "count vectors (cells x genes): an (N, D) .npy/.npz, 10x .h5, .mtx(.gz) or its folder, "
        ".csv/.tsv(.gz), .h5ad or scipy sparse .npz; several files of one gene space "
        "separated by commas",
    )
    array_key: str = setting(
        "", "the array in an .npz file ('' = the first one), or the layer of an .h5ad ('' = X)"
    )
    max_count: int = setting(
        16, "largest count N; 0 = infer from the data ('counts' only)", minimum=0
    )
    num_test: int = setting(297, "held-out examples split off ('digits' and 'counts')", minimum=0)
    allow_large_test_share: bool = setting(
        False,
        "train even when data.num_test holds out more than half of the examples (refused "
        "otherwise, naming the counts)",
    )
    random_flip: bool = setting(False, "random left-right flips in training (cifar10, celeba64)")
    prefetch: int = setting(2, "training batches prepared ahead", minimum=0)
    num_features: int = setting(
        0,
        "count vectors: keep this many features (genes), the top ones by "
        "data.feature_selection over the training split, in their original order (0 = all)",
        minimum=0,
    )
    feature_selection: str = setting(
        "mean",
        "count vectors: the statistic of the training split's raw counts that picks the "
        "data.num_features kept features",
        choices=FEATURE_SELECTIONS,
    )
    label_key: str = setting(
        "",
        "count vectors from an .h5ad: the obs column holding class labels "
        "(model.num_classes > 0; strings are numbered in sorted order)",
    )


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """The death process and the training loss (DESIGN §2)."""

    t_end: float = setting(10.0, "end time of the death process", strictly_above=0.0)
    num_steps: int = setting(
        1000,
        "T, intervals of the training time grid (observation_times(T, t_end)); not the "
        "optimiser's steps (training.num_steps) nor the sampler's (sampling.num_steps)",
        minimum=1,
    )
    weighting: str = setting("elbo", "loss weighting w(t)", choices=WEIGHTINGS)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The optimiser, the EMA and the loop's periods."""

    num_steps: int = setting(1000, "optimiser updates to train for", minimum=1)
    batch_size: int = setting(128, "global batch size", minimum=1)
    learning_rate: float = setting(1e-3, "Adam learning rate", strictly_above=0.0)
    warmup_steps: int = setting(
        200, "linear learning-rate warm-up over this many updates (0 = none)", minimum=0
    )
    grad_clip_norm: float = setting(
        1.0, "clip gradients to this global norm (0 = no clipping)", minimum=0.0
    )
    ema_decay: float = setting(
        0.999,
        "EMA decay cap; update s uses min(ema_decay, (1 + s) / (10 + s))",
        minimum=0.0,
        below=1.0,
    )
    log_every: int = setting(50, "steps between metrics rows", minimum=1)
    eval_every: int = setting(500, "steps between evaluations (and at the end)", minimum=1)
    checkpoint_every: int = setting(250, "steps between checkpoints (and at the end)", minimum=1)
    keep_checkpoints: int = setting(3, "how many of the latest checkpoints to keep", minimum=1)
    keep_every: int = setting(0, "also keep every K-th step's checkpoint (0 = off)", minimum=0)
    max_consecutive_nonfinite: int = setting(
        20, "stop after this many skipped non-finite updates in a row", minimum=1
    )
    preempted_exit_code: int = setting(
        75,
        "exit status after a SIGTERM/SIGINT saved the run (resume by rerunning; 0 if a "
        "scheduler must read it as finished)",
        minimum=0,
    )
    label_dropout: float = setting(
        0.0,
        "conditional models (model.num_classes > 0): probability that a training label is "
        "replaced by the null label, for classifier-free guidance",
        minimum=0.0,
        below=1.0,
    )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The held-out loss, the likelihood bound and the sample metrics."""

    num_examples: int = setting(
        0, "held-out examples evaluated during training (0 = the whole split)", minimum=0
    )
    num_time_samples: int = setting(16, "stratified time draws per example (bound)", minimum=1)
    batch_size: int = setting(256, "examples per evaluation batch", minimum=1)
    num_grid_samples: int = setting(64, "samples in the PNG grid of each evaluation", minimum=0)
    sample_metrics: str = setting(
        "auto",
        "--mode=evaluate: auto = digits classifier for digits, Inception for images, none else",
        choices=SAMPLE_METRICS,
    )
    inception_weights: str = setting(
        "", "local Inception weights file ('' = $BLACKOUT_JAX_INCEPTION_WEIGHTS or default)"
    )
    reference_cache_dir: str = setting(
        "", "cached training-set statistics ('' = ~/.cache/blackout_jax/reference)"
    )
    kid_subset_size: int = setting(1000, "KID subset size", minimum=2)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """The sampler of the inference modes (every mode but train) and of the training-time grids."""

    num_samples: int = setting(64, "samples drawn by --mode=sample/evaluate", minimum=1)
    num_steps: int = setting(
        100,
        "sampler steps K, intervals of the sampler's time grid (network calls per step: 1, "
        "or 2 for the trapezoidal methods)",
        minimum=1,
    )
    method: str = setting("binomial_bridge", "sampler", choices=METHODS)
    grid: str = setting(
        "logit",
        "sampler times: 'logit' = a fresh num_steps-point reference grid, 'subgrid' = every "
        "d-th training time as the reference does, 'optimised' = times chosen for the trained "
        "model (blackout_jax.grids.optimised_grid), saved as WORKDIR/grids/optimised_<step>_<K>"
        ".json on first use",
        choices=(*GRIDS, OPTIMISED_GRID),
    )
    start: str = setting(
        "prior",
        "the state at t_end: 'prior' = a draw of the bound's Poisson prior, 'zeros' = an "
        "all-zero image as the reference does",
        choices=STARTS,
    )
    dropout: bool = setting(
        False,
        "run the network with dropout active while sampling (inference modes), as the "
        "reference's generation does",
    )
    batch_size: int = setting(64, "samples per compiled call (one chunk)", minimum=1)
    checkpoint_step: int = setting(-1, "checkpoint to use (-1 = the latest)", minimum=-1)
    impute_resamples: int = setting(
        1, "--mode=impute: takes of each step, thinned back between takes", minimum=1
    )
    impute_particles: int = setting(
        5, "--mode=impute: particles per example, reweighted and resampled", minimum=1
    )
    survival: float = setting(
        0.5,
        "--mode=unthin: survival q in (0, 1] with which the observations were thinned, when "
        "--input has no 'survival' array",
        strictly_above=0.0,
        maximum=1.0,
    )
    num_posterior_samples: int = setting(
        16, "--mode=unthin: posterior samples per example", minimum=1
    )
    unthin_method: str = setting(
        "trapezoidal_bridge",
        "--mode=unthin: sampler (the default rounds without bias; see blackout_jax.unthin)",
        choices=METHODS,
    )
    labels: str = setting(
        BALANCED_LABELS,
        "conditional models: the class of each sample, 'balanced' = equal counts per class "
        "(sorted by class) or comma-separated integers such as '3' or '0,1,7' (repeated to "
        "sampling.num_samples)",
    )
    guidance_scale: float = setting(
        0.0,
        "conditional models: classifier-free guidance w, yhat = yhat_c^(1 + w) / yhat_null^w "
        "(0 = the conditional model)",
        minimum=0.0,
    )


DIGITS_MODEL = dataclasses.replace(
    CIFAR10_REFERENCE,
    nf=32,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
)
"""The network of the digits run: the reference NCSN++ at width 32, three levels, one block."""


ModelConfig = NCSNppConfig | CountMLPConfig

MODEL_CONFIGS: dict[str, ModelConfig] = {
    "ncsnpp": CIFAR10_REFERENCE,
    "count_mlp": CountMLPConfig(),
}
"""The networks ``model.name`` chooses, each with the defaults of its own fields."""


def model_defaults(name: str) -> dict[str, Any]:
    """Every field of the network ``name`` at its default, as a dict: a config file switching
    networks sets ``config.model = ml_collections.ConfigDict(model_defaults("count_mlp"))``."""
    if name not in MODEL_CONFIGS:
        settings.fail("model.name", f"one of {sorted(MODEL_CONFIGS)}", name)
    return dataclasses.asdict(MODEL_CONFIGS[name])


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
