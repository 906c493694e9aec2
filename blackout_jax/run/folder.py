"""The run folder: the name of every file and folder in it, and its stored config.

A run folder (``--workdir``) holds::

    config.json            the experiment config of the training run (read back here)
    metadata.json          facts about the data and devices of the training run
    features.json          count vectors: the features kept, in order (index, source index,
                           name, id), when the data files name them
    lock                   .lock, held by the trainer (blackout_jax.run.lock)
    metrics.jsonl          one JSON row per log period and evaluation
    tensorboard/           the same rows for TensorBoard
    loss_curve.png         the training and held-out losses
    checkpoints/<step>/    orbax checkpoints (blackout_jax.run.checkpointing)
    samples/               grid_<step>.png of training; samples_<step>_<draws>.npz + .png
                           of --mode=sample; chunks_<step>_<draws>/ while drawing
    eval/                  metrics_<step>_<draws>.json of --mode=evaluate, one per
                           settings, and metrics_<step>.json, a copy of the latest one
    imputed/               imputed_<step>_<draws>.npz + .png of --mode=impute
    unthinned/             unthinned_<step>_<draws>.npz + .png of --mode=unthin
    grids/                 optimised_<step>_<K>.json, fitted sampler grids
    students/<K>calls/     the K-call students of --mode=distill (checkpoints, metrics.jsonl)

``<step>`` is the checkpoint's step and ``<draws>`` (:func:`draws_name`) names what the draws
came from: ``<method>_<K>steps_<grid>_seed<seed>_<digest>``, e.g.
``samples_6_binomial_bridge_100steps_logit_seed0_3f9a0c12.npz``. The digest is a short hash of
every other setting that changes the draws (the sampler's times, start, chunk size, number of
draws, labels and guidance, the input file's arrays ...), so outputs of other settings sit
side by side instead of replacing each other, a rerun of the same command writes the same
file, and chunks left by an interrupted run are taken up only by the command that would draw
them again.

Every other module names these through this one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from blackout_jax.run.checkpointing import CheckpointMismatchError
from blackout_jax.run.config import ExperimentConfig

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
FEATURES_FILE = "features.json"
LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOSS_CURVE_FILE = "loss_curve.png"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"
GRIDS_DIR = "grids"
STUDENTS_DIR = "students"

COMMAND_OUTPUTS = {
    "sample": (SAMPLES_DIR, "samples_{step}_{draws}.npz"),
    "evaluate": ("eval", "metrics_{step}.json"),
    "impute": ("imputed", "imputed_{step}_{draws}.npz"),
    "unthin": ("unthinned", "unthinned_{step}_{draws}.npz"),
}
"""Folder and file name of each command's result (its PNG, if any, sits beside it)."""

_SAMPLE_CHUNKS = "chunks_{step}_{draws}"
FILES = (CONFIG_FILE, METADATA_FILE, FEATURES_FILE, LOCK_FILE, METRICS_FILE, LOSS_CURVE_FILE)
"""The run folder's files."""
FOLDERS = (
    CHECKPOINTS_DIR,
    TENSORBOARD_DIR,
    GRIDS_DIR,
    STUDENTS_DIR,
    *dict.fromkeys(folder for folder, _ in COMMAND_OUTPUTS.values()),
)
"""The run folder's folders."""

_GRID_IMAGE = "grid_{step}.png"


def layout_problem(workdir: str | os.PathLike[str]) -> str | None:
    """Why ``workdir`` cannot be used as a run folder: one of :data:`FOLDERS` exists as a file
    (or anything but a folder), or one of :data:`FILES` as a folder; else None.

    Checked before any work, so that a command does not fail minutes later, in the middle of a
    save, on a part of the folder that is the wrong kind of thing.
    """
    for name in FOLDERS:
        path = os.path.join(os.fspath(workdir), name)
        if os.path.lexists(path) and not os.path.isdir(path):
            return (
                f"{path} is a file, but the run folder keeps a folder of that name; move the "
                "file aside or use another --workdir"
            )
    for name in FILES:
        path = os.path.join(os.fspath(workdir), name)
        if os.path.isdir(path):
            return (
                f"{path} is a folder, but the run folder keeps a file of that name; move the "
                "folder aside or use another --workdir"
            )
    return None


def checkpoints_dir(workdir: str | os.PathLike[str]) -> str:
    """``WORKDIR/checkpoints``."""
    return os.path.join(os.fspath(workdir), CHECKPOINTS_DIR)


def has_checkpoints(workdir: str | os.PathLike[str]) -> bool:
    """Whether training has created the checkpoints folder."""
    return os.path.isdir(checkpoints_dir(workdir))


