"""Command line: train, sample, evaluate and impute with a Blackout Diffusion model.

    blackout-jax --config=configs/digits.py --workdir=runs/digits
    blackout-jax --config=configs/digits.py --workdir=runs/digits --config.training.num_steps=2000
    blackout-jax --config=configs/digits.py --workdir=runs/digits --mode=sample
    blackout-jax --config=configs/digits.py --workdir=runs/digits --mode=evaluate
    blackout-jax --config=configs/digits.py --workdir=runs/digits --mode=impute --input=obs.npz
    blackout-jax --config=configs/digits.py --mode=show_config

``blackout-jax`` is the installed console command; ``python -m blackout_jax.main`` takes the same
flags. ``--help`` prints the modes, the configs found in ``configs/`` and the flags (exit 0).

Modes: ``train`` (default) trains or resumes; ``sample`` writes
``WORKDIR/samples/samples_<step>.npz`` and a PNG grid; ``evaluate`` writes
``WORKDIR/eval/metrics_<step>.json``; ``impute`` completes the unobserved counts of an ``.npz``
with arrays ``counts`` and ``mask`` (True = observed) into ``WORKDIR/imputed/``. The last three
use the EMA parameters of checkpoint ``sampling.checkpoint_step`` (-1 = the latest) and the
network, data and diffusion settings stored in the run folder (see
:func:`blackout_jax.run.inference.run_config`). ``show_config`` prints every config field with
its value after the overrides and its meaning, one ``section.field = value  # meaning`` line
each, and needs no ``--workdir``.

Running the same command again resumes from the latest checkpoint in the run folder. Any config
field can be overridden with ``--config.<section>.<field>=<value>``. Multi-host jobs start one
process per host; under Slurm, Open MPI or on a multi-host TPU slice JAX finds the other
processes by itself, elsewhere pass ``--coordinator_address=host:port --num_processes=P
--process_id=i`` to every process.

Order of work: parse the flags, check the run folder's path, join the other processes (if any),
check the config, load the data, build the network's shapes, and only then create the run folder
and train. A problem found before training (a bad flag, an unknown config field, a missing
config file, a run folder below a file, unreadable data, an impossible value) prints one line
``error: ...`` naming it on stderr and exits with status 2 without writing anything.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
import textwrap
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

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
    "sample": "draw sampling.num_samples samples into WORKDIR/samples/samples_<step>.npz + .png",
    "evaluate": "likelihood bound and sample metrics into WORKDIR/eval/metrics_<step>.json",
    "impute": "complete the unobserved counts of --input into WORKDIR/imputed/",
    "show_config": "print every config field and its value (after overrides) and exit",
}
_MODE = flags.DEFINE_enum("mode", "train", list(MODES), "What to do; --help describes each mode.")
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

EXIT_USAGE_ERROR = 2
EXIT_TRAINING_FAILED = 1
HELP_FLAGS = ("-h", "-?", "--help", "--helpshort")
_OWN_FLAGS = (_CONFIG, _WORKDIR, _MODE, _INPUT, _COORDINATOR_ADDRESS, _NUM_PROCESSES, _PROCESS_ID)


def _fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def plain_text(text: str) -> str:
    """``text`` without reStructuredText markup: ``:role:`x``` -> ``x`` and double backticks."""
    return re.sub(r":\w+:`([^`]*)`", r"\1", text).replace("``", "")


def configs_folder() -> Path | None:
    """The ``configs/`` folder: the current directory's, else the one beside the package."""
    for folder in (Path("configs"), Path(__file__).resolve().parents[1] / "configs"):
        if (folder / "default.py").is_file():
            return folder
    return None


def config_summaries(folder: Path) -> list[tuple[str, str]]:
    """``(path, first docstring line)`` of every config file in ``folder``, sorted by name.

    The files are parsed, not imported, so listing them runs none of their code.
    """
    summaries = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first_line = docstring.strip().splitlines()[0] if docstring.strip() else ""
        summaries.append((str(path), plain_text(first_line)))
    return summaries


