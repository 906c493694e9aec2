"""Signals met where a user meets them: during the imports before ``main`` and during an
evaluation of a training run.

Each case asserts the exit status, the one line naming the signal, no traceback, and that
nothing the user had is lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from blackout_jax.run import reporting
from tests.cli import REPO_ROOT, cpu_environment

IMPORT_TIME = "import time:"
METRICS = reporting.METRICS_FILE


LAZY_NAMES = """
import sys
import blackout_jax
assert "jax" not in sys.modules, "import blackout_jax imported jax"
assert set(blackout_jax.__all__) <= set(dir(blackout_jax))
from blackout_jax import sample, NllBoundTerms, GRIDS
from blackout_jax import models  # a subpackage, not a public name
for name in blackout_jax.__all__:
    assert getattr(blackout_jax, name) is getattr(
        sys.modules["blackout_jax." + blackout_jax._SUBMODULE_OF[name]], name
    ), name
try:
    blackout_jax.no_such_name
except AttributeError as error:
    print(error)
"""


def test_the_public_names_load_on_first_use():
    """``import blackout_jax`` (the first import of ``python -m blackout_jax.main``) is quick:
    no JAX until a name is asked for; every name of ``__all__`` then comes from its module."""
    result = subprocess.run(
        [sys.executable, "-c", LAZY_NAMES],
        cwd=REPO_ROOT,
        env=cpu_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "module 'blackout_jax' has no attribute 'no_such_name'\n"


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


LONG_EVALUATION = (  # one sampler chunk of many steps: an evaluation that takes a while
    "--config.training.num_steps=6",
    "--config.training.eval_every=4",
    "--config.training.checkpoint_every=100",
    "--config.eval.num_grid_samples=256",
    "--config.sampling.batch_size=256",
    "--config.sampling.num_steps=20000",
)


def _train_until_evaluating(workdir, step):
    """Start the long-evaluation training command; return it once the evaluation at ``step``
    reports its first progress (its computation has begun), with the output so far."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "blackout_jax.main",
            "--config=configs/tiny.py",
            f"--workdir={workdir}",
            *LONG_EVALUATION,
        ],
        cwd=REPO_ROOT,
        env=cpu_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if any(f"evaluating at step {step}" in seen for seen in lines) and "chunks" in line:
            return process, lines
    process.wait()
    raise AssertionError("".join(lines)[-3000:])


def _interrupt_evaluation(workdir, step) -> tuple[str, str, float]:
    """SIGTERM to the long-evaluation command inside its evaluation at ``step``: the output
    before the signal, after it, and the seconds until the process ended."""
    process, lines = _train_until_evaluating(workdir, step)
    time.sleep(0.5)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    after, _ = process.communicate(timeout=120)
    waited = time.monotonic() - signalled
    before = "".join(lines)
    assert process.returncode == 75, (before + after)[-3000:]  # training.preempted_exit_code
    assert "Traceback" not in before + after
    return before, after, waited


def _checkpoints(workdir) -> list[str]:
    return sorted(path.name for path in (workdir / "checkpoints").iterdir())


@pytest.mark.slow
def test_a_signal_during_an_evaluation_ends_at_once_keeping_its_checkpoint(tmp_path):
    """The evaluation steps are checkpoint steps (4 is not a multiple of checkpoint_every),
    saved before the evaluation starts; a signal inside the evaluation's one long sampler
    chunk ends the process at once, and the same command resumes from that checkpoint."""
    workdir = tmp_path / "run"
    _, after, waited = _interrupt_evaluation(workdir, 4)
    print(f"exited {waited:.2f} s after SIGTERM during the evaluation at step 4")
    assert waited < 20, waited
    said = [line for line in after.splitlines() if "SIGTERM" in line]
    assert said == [
        f"SIGTERM received: the evaluation at step 4 was interrupted; kept the checkpoint of "
        f"step 4 in {workdir}; the same command resumes training (and evaluates again), "
        "--mode=evaluate evaluates that checkpoint"
    ]
    assert "saved the checkpoint" not in after  # ended at once, not at a chunk boundary
    assert _checkpoints(workdir) == ["4"]
    assert not list(workdir.rglob("*.tmp"))
    assert "eval" not in {row["split"] for row in reporting.read_metrics(workdir / METRICS)}

    before, after, _ = _interrupt_evaluation(workdir, 6)  # the same command resumes
    assert f"resumed from the checkpoint of step 4 in {workdir}" in before
    assert "kept the checkpoint of step 6" in after
    assert "--mode=evaluate redoes the evaluation" in after
    assert _checkpoints(workdir) == ["4", "6"]
    rows = reporting.read_metrics(workdir / METRICS)
    assert [row["step"] for row in rows if row["split"] == "train"] == [2, 4, 6]
