"""Checks of an experiment config before anything is written.

:func:`validate_config` compares a config (``ml_collections.ConfigDict`` or nested mapping)
with the schema below: every field of ``configs/default.py`` and nothing else, each with its
type and allowed values, plus the checks that involve several fields or the devices (the
global batch must split evenly over the devices). The first problem raises ``ValueError``
naming the field (``training.batch_size``, ...) and the value found.

The ``model`` fields are checked by the network's own parser
(:func:`blackout_jax.models.parse_config`). Values that depend on the data (image size against
the network's downsampling, counts against ``data.max_count``) are checked by the data loader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from blackout_jax.losses import WEIGHTINGS
from blackout_jax.sampling import METHODS

DATASETS = ("digits", "cifar10", "binarized_mnist", "celeba64", "counts")

Check = Callable[[str, Any], None]


def _fail(field: str, requirement: str, value: Any) -> None:
    raise ValueError(f"config field {field} must be {requirement}, got {value!r}")


def _integer(minimum: int | None = None) -> Check:
    def check(field: str, value: Any) -> None:
        requirement = "an int" + (f" >= {minimum}" if minimum is not None else "")
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(field, requirement, value)
        if minimum is not None and value < minimum:
            _fail(field, requirement, value)

    return check


def _number(
    minimum: float | None = None, *, strict: bool = False, below: float | None = None
) -> Check:
    def check(field: str, value: Any) -> None:
        parts = ["a finite number"]
        if minimum is not None:
            parts.append(f"{'>' if strict else '>='} {minimum}")
        if below is not None:
            parts.append(f"< {below}")
        requirement = " ".join(parts)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(field, requirement, value)
        if not math.isfinite(value):
            _fail(field, requirement, value)
        if minimum is not None and (value <= minimum if strict else value < minimum):
            _fail(field, requirement, value)
        if below is not None and value >= below:
            _fail(field, requirement, value)

    return check


def _choice(options: tuple[str, ...]) -> Check:
    def check(field: str, value: Any) -> None:
        if value not in options:
            _fail(field, f"one of {options}", value)

    return check


def _boolean(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(field, "True or False", value)


def _string(field: str, value: Any) -> None:
    if not isinstance(value, str):
        _fail(field, "a string", value)


def _checked_by_model(field: str, value: Any) -> None:
    """Network fields are checked together by ``blackout_jax.models.parse_config``."""
    del field, value


SCHEMA: dict[str, Check] = {
    "seed": _integer(0),
    "data.name": _choice(DATASETS),
    "data.data_dir": _string,
    "data.path": _string,
    "data.array_key": _string,
    "data.max_count": _integer(0),
    "data.num_test": _integer(1),
    "data.random_flip": _boolean,
    "data.prefetch": _integer(0),
    "diffusion.t_end": _number(0.0, strict=True),
    "diffusion.num_steps": _integer(1),
    "diffusion.weighting": _choice(WEIGHTINGS),
    "model.name": _checked_by_model,
    "model.nf": _checked_by_model,
    "model.ch_mult": _checked_by_model,
    "model.num_res_blocks": _checked_by_model,
    "model.attn_resolutions": _checked_by_model,
    "model.resblock_type": _checked_by_model,
    "model.skip_rescale": _checked_by_model,
    "model.resamp_with_conv": _checked_by_model,
    "model.fir": _checked_by_model,
    "model.fir_kernel": _checked_by_model,
    "model.progressive": _checked_by_model,
    "model.progressive_input": _checked_by_model,
    "model.progressive_combine": _checked_by_model,
    "model.dropout": _checked_by_model,
    "model.embedding_type": _checked_by_model,
    "model.fourier_scale": _checked_by_model,
    "model.time_input": _checked_by_model,
    "model.init_scale": _checked_by_model,
    "model.conv_size": _checked_by_model,
    "model.input_transform": _checked_by_model,
    "model.output_transform": _checked_by_model,
    "model.dtype": _checked_by_model,
    "model.inference_dtype": _checked_by_model,
    "training.num_steps": _integer(1),
    "training.batch_size": _integer(1),
    "training.learning_rate": _number(0.0, strict=True),
    "training.warmup_steps": _integer(0),
    "training.grad_clip_norm": _number(0.0),
    "training.ema_decay": _number(0.0, below=1.0),
    "training.log_every": _integer(1),
    "training.eval_every": _integer(1),
    "training.checkpoint_every": _integer(1),
    "training.keep_checkpoints": _integer(1),
    "training.keep_every": _integer(0),
    "training.max_consecutive_nonfinite": _integer(1),
    "eval.num_examples": _integer(0),
    "eval.num_time_samples": _integer(1),
    "eval.batch_size": _integer(1),
    "eval.num_grid_samples": _integer(0),
    "eval.sample_metrics": _choice(("auto", "digits", "inception", "none")),
    "eval.inception_weights": _string,
    "eval.reference_cache_dir": _string,
    "eval.kid_subset_size": _integer(2),
    "sampling.num_samples": _integer(1),
    "sampling.num_steps": _integer(1),
    "sampling.method": _choice(METHODS),
    "sampling.batch_size": _integer(1),
    "sampling.checkpoint_step": _integer(-1),
    "sampling.impute_resamples": _integer(1),
    "sampling.impute_particles": _integer(1),
}


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"training.batch_size": 128, ...}`` from a nested ``ConfigDict`` or mapping."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "to_dict"):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def validate_config(config: Any, device_count: int = 1, process_count: int = 1) -> None:
    """Check every field of ``config``; raise ``ValueError`` naming the first bad one.

    Args:
      config: the experiment config (``ml_collections.ConfigDict`` or nested mapping).
      device_count: devices of the whole job (``jax.device_count()``); the global training and
        evaluation batches are split evenly over them.
      process_count: processes of the job (``jax.process_count()``); each feeds an equal slice.

    Raises:
      ValueError: an unknown or missing field, a value of the wrong type or out of range, or a
        batch size that the devices cannot split evenly. The message names the field.
    """
    flat = flatten_config(config)
    for field in flat:
        if field not in SCHEMA:
            known = sorted({name.split(".")[0] for name in SCHEMA})
            raise ValueError(
                f"config field {field} is unknown; the config sections are {known} "
                "(see configs/default.py for every field)"
            )
    for field, check in SCHEMA.items():
        if field not in flat:
            raise ValueError(f"config field {field} is missing (see configs/default.py)")
        check(field, flat[field])

    for field in ("training.batch_size", "eval.batch_size"):
        for count, what in ((device_count, "device count"), (process_count, "process count")):
            if flat[field] % count:
                raise ValueError(
                    f"config field {field} must be divisible by the {what} {count}, "
                    f"got {flat[field]}"
                )
    from blackout_jax.models import parse_config

    parse_config({name[len("model.") :]: flat[name] for name in flat if name.startswith("model.")})

    if flat["data.name"] == "counts" and not flat["data.path"]:
        raise ValueError(
            "config field data.path must name your counts file (.npy/.npz) or PNG folder "
            "when data.name is 'counts', got ''"
        )
    if flat["data.max_count"] == 0 and flat["data.name"] != "counts":
        raise ValueError(
            "config field data.max_count must be >= 1 (0 = infer from the data is only for "
            f"data.name 'counts'), got 0 for data.name {flat['data.name']!r}"
        )