def help_text() -> str:
    """The plain-text ``--help``: usage, modes, the configs found, the flags, exit statuses."""
    lines = [
        "blackout-jax: train, sample, evaluate and impute with a Blackout Diffusion model.",
        "",
        "usage: blackout-jax --config=CONFIG --workdir=RUN_FOLDER [--mode=MODE]",
        "                    [--config.SECTION.FIELD=VALUE ...]",
        "       python -m blackout_jax.main takes the same flags.",
        "",
        "modes (--mode):",
    ]
    width = max(len(name) for name in MODES)
    lines += [f"  {name:<{width}}  {text}" for name, text in MODES.items()]
    lines += ["", "configs (--config):"]
    folder = configs_folder()
    if folder is None:
        lines.append("  no configs/ folder found: run from the repository root or pass a path")
    else:
        summaries = config_summaries(folder)
        width = max(len(path) for path, _ in summaries)
        lines += [f"  {path:<{width}}  {summary}" for path, summary in summaries]
    lines += ["", "flags:"]
    for holder in _OWN_FLAGS:
        flag = flags.FLAGS[holder.name]
        default = "" if flag.default is None else f" (default: {flag.default})"
        text = f"--{flag.name}: {plain_text(flag.help)}{default}"
        lines += textwrap.wrap(text, width=98, initial_indent="  ", subsequent_indent="      ")
    lines += [
        "",
        "examples:",
        "  blackout-jax --config=configs/digits.py --workdir=runs/digits",
        "  blackout-jax --config=configs/digits.py --workdir=runs/digits --mode=sample",
        "  blackout-jax --config=configs/tiny.py --mode=show_config --config.model.nf=16",
        "",
        "Running a training command again resumes it. Exit status: 0 done; 75 stopped by",
        "SIGTERM/SIGINT after saving (rerun to resume; training.preempted_exit_code); 1 training",
        "stopped on non-finite values; 2 a problem reported in one line naming the flag, field,",
        "file, value or run folder, with nothing written. --helpfull also lists absl's flags.",
    ]
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _config_argument(argv: list[str]) -> str:
    """The value of the last ``--config=PATH`` or ``--config PATH`` argument ('' if none)."""
    value = ""
    for argument, following in zip(argv, [*argv[1:], ""], strict=True):
        if argument.startswith("--config="):
            value = argument.split("=", 1)[1]
        elif argument == "--config":
            value = following
    return value


