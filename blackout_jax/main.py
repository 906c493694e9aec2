"""Command line: train a Blackout Diffusion model and use it (the modes of ``MODES``).

    blackout-jax --config=configs/digits.py --workdir=runs/digits
    blackout-jax --config=configs/digits.py --workdir=runs/digits --config.training.num_steps=2000
    blackout-jax --config=configs/digits.py --workdir=runs/digits --mode=sample
    blackout-jax --config=configs/digits.py --workdir=runs/digits --mode=evaluate
    blackout-jax --config=configs/digits.py --workdir=runs/digits --mode=impute --input=obs.npz
    blackout-jax --config=configs/digits.py --workdir=runs/digits --mode=unthin --input=dim.npz
    blackout-jax --config=configs/digits.py --mode=show_config

``blackout-jax`` is the installed console command; ``python -m blackout_jax.main`` takes the same
flags. ``--help`` prints the modes, the configs found in ``configs/`` and the flags (exit 0);
``--helpfull`` adds absl's own flags.

Modes: ``train`` (default) trains or resumes; ``sample`` writes
``WORKDIR/samples/samples_<step>_<draws>.npz`` and a PNG grid (``<draws>``, e.g.
``binomial_bridge_100steps_logit_seed0_3f9a0c12``, names the sampler, its steps, grid and seed
and ends in a hash of the other settings: see :mod:`blackout_jax.run.folder`); ``evaluate``
writes ``WORKDIR/eval/metrics_<step>_<draws>.json`` (one per choice of settings) and a copy of
the latest in ``WORKDIR/eval/metrics_<step>.json``; ``impute`` completes the unobserved counts of an
``.npz`` with arrays ``counts`` and ``mask`` (True = observed) into
``WORKDIR/imputed/imputed_<step>_<draws>.npz``; ``unthin`` draws
``sampling.num_posterior_samples`` samples of the counts behind each thinned observation of an
``.npz`` (``counts``, optional ``survival`` and ``truth``; or an ``.npy`` of the counts) into
``WORKDIR/unthinned/unthinned_<step>_<draws>.npz``. Their outputs are written whole or not at
all; a run folder that cannot be written (read-only, a full disk) is one ``error:`` line
naming the path.
The last four use the EMA parameters of checkpoint ``sampling.checkpoint_step`` (-1 = the
latest) and the network, data and diffusion settings stored in the run folder (see
:func:`blackout_jax.run.folder.with_stored_config`). ``show_config`` prints every config field with
its value after the overrides and its meaning, one ``section.field = value  # meaning`` line
each, and needs no ``--workdir``.

Running the same command again resumes from the latest checkpoint in the run folder. Any config
field can be overridden with ``--config.<section>.<field>=<value>``. Multi-host jobs start one
process per host; under Slurm, Open MPI or on a multi-host TPU slice JAX finds the other
processes by itself, elsewhere pass ``--coordinator_address=host:port --num_processes=P
--process_id=i`` to every process.

Order of work: parse the flags, join the other processes (if any), check the run folder's
path (process 0's finding is every process's), take the stored settings of the run folder
(all modes but ``train``), parse and check the config once
(:func:`blackout_jax.run.config.parse`), load the data, say its split and max count in one line
(:func:`blackout_jax.run.network.split_summary`), build the network's shapes, and only then
create the run folder and train. A problem found before training (a bad
flag, an unknown config field, a missing config file, a run folder below a file or with a part
of the wrong kind, unreadable data, more than half of the examples held out without
``data.allow_large_test_share``, an impossible value) prints one line ``error: ...`` naming it
on stderr and exits with status 2 without writing anything.
"""

from __future__ import annotations

import os
import signal
import sys


