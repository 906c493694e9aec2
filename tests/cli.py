"""Running the command line (``blackout_jax.main``) for the end-to-end tests: in this process,
or in a child process where the test needs one of its own."""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import subprocess
import sys
import traceback

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# XLA flags for the tests' compilations: LLVM's level-1 optimisation and, where this jaxlib still
# has them (jaxlib 0.12 has only the MLIR fusion emitters), XLA's LLVM IR emitters for fused
# element-wise work. The suite's time on a CPU is mostly compilation of programs that then run
# for milliseconds; with jaxlib 0.10.2 these flags compile the samplers in about 2.5 times fewer
# CPU seconds and the whole suite in about a quarter less time (experiments/RESULTS.md, "CI
# steps"). The programs compute the same functions (to float rounding); only their speed
# differs, and no test measures speed.
OPTIMISATION_FLAG = "--xla_backend_optimization_level=1"
EMITTER_FLAG = "--xla_cpu_use_fusion_emitters=false"
TEST_XLA_FLAGS_VARIABLE = "BLACKOUT_JAX_TEST_XLA_FLAGS"  # found once, inherited by every child


def xla_flags_for_tests() -> str:
    """The tests' XLA flags that this jaxlib accepts.

    XLA ends the process at start-up on a flag it does not know, so a child process tries the
    emitter flag once; the answer is kept in the environment (``TEST_XLA_FLAGS_VARIABLE``), which
    pytest-xdist's workers and every child inherit.
    """
    if TEST_XLA_FLAGS_VARIABLE not in os.environ:
        both = f"{OPTIMISATION_FLAG} {EMITTER_FLAG}"
        probe = subprocess.run(
            [sys.executable, "-c", "import jax; jax.devices()"],
            env={**os.environ, "XLA_FLAGS": both, "JAX_PLATFORMS": "cpu"},
            capture_output=True,
        )
        os.environ[TEST_XLA_FLAGS_VARIABLE] = both if probe.returncode == 0 else OPTIMISATION_FLAG
    return os.environ[TEST_XLA_FLAGS_VARIABLE]


def cpu_environment(num_devices: int | None = None) -> dict[str, str]:
    """This process's environment for a child on the CPU, this interpreter first on PATH.

    ``num_devices`` forces that many host devices (``--xla_force_host_platform_device_count``).
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags_for_tests()
    env["JAX_PLATFORMS"] = "cpu"
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    if num_devices is not None:
        env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={num_devices}"
    return env


def run_main(
    *arguments: str, num_devices: int | None = None, own_process: bool = False
) -> subprocess.CompletedProcess:
    """Run the command line from the repository root on the CPU; output captured as text.

    It runs in this process, through :func:`blackout_jax.main.run` as the console command
    calls it (exit status from its ``SystemExit``; an escaping exception is status 1 with its
    traceback on stderr), which spares each call the seconds of starting Python and importing
    JAX and lets later commands reuse the programs it compiled (until
    :func:`tests.conftest.release_compiled_programs` releases them). ``own_process=True``, or
    forcing ``num_devices`` host devices, runs ``python -m blackout_jax.main`` in a child
    process instead.
    """
    if num_devices is None and not own_process:
        return _run_main_here(arguments)
    return subprocess.run(
        [sys.executable, "-m", "blackout_jax.main", *arguments],
        cwd=REPO_ROOT,
        env=cpu_environment(num_devices),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _run_main_here(arguments: tuple[str, ...]) -> subprocess.CompletedProcess:
    from absl import flags

    from blackout_jax import main

    stdout, stderr = io.StringIO(), io.StringIO()
    status = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.chdir(REPO_ROOT))
        stack.enter_context(contextlib.redirect_stdout(stdout))
        stack.enter_context(contextlib.redirect_stderr(stderr))
        stack.callback(_forget_flags, flags.FLAGS)
        saved_argv, sys.argv = sys.argv, ["blackout_jax.main", *arguments]
        stack.callback(setattr, sys, "argv", saved_argv)
        try:
            main.run()
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except Exception:  # noqa: BLE001 (as a child process would: status 1, the traceback)
            traceback.print_exc()
            status = 1
    return subprocess.CompletedProcess(
        ["blackout_jax.main", *arguments], status, stdout.getvalue(), stderr.getvalue()
    )


def _forget_flags(flag_values) -> None:
    """Flags back to their defaults, without the ``--config.<field>`` override flags that
    parsing a config file defines (the next command's config defines its own)."""
    flag_values.unparse_flags()
    for name in [name for name in flag_values if name.startswith("config.")]:
        delattr(flag_values, name)


def only_output(folder: pathlib.Path, stem: str) -> pathlib.Path:
    """The one ``<stem>_<draws>.npz`` in ``folder`` (a command's result, named by its draws)."""
    found = sorted(folder.glob(f"{stem}_*.npz"))
    assert len(found) == 1, f"expected one {stem}_*.npz in {folder}, found {found}"
    return found[0]
