"""Commands beside a running trainer, in separate processes: the run folder's lock stops a
second trainer, and inference runs while the trainer prunes its checkpoints.

One trainer (a copy of the tiny run, resumed for many steps with a checkpoint at every step and
only the newest kept) serves both tests; it is stopped with SIGTERM at the end, and must then
save and exit with ``training.preempted_exit_code``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.cli import REPO_ROOT, cpu_environment
from tests.end_to_end.reliability import NO_GRID, error_lines

pytestmark = pytest.mark.slow

PRUNING = (
    "--config.training.num_steps=100000",
    "--config.training.checkpoint_every=1",
    "--config.training.keep_checkpoints=1",
    "--config.training.eval_every=100000",
    "--config.training.log_every=10",
    NO_GRID,
)


def _command(workdir, *flags) -> list[str]:
    return [
        sys.executable,
        "-m",
        "blackout_jax.main",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        *flags,
    ]


def _start(workdir, *flags) -> subprocess.Popen:
    return subprocess.Popen(
        _command(workdir, *flags),
        cwd=REPO_ROOT,
        env=cpu_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def pruning_trainer(trained_run, tmp_path_factory):
    """A trainer resuming a copy of the tiny run, saving every step and keeping one
    checkpoint; yields (process, workdir) once it has logged step 20 (the copy holds 6)."""
    workdir = tmp_path_factory.mktemp("beside_a_trainer") / "run"
    shutil.copytree(trained_run, workdir)
    process = _start(workdir, *PRUNING)
    stderr: list[str] = []
    drain_stderr = threading.Thread(target=stderr.extend, args=(process.stderr,), daemon=True)
    drain_stderr.start()
    for line in process.stdout:
        if line.startswith("step 20/"):
            break
    else:
        process.wait()
        drain_stderr.join()
        raise AssertionError("".join(stderr)[-3000:])
    stdout: list[str] = []  # read on, so that the trainer never waits on a full pipe
    drain_stdout = threading.Thread(target=stdout.extend, args=(process.stdout,), daemon=True)
    drain_stdout.start()
    yield process, workdir
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    drain_stdout.join()
    drain_stderr.join()
    output = "".join(stdout + stderr)
    assert process.returncode == 75, output[-3000:]  # saved, then training.preempted_exit_code
    assert "SIGTERM received: saved the checkpoint of step" in output


def test_a_second_trainer_exits_2_naming_the_lock_and_the_first_trains_on(pruning_trainer):
    process, workdir = pruning_trainer
    second = subprocess.run(
        _command(workdir, *PRUNING),
        cwd=REPO_ROOT,
        env=cpu_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 2, second.stderr[-3000:]
    errors = error_lines(second.stderr)
    assert len(errors) == 1, second.stderr[-3000:]
    assert f"is being trained by pid {process.pid}" in errors[0], errors
    assert "Traceback" not in second.stderr
    assert process.poll() is None  # the first trainer still runs


def test_sample_commands_beside_a_pruning_trainer_all_succeed(pruning_trainer):
    """Each reads the newest checkpoint while the trainer writes a new one every step and
    deletes the older: a checkpoint that vanishes mid-read is retried on the newest."""
    process, workdir = pruning_trainer
    samplers = [
        _start(
            workdir,
            "--mode=sample",
            "--config.sampling.num_samples=4",
            f"--config.sampling.num_steps={3 + index}",
        )
        for index in range(2)
    ]
    started = time.monotonic()
    for sampler in samplers:
        stdout, stderr = sampler.communicate(timeout=300)
        assert sampler.returncode == 0, stderr[-3000:]
        (wrote,) = [line for line in stdout.splitlines() if line.startswith("wrote 4 samples")]
        assert int(wrote.split()[5]) > 20, wrote  # a checkpoint of this trainer, since pruned
        assert "Traceback" not in stderr
    print(f"2 sample commands beside the trainer: {time.monotonic() - started:.1f} s")
    assert process.poll() is None
    assert len(list((workdir / "samples").glob("samples_*_binomial_bridge_*.npz"))) == 2
