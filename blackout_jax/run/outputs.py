"""The output file of a command that uses a trained run, its folder checked before any work.

:func:`writable_output` names the file (:func:`blackout_jax.run.folder.command_output`) and
checks on the primary host that its folder can be written, passing the outcome to every
process, so that a read-only run folder or a full disk is named at once, before the draws.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from blackout_jax.run import folder, parallel, reporting


def writable_output(workdir: str | os.PathLike[str], mode: str, step: int, draws: str = "") -> Path:
    """:func:`~blackout_jax.run.folder.command_output`, its folder checked for writing by the
    primary host before any work, the outcome passed to every process
    (:func:`~blackout_jax.run.parallel.primary_text`): a read-only run folder is named now,
    not after the draws, by every process alike.
    A file is created and removed in the folder, or in the nearest one above it that exists;
    nothing is left behind, not even the folder.

    Raises:
      OSError: with ``filename`` the output's folder.
    """
    path = folder.command_output(workdir, mode, step, draws)
    problem, error = "", None
    if parallel.is_primary():
        try:
            _check_writable(path.parent)
        except OSError as found:
            problem, error = str(found.errno or errno.EIO), found
    problem = parallel.primary_text(problem)  # every process stops alike
    if error is not None:
        raise error
    if problem:
        raise OSError(int(problem), os.strerror(int(problem)), os.fspath(path.parent))
    return path


def _check_writable(directory: Path) -> None:
    existing = directory
    while not existing.is_dir() and existing != existing.parent:
        existing = existing.parent
    probe = existing / ".writable"
    try:
        reporting.write_atomically(probe, lambda file: None)
        probe.unlink()
    except OSError as error:
        error.filename = os.fspath(directory)
        raise