def _stop_while_starting(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM before ``main`` (during the imports of JAX, Flax, orbax, which take
    seconds): one line on stderr and exit status ``128 + signum``; nothing was written yet.
    :class:`blackout_jax.run.safety.StopAtOnce` takes over once ``main`` starts."""
    del frame
    name = signal.Signals(signum).name
    os.write(2, f"{name} received while starting: stopped, nothing was written\n".encode())
    os._exit(128 + signum)


def _started_as_command() -> bool:
    """``python -m blackout_jax.main`` or the ``blackout-jax`` console command (not an import
    by a test or a notebook, whose signals stay theirs)."""
    return __name__ == "__main__" or os.path.basename(sys.argv[0]) == "blackout-jax"


if _started_as_command():
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _stop_while_starting)

import functools  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from blackout_jax.run import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file (required), e.g. configs/digits.py; --help lists the configs. "
    "Override any field with --config.<section>.<field>=<value>.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run folder (required except for --mode=show_config): checkpoints, metrics.jsonl, "
    "TensorBoard files, sample grids. Created if missing; reused to resume.",
)
MODES = {
    "train": "train, or resume from the latest checkpoint in --workdir (the default)",
    "sample": "draw sampling.num_samples samples into "
    "WORKDIR/samples/samples_<step>_<draws>.npz + .png",
    "evaluate": "likelihood bound and sample metrics into WORKDIR/eval/metrics_<step>_<draws>"
    ".json (the latest also as metrics_<step>.json)",
    "impute": "complete the unobserved counts of --input into WORKDIR/imputed/",
    "unthin": "posterior samples of the counts behind thinned observations --input into "
    "WORKDIR/unthinned/",
    "distill": "train the distill.num_calls-call student of the EMA teacher into "
    "WORKDIR/students/<K>calls/ (resumes)",
    "show_config": "print every config field and its value (after overrides) and exit",
}
_MODE = flags.DEFINE_enum("mode", "train", list(MODES), "What to do; --help describes each mode.")
_INPUT = flags.DEFINE_string(
    "input",
    None,
    "For --mode=impute: an .npz with arrays 'counts' and 'mask' (True = observed). For "
    "--mode=unthin: an .npz with 'counts' (thinned observations), optionally 'survival' (one "
    "q per example; else sampling.survival) and 'truth', or an .npy of the counts alone.",
)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process jobs started by hand."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes of a job started by hand."
)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in 0..P-1.")

_OWN_FLAGS = (_CONFIG, _WORKDIR, _MODE, _INPUT, _COORDINATOR_ADDRESS, _NUM_PROCESSES, _PROCESS_ID)


def main(argv: list[str]) -> None:
    """Entry point for ``absl.app.run``."""
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep the console for progress lines
    from blackout_jax.run import safety

    try:
        with safety.StopAtOnce(
            lambda name: f"{name} received: stopped at once, with nothing unsaved"
        ):
            _run_mode()
    finally:  # the work is over: a signal while exiting acts as usual, not "while starting"
        if _started_as_command():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_mode() -> None:
    """The mode of ``--mode`` (``show_config``, ``train`` or a use of a trained run)."""
    from blackout_jax.run import config as config_lib

    mode = _MODE.value
    if mode == "show_config":
        try:
            print(config_lib.describe(config_lib.parse(_CONFIG.value)))
        except ValueError as error:
            cli.fail(str(error))
        return
    workdir = _WORKDIR.value
    if not workdir:
        cli.fail(f"--workdir is required for --mode={mode}, e.g. --workdir=runs/digits")
    from blackout_jax.run import compilation_cache, parallel

    compilation_cache.enable_persistent_cache()
    try:
        parallel.initialize_distributed(
            coordinator_address=_COORDINATOR_ADDRESS.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    except ValueError as error:
        cli.fail(str(error))
    problem = parallel.primary_text(cli.workdir_problem(workdir) or "")  # every process alike
    if problem:
        cli.fail(problem)

    if mode == "train":
        _train(workdir)
    else:
        _use_trained_run(mode, workdir)


def _devices() -> dict[str, int]:
    import jax

    return {"device_count": jax.device_count(), "process_count": jax.process_count()}


def _train(workdir: str) -> None:
    """Parse the config, load the data, check the network's shapes, then train or resume."""
    from blackout_jax.run import config as config_lib
    from blackout_jax.run import network, safety, train
    from blackout_jax.run.lock import RunFolderInUseError

    try:
        config = config_lib.parse(_CONFIG.value.to_dict(), **_devices())
        print("loading data ...", flush=True)
        dataset = network.load_data(config)
        split = network.split_summary(config, dataset)
        network.abstract_model(config, dataset.shape)
    except (ValueError, FileNotFoundError) as error:
        cli.fail(str(error))
    print(split, flush=True)
    try:
        result = train.train_and_evaluate(config, workdir, dataset=dataset)
    except safety.NonFiniteTrainingError as error:
        cli.fail(str(error), cli.EXIT_TRAINING_FAILED)
    except (ValueError, OSError, RunFolderInUseError) as error:
        cli.fail(str(error))
    if result.stopped_by_signal:
        sys.exit(config.training.preempted_exit_code)


def _use_trained_run(mode: str, workdir: str) -> None:
    """Open the run in ``workdir`` (its stored settings, data and EMA network) and run the
    sample, evaluate, impute or unthin command on it."""
    from blackout_jax.run import folder, inference, trained

    if mode == "impute" and not _INPUT.value:
        cli.fail("--mode=impute needs --input=<file.npz> with arrays 'counts' and 'mask'")
    if mode == "unthin" and not _INPUT.value:
        cli.fail("--mode=unthin needs --input=<file.npz> with an array 'counts' (or an .npy)")
    if not folder.has_checkpoints(workdir):
        cli.fail(f"no checkpoints in {workdir}: train first (--mode=train)")
    try:
        print("loading data ...", flush=True)
        config, dataset, model = trained.open_trained_run(_CONFIG.value, workdir, **_devices())
        if mode == "sample":
            inference.sample_run(config, workdir, dataset, model)
        elif mode == "evaluate":
            inference.evaluate_run(config, workdir, dataset, model)
        elif mode == "unthin":
            inference.unthin_run(config, workdir, model, _INPUT.value)
        elif mode == "distill":
            from blackout_jax.run import distillation

            distillation.distill_run(config, workdir, dataset, model)
        else:
            inference.impute_run(config, workdir, dataset, model, _INPUT.value)
    except (ValueError, FileNotFoundError) as error:
        cli.fail(str(error))
    except OSError as error:  # a read-only run folder, a full disk
        cli.fail(cli.write_problem(error))


def run() -> None:
    """The ``blackout-jax`` console command: ``main`` under absl with this module's parsing."""
    from blackout_jax.run import compilation_cache

    try:  # before anything imports JAX, which refuses a bad value with a traceback
        compilation_cache.max_size_from_environment()
    except ValueError as error:
        cli.fail(str(error))
    parse = functools.partial(
        cli.parse_flags, config_flag=_CONFIG, help_text=lambda: cli.help_text(MODES, _OWN_FLAGS)
    )
    app.run(main, flags_parser=parse)


if __name__ == "__main__":
    run()
