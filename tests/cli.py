"""Running ``python -m blackout_jax.main`` in a subprocess, for the end-to-end tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(*arguments: str, num_devices: int | None = None) -> subprocess.CompletedProcess:
    """Run the command line from the repository root on the CPU; output captured as text.

    ``num_devices`` forces that many host devices (``--xla_force_host_platform_device_count``).
    """
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    if num_devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    return subprocess.run(
        [sys.executable, "-m", "blackout_jax.main", *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