def settings_digest(settings: Mapping[str, Any]) -> str:
    """An 8-hex-digit hash of ``settings`` (names to numbers, strings, ``None`` or NumPy
    arrays, whose dtype, shape and bytes count), the same in every process and session."""
    hasher = hashlib.sha256()
    for name in sorted(settings):
        value = settings[name]
        if isinstance(value, np.ndarray):
            value = (str(value.dtype), value.shape, hashlib.sha256(value.tobytes()).hexdigest())
        hasher.update(f"{name}={value!r};".encode())
    return hasher.hexdigest()[:8]


def draws_name(
    *, method: str, num_steps: int, grid: str | None, seed: int, settings: Mapping[str, Any]
) -> str:
    """``<method>_<K>steps_<grid>_seed<seed>_<digest>`` (no ``_<grid>`` for ``grid=None``):
    the part of an output's name that says what its draws came from; the digest
    (:func:`settings_digest`) covers ``settings``, every other input that changes the draws."""
    walked = f"_{grid}" if grid else ""
    return f"{method}_{num_steps}steps{walked}_seed{seed}_{settings_digest(settings)}"


def evaluation_draws(
    *, seed: int, settings: Mapping[str, Any], sample_draws: str | None = None
) -> str:
    """The ``<draws>`` of ``eval/metrics_<step>_<draws>.json``: with samples, their
    :func:`draws_name` (``sample_draws``) with a digest over it and ``settings`` (the bound's
    settings) in place of its own, e.g. ``binomial_bridge_100steps_logit_seed0_7be1d2a0``;
    without, ``bound_seed<seed>_<digest>``."""
    digest = settings_digest({**settings, "samples": sample_draws})
    if sample_draws is None:
        return f"bound_seed{seed}_{digest}"
    return f"{sample_draws.rsplit('_', 1)[0]}_{digest}"


def evaluation_outputs(workdir: str | os.PathLike[str], step: int, draws: str) -> tuple[Path, Path]:
    """``eval/metrics_<step>_<draws>.json`` (the evaluation of these settings, kept beside
    the others) and ``eval/metrics_<step>.json`` (a copy of the latest evaluation of
    ``step``)."""
    latest = command_output(workdir, "evaluate", step)
    return latest.with_name(f"{latest.stem}_{draws}{latest.suffix}"), latest


def command_output(workdir: str | os.PathLike[str], mode: str, step: int, draws: str = "") -> Path:
    """The result file of ``--mode=<mode>`` for the checkpoint of ``step``; ``draws``
    (:func:`draws_name`) is required for the modes whose outputs are named by their draws."""
    folder, name = COMMAND_OUTPUTS[mode]
    if "{draws}" in name and not draws:
        raise ValueError(f"the output of --mode={mode} is named by its draws; none given")
    return Path(workdir, folder, name.format(step=step, draws=draws))


def sample_chunks_dir(workdir: str | os.PathLike[str], step: int, draws: str) -> Path:
    """``samples/chunks_<step>_<draws>/``: the finished chunks of samples being drawn, kept
    until the command's result is written (so an interrupted command resumes)."""
    return Path(workdir, SAMPLES_DIR, _SAMPLE_CHUNKS.format(step=step, draws=draws))


def grid_image(workdir: str | os.PathLike[str], step: int) -> Path:
    """``samples/grid_<step>.png``: the sample grid of the evaluation at ``step``."""
    return Path(workdir, SAMPLES_DIR, _GRID_IMAGE.format(step=step))


def optimised_grid_file(workdir: str | os.PathLike[str], step: int, num_steps: int) -> Path:
    """``grids/optimised_<step>_<K>.json``: the fitted grid of ``K`` steps for ``step``."""
    return Path(workdir, GRIDS_DIR, f"optimised_{step}_{num_steps}.json")


def remove_later_grids(workdir: str | os.PathLike[str], step: int) -> None:
    """Delete ``samples/grid_<k>.png`` with ``k > step``: images of a run that did not keep
    those steps (a crash or a failed run after the checkpoint training restarts from)."""
    samples_dir = os.path.join(os.fspath(workdir), SAMPLES_DIR)
    if not os.path.isdir(samples_dir):
        return
    prefix = _GRID_IMAGE.split("{")[0]
    for name in os.listdir(samples_dir):
        stem, extension = os.path.splitext(name)
        number = stem.removeprefix(prefix)
        if extension == ".png" and stem != number and number.isdigit() and int(number) > step:
            os.remove(os.path.join(samples_dir, name))


RESUMABLE_FIELDS = (
    "training.num_steps",
    "training.log_every",
    "training.eval_every",
    "training.checkpoint_every",
    "training.keep_checkpoints",
    "training.keep_every",
    "training.max_consecutive_nonfinite",
    "training.preempted_exit_code",
    "data.data_dir",
    "data.path",
    "data.prefetch",
    "data.allow_large_test_share",
    "eval.*",
    "sampling.*",
    "distill.*",
)
"""Fields that may differ between a run folder's stored config and a run resuming it."""

