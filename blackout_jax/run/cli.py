"""The command line's plumbing: plain-text help, flag parsing with one-line errors, path checks.

:mod:`blackout_jax.main` defines the flags and runs the modes; this module turns absl's and
ml_collections' failures into one ``error: ...`` line with exit status 2, lists the configs for
``--help`` and checks the run folder's path before anything is written.
"""

from __future__ import annotations

import ast
import errno
import importlib.machinery
import importlib.util
import os
import re
import sys
import textwrap
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

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


SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the ``blackout_jax`` package: in a source checkout (an editable
install too) the repository, with the shipped ``configs/`` beside the package."""


def configs_folder() -> Path | None:
    """The ``configs/`` folder: the current directory's, else the one beside the package."""
    for folder in (Path("configs"), SOURCE_ROOT / "configs"):
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


def load_config_module(path: str) -> types.ModuleType:
    """The config file at ``path`` run as a module, as ml_collections loads it (from its source,
    whatever the file's suffix); the module is not kept in ``sys.modules``.

    Raises:
      Exception: whatever running the file raises.
    """
    loader = importlib.machinery.SourceFileLoader("_checked_config", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def load_config(argument: str) -> Any:
    """``get_config()`` of the config file of ``--config=PATH[:ARGUMENT]``.

    Raises:
      Exception: whatever running the file or its ``get_config`` raises.
    """
    path, *rest = argument.split(":", 1)
    return load_config_module(path).get_config(*rest)


def python_error_line(error: BaseException) -> str:
    """The last line of Python's report of ``error`` (``SyntaxError: ... (line 3)``)."""
    if isinstance(error, SyntaxError):
        where = f" (line {error.lineno})" if error.lineno else ""
        text = f"{type(error).__name__}: {error.msg}{where}"
    else:
        text = traceback.format_exception_only(error)[-1]
    return " ".join(text.split())


def unknown_field_message(argv: list[str]) -> str | None:
    """Names the first ``--config.`` override whose field the config lacks, with the fields
    that its section has; None when every override names a field (or the config fails to load).
    """
    try:  # the config without the overrides, to check each override's path against it
        config = load_config(config_argument(argv))
    except Exception:  # noqa: BLE001 (a config that fails to load is reported by the caller)
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
    """Lets a config file import the shipped configs and its own siblings, wherever it is and
    however the command was started.

    Config files import other configs (``from configs import digits``). ``python -m`` from the
    repository root finds the shipped ``configs`` package by itself, the console command and
    other working folders do not: the folder that holds it beside the ``blackout_jax`` package
    (:data:`SOURCE_ROOT`) goes on ``sys.path``, and before it the folder above the config's own
    package, when the config file sits in one (a ``configs/`` of the user's own).
    """
    if not config_path:
        return
    if (SOURCE_ROOT / "configs" / "__init__.py").is_file() and str(SOURCE_ROOT) not in sys.path:
        sys.path.insert(0, str(SOURCE_ROOT))
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
    except Exception as error:  # noqa: BLE001 (the config file's own code may raise anything)
        message = config_file_problem(argv) or unknown_field_message(argv)
        if message is None and isinstance(error, flags.Error):
            message = one_line(error)
        if message is None:
            raise
        fail(message, EXIT_USAGE_ERROR)
    if not isinstance(config_flag.value, config_dict.ConfigDict):
        if not config_argument(argv):
            fail(
                "--config is required, e.g. --config=configs/digits.py (--help lists them)",
                EXIT_USAGE_ERROR,
            )
        message = config_file_problem(argv)
        fail(message or f"--config={config_argument(argv)}: the config file could not be loaded")
    return remaining


def config_file_problem(argv: list[str]) -> str | None:
    """Why the config file of ``--config`` cannot give a config, in one line naming it and the
    Python error's last line; None when it loads and ``get_config()`` returns a ConfigDict (or
    no ``--config`` is given)."""
    argument = config_argument(argv)
    path = argument.split(":", 1)[0]
    if not path:
        return None
    if os.path.isdir(path):
        return f"--config={argument}: is a folder, not a config file; --help lists the configs"
    if not os.path.isfile(path):
        return f"--config={argument}: no such file (from {os.getcwd()}); --help lists the configs"
    try:
        module = load_config_module(path)
    except Exception as error:  # noqa: BLE001 (the user's file may raise anything)
        return f"--config={argument}: the file cannot be loaded: {python_error_line(error)}"
    if not callable(getattr(module, "get_config", None)):
        return f"--config={argument}: the file defines no function get_config()"
    try:
        config = module.get_config(*argument.split(":", 1)[1:])
    except Exception as error:  # noqa: BLE001
        return f"--config={argument}: its get_config() raised {python_error_line(error)}"
    if not isinstance(config, config_dict.ConfigDict):
        shown = repr(config)
        shown = shown if len(shown) <= 40 else f"{shown[:37]}..."
        return (
            f"--config={argument}: its get_config() returned {type(config).__name__} {shown}, "
            "not an ml_collections.ConfigDict"
        )
    return None


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


def write_problem(error: OSError) -> str:
    """One line naming the path that could not be written and why; the outputs are written
    whole or not at all (:func:`blackout_jax.run.reporting.write_atomically`)."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason += ": the disk is full; free space and run the command again"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason += ": the run folder must be writable for this command"
    return f"cannot write {error.filename or 'the run folder'} ({reason}); no partial file is left"