def _unknown_field_message(argv: list[str]) -> str | None:
    """Names the first ``--config.`` override whose field the config lacks, with the fields
    that its section has; None when every override names a field (or the config fails to load).
    """
    try:  # the config without the overrides, to check each override's path against it
        path_and_argument = _config_argument(argv).split(":", 1)
        spec = importlib.util.spec_from_file_location("_checked_config", path_and_argument[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(*path_and_argument[1:])
    except Exception:  # noqa: BLE001 (the caller re-raises the original error)
        return None
    for argument in argv:
        if not argument.startswith("--config."):
            continue
        path = argument.split("=", 1)[0][len("--config.") :]
        parts, section = path.split("."), config
        for depth, part in enumerate(parts):
            if not isinstance(section, config_dict.ConfigDict):
                return f"{argument}: the config has no field {path}"
            if part not in section:
                where = f"{'.'.join(parts[:depth])}'s fields" if depth else "its sections"
                known = ", ".join(sorted(section))
                return (
                    f"{argument}: the config has no field {path} "
                    f"({part!r} is not one of {where}: {known})"
                )
            section = section[part]
    return None


def make_config_package_importable(config_path: str) -> None:
    """Puts the folder above the config's package (``configs/``) first on ``sys.path``.

    Config files import their siblings (``from configs import default``); ``python -m`` finds
    them from the repository root by itself, the console command and other folders need this.
    """
    if not config_path:
        return
    folder = Path(config_path.split(":", 1)[0]).resolve().parent
    if not (folder / "__init__.py").is_file():
        return
    while (folder.parent / "__init__.py").is_file():
        folder = folder.parent
    if str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with plain-text ``--help`` (exit 0) and one-line usage errors.

    Every flag error, an override of a field the config does not define, and a config file
    that cannot be read print one ``error: ...`` line and exit with status 2.
    """
    if any(argument in HELP_FLAGS for argument in argv[1:]):
        print(help_text())
        sys.exit(0)
    make_config_package_importable(_config_argument(argv))
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as error:
        _fail(_one_line(error), EXIT_USAGE_ERROR)
    except (AttributeError, KeyError, TypeError):  # ml_collections' errors for unknown fields
        message = _unknown_field_message(argv)
        if message is None:
            raise
        _fail(message, EXIT_USAGE_ERROR)
    except OSError:  # an override parsed against a config file that could not be read
        _fail(_config_file_problem(argv), EXIT_USAGE_ERROR)
    if _CONFIG.value is None:
        _fail(
            "--config is required, e.g. --config=configs/digits.py (--help lists them)",
            EXIT_USAGE_ERROR,
        )
    if not isinstance(_CONFIG.value, config_dict.ConfigDict):
        _fail(_config_file_problem(argv), EXIT_USAGE_ERROR)
    return remaining


def _config_file_problem(argv: list[str]) -> str:
    argument = _config_argument(argv)
    path = argument.split(":", 1)[0]
    if path and not os.path.isfile(path):
        return f"--config={argument}: no such file (from {os.getcwd()}); --help lists the configs"
    return f"--config={argument}: the config file could not be loaded"


def workdir_problem(workdir: str) -> str | None:
    """Why ``workdir`` cannot be a run folder (it or a folder above it is a file), else None."""
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if os.path.isdir(path):
        return None
    if path == os.path.abspath(workdir):
        return f"--workdir={workdir}: exists and is a file, not a folder"
    return f"--workdir={workdir}: {path} is a file, so no folder can be made below it"


def main(argv: list[str]) -> None:
    """Entry point for ``absl.app.run``."""
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}", EXIT_USAGE_ERROR)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep the console for progress lines

    from blackout_jax.run import config as config_lib

    mode = _MODE.value
    if mode == "show_config":
        try:
            print(config_lib.describe(config_lib.parse(_CONFIG.value)))
        except ValueError as error:
            _fail(str(error), EXIT_USAGE_ERROR)
        return
    workdir = _WORKDIR.value
    if not workdir:
        _fail(
            f"--workdir is required for --mode={mode}, e.g. --workdir=runs/digits", EXIT_USAGE_ERROR
        )
    problem = workdir_problem(workdir)
    if problem:
        _fail(problem, EXIT_USAGE_ERROR)

    from blackout_jax.run import compilation_cache, parallel

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

    from blackout_jax import data
    from blackout_jax.run import inference, network, train
    from blackout_jax.run.lock import RunFolderInUseError

    try:
        config = config_lib.validate_config(_CONFIG.value, jax.device_count(), jax.process_count())
        if mode != "train":
            config = inference.run_config(config, workdir)
        print("loading data ...", flush=True)
        dataset = data.load_dataset(
            config.data, seed=config.seed, size_divisor=config.model.size_divisor
        )
        network.abstract_model(config, dataset)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error), EXIT_USAGE_ERROR)

    if mode == "train":
        try:
            result = train.train_and_evaluate(config, workdir, dataset=dataset)
        except train.NonFiniteTrainingError as error:
            _fail(str(error), EXIT_TRAINING_FAILED)
        except (ValueError, OSError, RunFolderInUseError) as error:
            _fail(str(error), EXIT_USAGE_ERROR)
        if result.stopped_by_signal:
            sys.exit(config.training.preempted_exit_code)
        return

    if mode == "impute" and not _INPUT.value:
        _fail(
            "--mode=impute needs --input=<file.npz> with arrays 'counts' and 'mask'",
            EXIT_USAGE_ERROR,
        )
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        _fail(f"no checkpoints in {workdir}: train first (--mode=train)", EXIT_USAGE_ERROR)
    try:
        if mode == "sample":
            inference.sample_run(config, workdir, dataset)
        elif mode == "evaluate":
            inference.evaluate_run(config, workdir, dataset)
        else:
            inference.impute_run(config, workdir, dataset, _INPUT.value)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error), EXIT_USAGE_ERROR)


def run() -> None:
    """The ``blackout-jax`` console command: ``main`` under absl with this module's parsing."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
