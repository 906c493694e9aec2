"""Signals met where a user meets them: during the imports before ``main`` and during an
evaluation of a training run.

Each case asserts the exit status, the one line naming the signal, no traceback, and that
nothing the user had is lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.cli import REPO_ROOT, cpu_environment

IMPORT_TIME = "import time:"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_imports_is_one_line_and_128_plus_its_number(signum):
    """The signal arrives once ``absl`` is imported (``-X importtime`` reports each finished
    import on stderr), i.e. while JAX and ml_collections are still being imported."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "blackout_jax.main",
            "--mode=show_config",
            "--config=configs/tiny.py",
        ],
        cwd=REPO_ROOT,
        env=cpu_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.rstrip().endswith("| absl"):
            break
    assert "jax" not in {line.rsplit("|", 1)[-1].strip() for line in seen}, "signal too late"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    name = signal.Signals(signum).name
    messages = [line for line in stderr.splitlines() if not line.startswith(IMPORT_TIME)]
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert messages == [f"{name} received while starting: stopped, nothing was written"]
    assert stdout == ""
