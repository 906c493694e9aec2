"""Work whose results are saved ends at once on a signal, with its own line and status."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

from blackout_jax.run import safety
from tests.cli import REPO_ROOT, cpu_environment

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from blackout_jax.run import safety

    with safety.StopAtOnce(lambda name: f"{name}: stopped at once"):
        with safety.ShutdownFlag() as flag:
            flag.arm()  # training with work to save: the signal only sets the flag
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
            print("armed: requested", flag.requested, flag.signal_name, flush=True)
            flag.requested = False
            with flag.ending_at_once(lambda name: f"{name}: evaluation ended, step kept", 75):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            print("not reached", flush=True)
    """
)


def test_a_signal_inside_ends_the_process_with_the_line_and_status_given():
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=REPO_ROOT,
        env=cpu_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 75, result.stderr[-2000:]
    assert result.stdout == "armed: requested True SIGTERM\n"
    assert result.stderr == "SIGTERM: evaluation ended, step kept\n"


def test_without_stop_at_once_it_stops_at_the_next_chunk_boundary():
    flag = safety.ShutdownFlag()
    with flag.ending_at_once(lambda name: name, 75):
        safety.stop_if_interrupted()
        flag.requested, flag.signal_name = True, "SIGTERM"
        with pytest.raises(safety.Interrupted, match="SIGTERM"):
            safety.stop_if_interrupted()
    with pytest.raises(safety.Interrupted), flag.ending_at_once(lambda name: name, 75):
        pass  # a signal that arrived before: raised on entry


def test_leaving_ends_the_watcher_thread_and_closes_its_pipe():
    """A process that runs the command several times (a notebook, the tests) keeps no thread or
    file descriptor of an earlier run's signal watcher."""
    watchers = []
    descriptors = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with safety.StopAtOnce(lambda name: f"{name}: stopped at once"):
            started = [t for t in threading.enumerate() if t.name.endswith("(_watch)")]
            assert len(started) == 1 and started[0] not in watchers
            watchers += started
            pipe = set(os.listdir("/proc/self/fd")) - descriptors
            assert len(pipe) >= 2  # the watcher's two ends
        for thread in watchers:
            thread.join(timeout=10)
        assert not any(thread.is_alive() for thread in watchers)
        assert not pipe & set(os.listdir("/proc/self/fd"))
