"""The command line's plumbing: plain-text help, flag parsing with one-line errors, path checks.

:mod:`blackout_jax.main` defines the flags and runs the modes; this module turns absl's and
ml_collections' failures into one ``error: ...`` line with exit status 2, lists the configs for
``--help`` and checks the run folder's path before anything is written.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from absl import flags
from ml_collections import config_dict

EXIT_USAGE_ERROR = 2
EXIT_TRAINING_FAILED = 1
HELP_FLAGS = ("-h", "-?", "--help", "--helpshort")
FULL_HELP_FLAG = "--helpfull"


def fail(message: str, status: int = EXIT_USAGE_ERROR) -> None:
    """Print ``error: message`` on stderr and exit with ``status``."""
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


def help_text(modes: Mapping[str, str], own_flags: Sequence[flags.FlagHolder]) -> str:
    """The plain-text ``--help``: usage, modes, the configs found, the flags, exit statuses."""
    lines = [
        "blackout-jax: train a Blackout Diffusion model on counts, and use it (the modes below).",
        "",
        "usage: blackout-jax --config=CONFIG --workdir=RUN_FOLDER [--mode=MODE]",
        "                    [--config.SECTION.FIELD=VALUE ...]",
        "       python -m blackout_jax.main takes the same flags.",
        "",
        "modes (--mode):",
    ]
    width = max(len(name) for name in modes)
    lines += [f"  {name:<{width}}  {text}" for name, text in modes.items()]
    lines += ["", "configs (--config):"]
    folder = configs_folder()
    if folder is None:
        lines.append("  no configs/ folder found: run from the repository root or pass a path")
    else:
        summaries = config_summaries(folder)
        width = max(len(path) for path, _ in summaries)
        lines += [f"  {path:<{width}}  {summary}" for path, summary in summaries]
    lines += ["", "flags:"]
    for holder in own_flags:
        flag = flags.FLAGS[holder.name]
        default = "" if flag.default is None else f" (default: {flag.default})"
        text = f"--{flag.name}: {plain_text(flag.help)}{default}"
        lines += textwrap.wrap(text, width=98, initial_indent="  ", subsequent_indent="      ")
    lines += [
        "",
        "examples:",
        "  blackout-jax --config=configs/digits.py --workdir=runs/digits",
        "  blackout-jax --config=configs/digits.py --workdir=runs/digits --mode=sample",
        "  blackout-jax --config=configs/digits.py --workdir=runs/digits --mode=unthin "
        "--input=dim.npz",
        "  blackout-jax --config=configs/tiny.py --mode=show_config --config.model.nf=16",
        "",
        "Running a training command again resumes it. Exit status: 0 done; 75 stopped by",
        "SIGTERM/SIGINT after saving (rerun to resume; training.preempted_exit_code); 1 training",
        "stopped on non-finite values; 2 a problem reported in one line naming the flag, field,",
        "file, value or run folder, with nothing written. --helpfull also lists absl's flags.",
    ]
    return "\n".join(lines)


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def config_argument(argv: list[str]) -> str:
    """The value of the last ``--config=PATH`` or ``--config PATH`` argument ('' if none)."""
    value = ""
    for argument, following in zip(argv, [*argv[1:], ""], strict=True):
        if argument.startswith("--config="):
            value = argument.split("=", 1)[1]
        elif argument == "--config":
            value = following
    return value


def unknown_field_message(argv: list[str]) -> str | None:
    """Names the first ``--config.`` override whose field the config lacks, with the fields
    that its section has; None when every override names a field (or the config fails to load).
    """
    try:  # the config without the overrides, to check each override's path against it
        path_and_argument = config_argument(argv).split(":", 1)
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


def parse_flags(
    argv: list[str], *, config_flag: flags.FlagHolder, help_text: Callable[[], str]
) -> list[str]:
    """absl's flag parsing with plain-text ``--help`` (exit 0) and one-line usage errors.

    ``--helpfull`` adds absl's listing of every defined flag (logging, absl's own) to ``--help``.

    Every flag error, an override of a field the config does not define, and a config file
    that cannot be read print one ``error: ...`` line and exit with status 2.
    """
    if any(argument in HELP_FLAGS for argument in argv[1:]):
        print(help_text())
        sys.exit(0)
    if FULL_HELP_FLAG in argv[1:]:
        print(help_text())
        print("\nevery flag, absl's and the libraries' included:")
        print(flags.FLAGS.get_help(include_special_flags=True))
        sys.exit(0)
    make_config_package_importable(config_argument(argv))
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as error:
        fail(one_line(error), EXIT_USAGE_ERROR)
    except (AttributeError, KeyError, TypeError):  # ml_collections' errors for unknown fields
        message = unknown_field_message(argv)
        if message is None:
            raise
        fail(message, EXIT_USAGE_ERROR)
    except OSError:  # an override parsed against a config file that could not be read
        fail(config_file_problem(argv), EXIT_USAGE_ERROR)
    if config_flag.value is None:
        fail(
            "--config is required, e.g. --config=configs/digits.py (--help lists them)",
            EXIT_USAGE_ERROR,
        )
    if not isinstance(config_flag.value, config_dict.ConfigDict):
        fail(config_file_problem(argv), EXIT_USAGE_ERROR)
    return remaining


def config_file_problem(argv: list[str]) -> str:
    argument = config_argument(argv)
    path = argument.split(":", 1)[0]
    if path and not os.path.isfile(path):
        return f"--config={argument}: no such file (from {os.getcwd()}); --help lists the configs"
    return f"--config={argument}: the config file could not be loaded"


def workdir_problem(workdir: str) -> str | None:
    """Why ``workdir`` cannot be a run folder, else None: it or a folder above it is a file, or
    a part of it is the wrong kind of thing (:func:`blackout_jax.run.folder.layout_problem`)."""
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if os.path.isdir(path):
        from blackout_jax.run import folder

        return folder.layout_problem(workdir) if path == os.path.abspath(workdir) else None
    if path == os.path.abspath(workdir):
        return f"--workdir={workdir}: exists and is a file, not a folder"
    return f"--workdir={workdir}: {path} is a file, so no folder can be made below it"
