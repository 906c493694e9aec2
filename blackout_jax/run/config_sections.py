"""The sections of the experiment config: one frozen dataclass per section, fields only.

Every field, its type, its default (the digits run), its meaning and its allowed values are
declared once here, with :func:`blackout_jax.settings.setting`; the ``model`` section is the
network's own config (:class:`blackout_jax.models.NCSNppConfig` or
:class:`blackout_jax.models.CountMLPConfig`, chosen by ``model.name``: :data:`MODEL_CONFIGS`).
:mod:`blackout_jax.run.config` gathers them into its ``ExperimentConfig`` and parses and checks a
config once per command; import them from there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from blackout_jax import settings
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
    eval_every: int = setting(
        500, "steps between evaluations (and at the end); each is checkpointed first", minimum=1
    )
    checkpoint_every: int = setting(
        250, "steps between checkpoints (and at the end and every evaluation)", minimum=1
    )
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
    student_calls: int = setting(
        0,
        "--mode=sample: draw with the distilled student of this many network calls "
        "(WORKDIR/students/<K>calls, made by --mode=distill); 0 = the teacher's sampler",
        minimum=0,
    )


DISTILL_GRIDS = ("logit", OPTIMISED_GRID)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """--mode=distill: a few-call mixture student (blackout_jax.distill) fitted to the EMA
    teacher's trajectories."""

    num_calls: int = setting(4, "network calls (steps) of the student", minimum=1)
    grid: str = setting(
        OPTIMISED_GRID,
        "the student's times: 'logit' = observation_times(num_calls, t_end), 'optimised' = "
        "the grid fitted to the teacher (as sampling.grid)",
        choices=DISTILL_GRIDS,
    )
    teacher_method: str = setting(
        "trapezoidal_bridge", "the sampler whose trajectories the student fits", choices=METHODS
    )
    teacher_steps: int = setting(
        50, "steps of the teacher's logit grid (merged with the student's times)", minimum=1
    )
    num_trajectories: int = setting(
        4096, "teacher trajectories drawn once and kept (teacher_states.npz)", minimum=1
    )
    num_components: int = setting(128, "J, the mixture components of each student step", minimum=1)
    hidden: int = setting(512, "units of each of the student's two hidden layers", minimum=1)
    num_steps: int = setting(3000, "Adam updates of the student", minimum=1)
    batch_size: int = setting(128, "trajectories per update (every step of each)", minimum=1)
    learning_rate: float = setting(1e-3, "Adam learning rate", strictly_above=0.0)
    log_every: int = setting(100, "updates between metrics rows", minimum=1)
    checkpoint_every: int = setting(500, "updates between checkpoints (and at the end)", minimum=1)


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
