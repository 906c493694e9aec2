"""What a run does when something fails: a shutdown signal, a full disk, a failed read,
updates that stop being finite.

* :class:`StopAtOnce`: SIGTERM/SIGINT end a command at once, with one line, while there is
  nothing to save (start-up, data loading, the first compilation, the inference modes).
  The temporary files of the atomic writes in progress (:func:`unfinished_write`) are
  removed first (:func:`remove_unfinished_writes`).
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
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any


class Interrupted(Exception):
    """A shutdown signal arrived during work that stops at once (an evaluation)."""


class StopAtOnce:
    """SIGINT/SIGTERM end the process at once, with one line, while nothing needs saving (a
    context manager; ``main`` holds it for the whole command).

    A Python signal handler runs only between two bytecodes of the main thread, so a signal
    during a long compilation or data load would wait for it. Here the signal's number is
    written to a pipe by the interpreter's C-level handler (``signal.set_wakeup_fd``), and a
    watcher thread prints ``message(signal name)`` on stderr and ends the process with status
    ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM) within moments, whatever the
    main thread is doing. While training has work to save (:meth:`ShutdownFlag.arm`) the
    watcher stands down and :class:`ShutdownFlag` handles the signals.
    """

    def __init__(self, message: Callable[[str], str]) -> None:
        self._message = message
        self._status: int | None = None  # None: 128 + the signal's number
        self._active = False
        self._previous: dict[int, Any] = {}
        self._wakeup_fd = -1
        self._write_end = -1

    def __enter__(self) -> StopAtOnce:
        global _stop_at_once
        if threading.current_thread() is not threading.main_thread():
            return self
        read_end, self._write_end = os.pipe()
        os.set_blocking(self._write_end, False)
        self._wakeup_fd = signal.set_wakeup_fd(self._write_end, warn_on_full_buffer=False)
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, _no_python_action)
        threading.Thread(target=self._watch, args=(read_end,), daemon=True).start()
        self._active = True
        _stop_at_once = self
        return self

    def _watch(self, read_end: int) -> None:
        while True:
            received = os.read(read_end, 1)
            if not received:  # __exit__ closed the write end
                os.close(read_end)
                return
            if self._active:
                name = signal.Signals(received[0]).name
                message, status = self._message, self._status
                remove_unfinished_writes()
                sys.stderr.write(message(name) + "\n")
                sys.stderr.flush()
                os._exit(128 + received[0] if status is None else status)

    def stand_down(self) -> None:
        """Leave the signals to another handler (a run with work to save)."""
        self._active = False

    def stand_up(self) -> None:
        """Stop at once again."""
        self._active = True

    @contextlib.contextmanager
    def ending(self, message: Callable[[str], str], status: int) -> Iterator[None]:
        """While inside, a signal ends the process at once with ``message(signal name)`` and
        exit status ``status`` (e.g. an evaluation whose step is already checkpointed), even
        while :meth:`stand_down` holds; outside, the watcher is as it was."""
        saved = self._message, self._status, self._active
        self._message, self._status, self._active = message, status, True
        try:
            yield
        finally:
            self._message, self._status, self._active = saved

    def __exit__(self, *exc_info: object) -> None:
        global _stop_at_once
        if not self._previous:
            return
        self._active = False
        _stop_at_once = None
        signal.set_wakeup_fd(self._wakeup_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        os.close(self._write_end)  # the watcher thread reads the end of the pipe and ends


def _no_python_action(signum: int, frame: Any) -> None:
    """The Python-level handler while :class:`StopAtOnce` is active: the watcher thread acts."""
    del signum, frame


_stop_at_once: StopAtOnce | None = None


_unfinished_writes: set[str] = set()
_unfinished_writes_lock = threading.Lock()
_exiting = threading.Event()


@contextlib.contextmanager
def unfinished_write(path: str) -> Iterator[None]:
    """While inside, ``path`` (the temporary file of an atomic write) is removed by
    :func:`remove_unfinished_writes` before the process ends at once; after it, the path is
    forgotten. Once the process is ending, a new write waits here for the end instead of
    starting a file that nothing would remove."""
    with _unfinished_writes_lock:
        exiting = _exiting.is_set()
        if not exiting:
            _unfinished_writes.add(path)
    if exiting:
        threading.Event().wait()  # the process ends within moments (os._exit)
    try:
        yield
    finally:
        with _unfinished_writes_lock:
            _unfinished_writes.discard(path)


def remove_unfinished_writes() -> list[str]:
    """Remove the temporary files of the atomic writes in progress (see
    :func:`unfinished_write`), before ``os._exit`` skips the cleanup of their ``finally``
    blocks; no write starts afterwards. Returns the paths removed."""
    _exiting.set()
    removed = []
    if not _unfinished_writes_lock.acquire(timeout=1.0):
        return removed
    try:
        for path in sorted(_unfinished_writes):
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(path)
    finally:
        _unfinished_writes_lock.release()
    return removed


class ShutdownFlag:
    """SIGTERM/SIGINT handling while training (a context manager).

    Until :meth:`arm` (called once the first step of this process has run, i.e. compiled) there
    is nothing to save since the last checkpoint: under :class:`StopAtOnce` (the command line)
    a signal ends the process at once with one line, even inside a long compilation; without
    it SIGTERM keeps its default action and SIGINT sets :attr:`requested`. Afterwards SIGTERM
    and SIGINT set :attr:`requested` and training saves and exits at the next step boundary.
    Inside :meth:`interrupting` (an evaluation) the work stops at the next
    :func:`stop_if_interrupted` (between two chunks of the bound or the samples) instead;
    inside :meth:`ending_at_once` (an evaluation of one process, its step saved) the process
    ends at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}
        self._main_thread = threading.current_thread() is threading.main_thread()

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    @contextlib.contextmanager
    def interrupting(self, agree: Callable[[bool], bool] = bool) -> Iterator[None]:
        """While inside, :func:`stop_if_interrupted` (called between two device calls of an
        evaluation, with no computation in flight) raises :class:`Interrupted` once a signal
        has arrived; one that arrived before raises on entry. ``agree(requested)`` decides
        on entry: :func:`blackout_jax.run.parallel.any_process` in a multi-process job (a
        collective), so that every process stops, or none."""
        global _interruptible
        if agree(self.requested):
            raise Interrupted(self.signal_name)
        _interruptible = self
        try:
            yield
        finally:
            _interruptible = None

    @contextlib.contextmanager
    def ending_at_once(self, message: Callable[[str], str], status: int) -> Iterator[None]:
        """Work whose results are already saved (an evaluation after its step's checkpoint):
        with :class:`StopAtOnce` in this thread's process, a signal inside ends the process at
        once with ``message(signal name)`` and exit status ``status``
        (:meth:`StopAtOnce.ending`); without it, as :meth:`interrupting`. A signal that
        arrived before raises :class:`Interrupted` on entry."""
        if not self._main_thread or _stop_at_once is None:
            with self.interrupting():
                yield
            return
        with _stop_at_once.ending(message, status):
            if self.requested:  # checked once the watcher acts: no signal falls between
                raise Interrupted(self.signal_name)
            yield

    def _install(self, signum: int, handler: Any) -> None:
        previous = signal.signal(signum, handler)
        self._previous.setdefault(signum, previous)

    def __enter__(self) -> ShutdownFlag:
        if self._main_thread and _stop_at_once is None:  # else handlers can't be set
            self._install(signal.SIGTERM, signal.SIG_DFL)
            self._install(signal.SIGINT, self._handle)
        return self

    def arm(self) -> None:
        """From now on SIGTERM and SIGINT save before exiting."""
        if not self._main_thread:
            return
        self._install(signal.SIGTERM, self._handle)
        self._install(signal.SIGINT, self._handle)
        if _stop_at_once is not None:
            _stop_at_once.stand_down()

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if _stop_at_once is not None:
            _stop_at_once.stand_up()


_interruptible: ShutdownFlag | None = None


def stop_if_interrupted(agree: Callable[[bool], bool] = bool) -> None:
    """Raise :class:`Interrupted` when inside :meth:`ShutdownFlag.interrupting` a signal has
    arrived (``agree(requested)``: :func:`blackout_jax.run.parallel.any_process` makes it a
    collective that every process calls at the same point, so all stop at the same chunk);
    nothing otherwise, and outside no collective is made. Call it where no device
    computation is in flight."""
    if _interruptible is not None and agree(_interruptible.requested):
        raise Interrupted(_interruptible.signal_name)


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
