"""Console progress of the run layer: training steps, chunks of work and sampler steps.

One reporter, :class:`ProgressReporter`, for every loop that reports. With a terminal on
stderr it shows a tqdm bar (units done, units/s, ETA); otherwise (logs, CI) a loop with a
``description`` writes a line ``description: done/total units, x units/s`` on stderr at every
tenth of the loop, and training writes its own line per log period with :meth:`~ProgressReporter.
log`. The same object serves three uses:

* training: ``update(step)`` every step, ``log(step, scalars)`` every log period;
* chunks of work: ``track(range(num_chunks))``;
* the compiled samplers of :mod:`blackout_jax.sampling`, whose ``progress`` argument is a
  callable ``(steps_done, total)``: the reporter itself (:meth:`~ProgressReporter.__call__`),
  one object for every run of the process (:func:`sampler_progress`), since the samplers are
  compiled once per progress callback; on a terminal only, so that elsewhere the sampler's
  program comes from the persistent compilation cache.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO, TypeVar

from blackout_jax.run import reporting

Item = TypeVar("Item")


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def format_scalars(scalars: Mapping[str, Any]) -> str:
    """``"loss 1.2345 grad_norm 0.5"``: floats with 4 significant digits."""
    parts = []
    for name, value in scalars.items():
        value = reporting.plain_number(value)
        parts.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
    return " ".join(parts)


class ProgressReporter:
    """Console progress of a loop of ``total`` units, from ``start``.

    Args:
      total: units in the loop (the last training step, the number of chunks, ...).
      start: units done before (a resumed run).
      unit: what one unit is called (``"step"``, ``"chunk"``).
      description: the loop's label on the bar and its lines; without one, :meth:`update`
        writes no lines when there is no bar.
      use_bar: force the bar on or off; ``None`` = bar only when stderr is a terminal.
      enabled: ``False`` makes every method a no-op (processes other than the primary).
      stream: where :meth:`log` and :meth:`message` lines go when there is no bar (default
        stdout).
    """

    def __init__(
        self,
        total: int,
        start: int = 0,
        *,
        unit: str = "step",
        description: str = "",
        use_bar: bool | None = None,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.unit = unit
        self.description = description
        self.enabled = enabled
        self.stream = stream
        self.use_bar = sys.stderr.isatty() if use_bar is None else use_bar
        self._bar: Any = None
        self._restart(total, start)

    def _restart(self, total: int, start: int) -> None:
        """Begin the loop (again): ``start`` of ``total`` units done, the clocks set to now."""
        self.close()
        self.total = total
        self._first_step = self._last_step = self._done = start
        self._first_time = self._last_time = time.perf_counter()
        self._tenths_reported = start * 10 // max(total, 1)

    def _open_bar(self) -> None:
        """The tqdm bar of the loop, from the units done so far (opened at the first update)."""
        from tqdm import tqdm

        self._bar = tqdm(
            total=self.total,
            initial=self._done,
            unit=self.unit,
            desc=self.description or None,
            dynamic_ncols=True,
        )

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, file=self.stream or sys.stdout, flush=True)

    def update(self, done: int) -> None:
        """``done`` units of the loop are done: the bar moves; without a bar a loop with a
        description writes a line on stderr at every tenth and at the end."""
        if self.enabled and self.use_bar and self._bar is None:
            self._open_bar()
        self._done = done
        if not self.enabled:
            return
        if self._bar is not None:
            if done > self._bar.n:
                self._bar.update(done - self._bar.n)
            return
        tenths = done * 10 // max(self.total, 1)
        if self.description and (tenths > self._tenths_reported or done >= self.total):
            self._tenths_reported = tenths
            elapsed = time.perf_counter() - self._first_time
            units = f"{self.unit}s"
            rate = f"{(done - self._first_step) / elapsed:.1f} {units}/s" if elapsed > 0 else "..."
            line = f"{self.description}: {done}/{self.total} {units}, {rate}"
            print(line, file=sys.stderr, flush=True)

    def __call__(self, done: int, total: int) -> None:
        """The callback form ``progress(steps_done, total)`` of the samplers: a ``done`` not
        above the last one (or another ``total``) begins a new loop, timed from this report;
        the bar closes when the loop ends."""
        if done <= self._done or total != self.total:
            self._restart(total, done)
        self.update(done)
        if done >= total:
            self.close()

    def track(self, items: Iterable[Item]) -> Iterator[Item]:
        """Yield ``items``, one unit each (the loop restarts at 0), and close at the end."""
        self._restart(self.total, 0)
        self.update(0)
        for done, item in enumerate(items, start=1):
            yield item
            self.update(done)
        self.close()

    def log(self, step: int, scalars: Mapping[str, Any]) -> float:
        """Report ``scalars`` at ``step``; returns the steps/s since the previous call."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        rate = (step - self._last_step) / elapsed
        self._last_step, self._last_time = step, now
        if not self.enabled:
            return rate
        if self.use_bar:
            self.update(step)
            self._bar.set_postfix_str(format_scalars(scalars))
            return rate
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        percent = 100.0 * step / max(self.total, 1)
        self._write(
            f"step {step}/{self.total} ({percent:.1f}%) | {format_scalars(scalars)} | "
            f"{rate:.2f} steps/s | ETA {_format_duration(eta)}"
        )
        return rate

    def message(self, text: str) -> None:
        """Print a line (above the bar when there is one)."""
        if self.enabled:
            self._write(text)

    def reset_clock(self, step: int) -> None:
        """Restart the steps/s clock of :meth:`log` at ``step`` (after an evaluation or a
        checkpoint)."""
        self._last_step, self._last_time = step, time.perf_counter()

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@functools.cache
def _sampler_reporter() -> ProgressReporter:
    return ProgressReporter(0, description="sampling")


def sampler_progress(show: bool = True, *, terminal: bool | None = None) -> ProgressReporter | None:
    """The ``progress`` argument of :func:`blackout_jax.sample`, :func:`~blackout_jax.impute`
    and :func:`~blackout_jax.unthin`: one reporter for every sampler run of this process (so
    one compilation serves them all) when ``show`` (the primary host) and stderr is a terminal
    (``terminal``, default ``sys.stderr.isatty()``), else ``None``.

    Without a terminal (logs, batch jobs) the sampler runs without a progress callback, so its
    program is loaded from the persistent compilation cache: JAX keeps programs with host
    callbacks out of that cache, and the sampler, network included, would be compiled again by
    every command (about 3 s for configs/tiny.py, far more for the reference networks). The
    chunks of a command still report there (:meth:`ProgressReporter.track`)."""
    terminal = sys.stderr.isatty() if terminal is None else terminal
    return _sampler_reporter() if show and terminal else None
