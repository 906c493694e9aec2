"""What a run does when something fails: a shutdown signal, a full disk, a failed read,
updates that stop being finite.

* :class:`ShutdownFlag`: SIGTERM/SIGINT while training save a checkpoint and end the run at
  the next step boundary (once the first step has compiled).
* A full disk (:func:`no_space_error`) ends training with :class:`DiskFullError`, one line
  naming the file and the last intact checkpoint; orbax's background tracebacks of it are
  kept off the log (:func:`disk_full_reported_once`).
* The reads orbax abandons when a damaged checkpoint fails to restore are kept off the
  terminal (:func:`drop_callbacks_of_abandoned_reads`).
* :func:`check_nonfinite` stops training with :class:`NonFiniteTrainingError` after
  ``training.max_consecutive_nonfinite`` skipped updates in a row.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any


class Interrupted(Exception):
    """A shutdown signal arrived during work that stops at once (an evaluation)."""


class ShutdownFlag:
    """SIGTERM/SIGINT handling while training (a context manager).

    Until :meth:`arm` (called once the first step of this process has run, i.e. compiled) there
    is nothing to save since the last checkpoint, so SIGTERM keeps its default action and ends
    the process at once, even inside a long compilation; afterwards SIGTERM and SIGINT set
    :attr:`requested` and training saves and exits at the next step boundary. Inside
    :meth:`interrupting` (an evaluation) they raise :class:`Interrupted` at once instead.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}
        self._raise = False

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if self._raise:
            self._raise = False  # once: the handler of Interrupted may take its time
            raise Interrupted(self.signal_name)

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """While inside, a signal raises :class:`Interrupted` where the main thread is (between
        two device calls of an evaluation); one that arrived before raises on entry."""
        if self.requested:
            raise Interrupted(self.signal_name)
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def _install(self, signum: int, handler: Any) -> None:
        previous = signal.signal(signum, handler)
        self._previous.setdefault(signum, previous)

    def __enter__(self) -> ShutdownFlag:
        if threading.current_thread() is threading.main_thread():  # else handlers can't be set
            self._install(signal.SIGTERM, signal.SIG_DFL)
            self._install(signal.SIGINT, self._handle)
        return self

    def arm(self) -> None:
        """From now on SIGTERM saves before exiting."""
        if self._previous:
            self._install(signal.SIGTERM, self._handle)

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class DiskFullError(OSError):
    """The disk of the run folder is full; the message names what was being written."""


def no_space_error(error: BaseException) -> OSError | None:
    """The ``ENOSPC`` error behind ``error`` (its causes and contexts included), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return current
        current = current.__cause__ or current.__context__
    return None


class _DropDiskFullTracebacks(logging.Filter):
    """Drops the log records (with tracebacks) of orbax's background threads whose error is a
    full disk: :func:`blackout_jax.run.train.train_and_evaluate` reports that in one line naming
    the file."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or no_space_error(error) is None


@contextlib.contextmanager
def disk_full_reported_once() -> Iterator[None]:
    """While inside, orbax's background tracebacks of a full disk are kept off the log."""
    logger, log_filter = logging.getLogger("absl"), _DropDiskFullTracebacks()
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


class AbandonedReadRecords(logging.Filter):
    """Drops asyncio's "exception was never retrieved" records of orbax's abandoned reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or "was never retrieved" not in record.getMessage():
            return True
        frames = traceback.extract_tb(record.exc_info[2])
        return not any("/orbax/checkpoint/" in frame.filename for frame in frames)


def drop_callbacks_of_abandoned_reads() -> None:
    """Keep the reads abandoned by a failed restore off the terminal.

    When one array of a checkpoint fails to read (a missing ``manifest.ocdbt``, a truncated
    file), orbax closes the event loop of that restore while tensorstore still has the other
    reads in flight. As they finish, each callback fails with ``RuntimeError('Event loop is
    closed')``, reported as an unraisable exception, and each read task that failed too is
    logged by asyncio as "Task exception was never retrieved" when it is collected: a traceback
    per array, hundreds in all, printed at times in the middle of the one-line warning. They say
    nothing beyond the failure already reported, so they are dropped: that one unraisable
    exception, and asyncio's never-retrieved records whose traceback runs through orbax's
    checkpoint code. Every other exception is reported as before. Installed once per process,
    before the first restore.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_abandoned_reads", False):
        return

    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_abandoned_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(AbandonedReadRecords())


class NonFiniteTrainingError(RuntimeError):
    """Training stopped after too many non-finite updates in a row."""


def check_nonfinite(
    counts: dict[str, int],
    *,
    limit: int,
    longest_at_start: int,
    step: int,
    last_checkpoint: Callable[[], int | None],
) -> None:
    """Raise :class:`NonFiniteTrainingError` after ``limit`` skipped updates in a row.

    Args:
      counts: the skipped-update counters (``consecutive_nonfinite``, ``longest_nonfinite``).
      limit: ``training.max_consecutive_nonfinite``.
      longest_at_start: ``longest_nonfinite`` when this run resumed (an older run of skipped
        updates already reported does not stop it again).
      step: the step training is at.
      last_checkpoint: the step of the last checkpoint written (``None`` if none), asked for
        only when training stops.
    """
    new_longest = counts["longest_nonfinite"] > longest_at_start
    if counts["consecutive_nonfinite"] < limit and not (
        new_longest and counts["longest_nonfinite"] >= limit
    ):
        return
    latest = last_checkpoint()
    kept = (
        f"The last checkpoint (step {latest}) holds the last good state."
        if latest is not None
        else "No checkpoint was written before it."
    )
    raise NonFiniteTrainingError(
        f"training stopped at step {step}: {counts['longest_nonfinite']} updates in a "
        "row had a non-finite loss or gradient (limit "
        f"training.max_consecutive_nonfinite={limit}); those updates were skipped. "
        f"{kept} Lower training.learning_rate or check the data."
    )