INFERENCE_FIELDS = (
    "seed",
    "data.data_dir",
    "data.path",
    "data.prefetch",
    "training.*",
    "eval.*",
    "sampling.*",
    "distill.*",
)
"""Fields that the inference modes (every mode but train) take from the command line; the others
(the network, the data, the diffusion) come from the config stored in the run folder."""


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training.batch_size": 128, ...}`` from nested dicts; lists become tuples."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or (p.endswith(".*") and name.startswith(p[:-1])) for p in patterns)


def changed_fields(
    stored: Mapping[str, Any], current: Mapping[str, Any], *, allowed: tuple[str, ...]
) -> list[tuple[str, Any, Any]]:
    """``[("model.nf", 8, 16), ...]``: ``(field, stored value, current value)`` for the fields of
    the nested dict ``current`` that differ from the ``stored`` one (a run folder's
    ``config.json``) and are not ``allowed`` to; fields the stored config lacks are not
    compared."""
    old, new = flatten(stored), flatten(current)
    return [
        (name, old[name], value)
        for name, value in new.items()
        if name in old and old[name] != value and not _matches(name, allowed)
    ]


def with_stored_fields(stored: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested dict ``values`` with every field outside :data:`INFERENCE_FIELDS` taken from
    ``stored``; stored fields that ``values`` lacks are left out."""
    merged = copy.deepcopy(dict(values))
    present = flatten(merged)
    for name, value in flatten(stored).items():
        if _matches(name, INFERENCE_FIELDS) or name not in present:
            continue
        *sections, key = name.split(".")
        target = merged
        for section in sections:
            target = target[section]
        target[key] = value
    return merged


def read_stored_config(workdir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run folder's ``config.json`` as nested dicts, or ``None`` when there is none.

    Raises:
      ValueError: the file exists but is not a JSON object (unreadable, not UTF-8, not JSON, or
        JSON of another kind), in one line naming it.
    """
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    advice = "it is the run's stored config: restore it, or move it aside"
    try:
        with open(path, encoding="utf-8") as file:
            stored = json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"{path} cannot be read ({reason}); {advice}") from None
    if not isinstance(stored, dict):
        kinds = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
        kind = kinds.get(type(stored), "a number")
        raise ValueError(f"{path} holds JSON {kind}, not an object of config fields; {advice}")
    return stored


def with_stored_config(
    values: Mapping[str, Any], workdir: str | os.PathLike[str]
) -> dict[str, Any]:
    """The config values (nested dicts) the sample/evaluate/impute/unthin commands use.

    The network, data and diffusion come from the run folder's stored ``config.json``, so the
    overrides used for training need not be repeated; only the fields of
    :data:`INFERENCE_FIELDS` (sampling and evaluation settings, seed,
    data location) come from ``values``. Differences in the other fields are named in one note
    on stderr. Without a stored config, ``values`` are used as they are.
    """
    stored = read_stored_config(workdir)
    if stored is None:
        return dict(values)
    ignored = changed_fields(stored, values, allowed=INFERENCE_FIELDS)
    if ignored:
        listed = "; ".join(
            f"{name} = {old!r} (command line: {new!r})" for name, old, new in ignored
        )
        print(
            f"note: using the settings {workdir} was trained with: {listed}",
            file=sys.stderr,
            flush=True,
        )
    return with_stored_fields(stored, values)


class IncompatibleRunError(CheckpointMismatchError):
    """The run folder was trained with settings that cannot change on resume."""


def check_resumable(config: ExperimentConfig, workdir: str) -> None:
    """Compare ``config`` with the run folder's stored ``config.json`` before any restore.

    Raises:
      IncompatibleRunError: one line naming every changed field that matters
        (``model.nf: 8 -> 16``) and what may change on resume.
      ValueError: the stored ``config.json`` cannot be read (it is left as it is).
    """
    if not has_checkpoints(workdir):
        return
    stored = read_stored_config(workdir)
    if stored is not None:
        check_same_settings(stored, config, workdir)


def check_same_settings(stored: Mapping[str, Any], config: ExperimentConfig, where: str) -> None:
    """Raise :class:`IncompatibleRunError` naming every field outside :data:`RESUMABLE_FIELDS`
    in which ``config`` differs from ``stored`` (the config ``where`` was trained with)."""
    changed = changed_fields(stored, config.to_dict(), allowed=RESUMABLE_FIELDS)
    if changed:
        listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in changed)
        raise IncompatibleRunError(
            f"{where} was trained with other settings ({listed}): use a new "
            "--workdir, or change only what may change on resume ("
            f"{', '.join(RESUMABLE_FIELDS)})"
        )
