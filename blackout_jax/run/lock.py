"""One trainer per run folder: an exclusive lock on ``WORKDIR/.lock`` held while training.

The primary process of a training job takes an advisory ``fcntl.flock`` on the file and writes
its host, pid and start time into it. The operating system releases the lock when the process
ends, however it ends (a crash or SIGKILL included), so a lock left by a dead trainer never
blocks the next run; a second trainer on a live run stops at once with one line naming the
holder. The other modes (inference) only read and take no lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from typing import Any

from blackout_jax.run.folder import LOCK_FILE


class RunFolderInUseError(RuntimeError):
    """Another live process trains in this run folder."""


class RunFolderLock:
    """``with RunFolderLock(workdir):`` holds the run folder's lock; see the module docstring."""

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.path = os.path.join(os.fspath(workdir), LOCK_FILE)
        self._file: Any = None

    def __enter__(self) -> RunFolderLock:
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderInUseError(
                f"{os.path.dirname(self.path)} is being trained by {holder}; stop that run "
                "first, or train in another --workdir"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} (since {started})")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
