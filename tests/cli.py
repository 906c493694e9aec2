"""Running ``python -m blackout_jax.main`` in a subprocess, for the end-to-end tests."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def cpu_environment(num_devices: int | None = None) -> dict[str, str]:
    """This process's environment for a child on the CPU, this interpreter first on PATH.

    ``num_devices`` forces that many host devices (``--xla_force_host_platform_device_count``).
    """
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    if num_devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    return env


def run_main(*arguments: str, num_devices: int | None = None) -> subprocess.CompletedProcess:
    """Run the command line from the repository root on the CPU; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "blackout_jax.main", *arguments],
        cwd=REPO_ROOT,
        env=cpu_environment(num_devices),
        capture_output=True,
        text=True,
        timeout=600,
    )


def only_output(folder: pathlib.Path, stem: str) -> pathlib.Path:
    """The one ``<stem>_<draws>.npz`` in ``folder`` (a command's result, named by its draws)."""
    found = sorted(folder.glob(f"{stem}_*.npz"))
    assert len(found) == 1, f"expected one {stem}_*.npz in {folder}, found {found}"
    return found[0]
