"""Command line: train, sample, evaluate and impute with a Blackout Diffusion model.

    python -m blackout_jax.main --config=configs/digits.py --workdir=runs/digits
    python -m blackout_jax.main --config=configs/digits.py --workdir=runs/digits \\
        --config.training.num_steps=2000
    python -m blackout_jax.main --config=configs/digits.py --workdir=runs/digits --mode=sample
    python -m blackout_jax.main --config=configs/digits.py --workdir=runs/digits --mode=evaluate
    python -m blackout_jax.main --config=configs/digits.py --workdir=runs/digits \\
        --mode=impute --input=observed.npz

Modes: ``train`` (default) trains or resumes; ``sample`` writes
``WORKDIR/samples/samples_<step>.npz`` and a PNG grid; ``evaluate`` writes
``WORKDIR/eval/metrics_<step>.json``; ``impute`` completes the unobserved counts of an ``.npz``
with arrays ``counts`` and ``mask`` (True = observed) into ``WORKDIR/imputed/``. The last three
use the EMA parameters of checkpoint ``sampling.checkpoint_step`` (-1 = the latest); see
:mod:`blackout_jax.evaluate`.

Running the same command again resumes from the latest checkpoint in the run folder. Any config
field can be overridden with ``--config.<section>.<field>=<value>``. Multi-host jobs start one
process per host; under Slurm, Open MPI or on a multi-host TPU slice JAX finds the other
processes by itself, elsewhere pass ``--coordinator_address=host:port --num_processes=P
--process_id=i`` to every process.

Order of work: parse the flags, join the other processes (if any), check the config, load the
data, build the network's shapes, and only then create the run folder and train. A problem
found before training prints a message naming the config field on stderr and exits with status
2 without writing anything.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/digits.py.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder: checkpoints, metrics.jsonl, TensorBoard files, sample grids."
)
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "sample", "evaluate", "impute"],
    "train (or resume), sample, evaluate, or impute (with --input).",
)
_INPUT = flags.DEFINE_string(
    "input", None, "For --mode=impute: an .npz with arrays 'counts' and 'mask' (True = observed)."
)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process jobs started by hand."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes of a job started by hand."
)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in 0..P-1.")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_USAGE_ERROR = 2
EXIT_TRAINING_FAILED = 1


def _fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def main(argv: list[str]) -> None:
    """Entry point for ``absl.app.run``."""
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}", EXIT_USAGE_ERROR)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep the console for progress lines

    from blackout_jax import compilation_cache, parallel

    compilation_cache.enable_persistent_cache()
    try:
        parallel.initialize_distributed(
            coordinator_address=_COORDINATOR_ADDRESS.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    except ValueError as error:
        _fail(str(error), EXIT_USAGE_ERROR)

    import jax

    from blackout_jax import config_validation, data, train

    config = _CONFIG.value
    workdir = _WORKDIR.value
    try:
        config_validation.validate_config(config, jax.device_count(), jax.process_count())
        dataset = data.load_dataset(
            config.data, seed=int(config.seed), size_divisor=2 ** (len(config.model.ch_mult) - 1)
        )
        train.abstract_model(config, dataset)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error), EXIT_USAGE_ERROR)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        _fail(f"--workdir {workdir} exists and is not a folder", EXIT_USAGE_ERROR)

    mode = _MODE.value
    if mode == "train":
        os.makedirs(workdir, exist_ok=True)
        try:
            train.train_and_evaluate(config, workdir, dataset=dataset)
        except train.NonFiniteTrainingError as error:
            _fail(str(error), EXIT_TRAINING_FAILED)
        return

    from blackout_jax import evaluate

    if mode == "impute" and not _INPUT.value:
        _fail(
            "--mode=impute needs --input=<file.npz> with arrays 'counts' and 'mask'",
            EXIT_USAGE_ERROR,
        )
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        _fail(f"no checkpoints in {workdir}: train first (--mode=train)", EXIT_USAGE_ERROR)
    try:
        if mode == "sample":
            evaluate.sample_run(config, workdir, dataset)
        elif mode == "evaluate":
            evaluate.evaluate_run(config, workdir, dataset)
        else:
            evaluate.impute_run(config, workdir, dataset, _INPUT.value)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error), EXIT_USAGE_ERROR)


if __name__ == "__main__":
    app.run(main)
