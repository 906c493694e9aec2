"""Tests of blackout_jax.run.parallel and of training's independence from the device layout.

20 training steps of ``configs/tiny.py`` through ``python -m blackout_jax.main`` give the same
parameters (to float tolerance) on 1 device, on 8 forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on 1 device resuming an 8-device
checkpoint, and in two processes on localhost joined by ``jax.distributed``.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from blackout_jax.run import checkpointing, parallel, reporting
from tests.cli import cpu_environment
from tests.run.stored_state import read_state

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_STEPS = 20
OVERRIDES = [
    f"--config.training.num_steps={NUM_STEPS}",
    "--config.training.batch_size=8",
    "--config.training.log_every=5",
    "--config.training.checkpoint_every=10",
    "--config.training.eval_every=1000",
    "--config.eval.batch_size=8",
    "--config.eval.num_grid_samples=0",
]


def test_mesh_and_shardings_on_one_device():
    mesh = parallel.create_mesh()
    assert mesh.axis_names == (parallel.DATA_AXIS,)
    assert mesh.devices.size == jax.device_count()
    batch = parallel.global_batch(np.arange(8 * 3).reshape(8, 3), parallel.batch_sharding(mesh))
    assert batch.shape == (8, 3)
    np.testing.assert_array_equal(parallel.to_host(batch), np.arange(24).reshape(8, 3))
    shared = parallel.shared_array(np.ones((4, 2)), parallel.replicated_sharding(mesh))
    assert shared.sharding.is_fully_replicated
    assert parallel.any_process(True) and not parallel.any_process(False)
    assert parallel.is_primary()


def test_initialize_distributed_is_a_no_op_on_one_host(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
    assert parallel.initialize_distributed() is False
    assert parallel.initialize_distributed(num_processes=1) is False
    with pytest.raises(ValueError, match="process_id"):
        parallel.initialize_distributed(num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="num_processes"):
        parallel.initialize_distributed(num_processes=0)


def _flags(workdir: pathlib.Path, *extra: str) -> list[str]:
    return ["--config=configs/tiny.py", f"--workdir={workdir}", *OVERRIDES, *extra]


def _command(workdir: pathlib.Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "blackout_jax.main", *_flags(workdir, *extra)]


def _train(workdir: pathlib.Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        _command(workdir), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _final_state(workdir: pathlib.Path) -> dict:
    store = checkpointing.CheckpointStore(
        workdir / "checkpoints", checkpoint_every=10, keep_checkpoints=2
    )
    state = read_state(store, NUM_STEPS)
    store.close()
    return state


def _assert_same_state(actual: dict, expected: dict) -> None:
    assert int(actual["step"]) == int(expected["step"]) == NUM_STEPS
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for name in ("params", "ema_params", "opt_state"):
        for got, want in zip(
            jax.tree.leaves(actual[name]), jax.tree.leaves(expected[name]), strict=True
        ):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def _train_losses(workdir: pathlib.Path) -> list[float]:
    rows = reporting.read_metrics(workdir / reporting.METRICS_FILE)
    return [row["loss"] for row in rows if row["split"] == "train"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-device reference run."""
    root = tmp_path_factory.mktemp("parallel")
    _train(root / "one_device", cpu_environment())
    return {"root": root, "reference": _final_state(root / "one_device")}


@pytest.mark.slow
def test_eight_devices_equal_one_device_and_restore_on_one(runs):
    root = runs["root"]
    eight = root / "eight_devices"
    _train(eight, cpu_environment(num_devices=8))
    _assert_same_state(_final_state(eight), runs["reference"])
    metadata = checkpointing.CheckpointStore(
        eight / "checkpoints", checkpoint_every=10, keep_checkpoints=2
    ).read_json(NUM_STEPS, "metadata")
    assert metadata["num_devices"] == 8
    np.testing.assert_allclose(_train_losses(eight), _train_losses(root / "one_device"), rtol=1e-4)

    # Resume the 8-device checkpoint of step 10 on one device and finish: same result.
    resumed = root / "resumed_on_one"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(eight / "checkpoints" / "10", resumed / "checkpoints" / "10")
    _train(resumed, cpu_environment())
    _assert_same_state(_final_state(resumed), runs["reference"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_TWO_PROCESSES = """
import json, sys
from jax.experimental import multihost_utils
from blackout_jax.run import train
calls, counts = [], []
gather = multihost_utils.process_allgather
def counted_gather(*args, **kwargs):
    calls.append(1)
    return gather(*args, **kwargs)
multihost_utils.process_allgather = counted_gather
run = train.train_and_evaluate
def counted_run(*args, **kwargs):
    calls.clear()
    result = run(*args, **kwargs)
    counts.append(len(calls))
    return result
train.train_and_evaluate = counted_run
from blackout_jax import main
counted_workdir = sys.argv[1]
sys.argv = ["blackout-jax", *sys.argv[2:]]
try:
    main.run()  # joins the other process (--coordinator_address ...) and trains
except SystemExit as stop:
    if stop.code not in (None, 0):
        raise
from blackout_jax.run import config as config_lib
from blackout_jax.run import network
from configs import tiny
config = tiny.get_config()
config.training.num_steps = 40
config.training.log_every = 10
config.training.checkpoint_every = 20
config.training.eval_every = 1000
config.eval.num_grid_samples = 0
config = config_lib.parse(config)
train.train_and_evaluate(config, counted_workdir, dataset=network.load_data(config))
import jax
from blackout_jax.run import parallel, safety
flag = safety.ShutdownFlag()
flag.requested = jax.process_index() == 1  # a signal seen by process 1 alone
try:
    with flag.interrupting(parallel.any_process):
        interrupt = "went on"
except safety.Interrupted:
    interrupt = "stopped"
told = parallel.primary_text(f"found by process {jax.process_index()}")
print(json.dumps({"interrupt": interrupt, "primary_text": told}))
print(json.dumps(counts))
"""


@pytest.fixture(scope="module")
def two_processes(runs):
    """Two processes on localhost joined through the command line's flags train the 20-step
    run of the one-device reference into one run folder, then, still joined, 40 steps of
    configs/tiny.py in-process; both runs log 4 times, save twice and evaluate once. Each
    process prints the host collectives (``process_allgather`` calls) of its two runs."""
    root = runs["root"] / "two_processes"
    address = f"127.0.0.1:{_free_port()}"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _TWO_PROCESSES,
                str(root / "counted"),
                *_flags(
                    root / "run",
                    f"--coordinator_address={address}",
                    "--num_processes=2",
                    f"--process_id={index}",
                ),
            ],
            cwd=REPO_ROOT,
            env=cpu_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=900))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    return {"workdir": root / "run", "stdout": [stdout for stdout, _ in outputs]}


@pytest.mark.slow
def test_two_processes_train_the_same_steps_as_one(runs, two_processes):
    stdout = two_processes["stdout"]
    # Process 0 alone reports; both take part in the checkpoint.
    assert f"step {NUM_STEPS}/{NUM_STEPS}" in stdout[0]
    assert f"step {NUM_STEPS}/{NUM_STEPS}" not in stdout[1]
    workdir = two_processes["workdir"]
    _assert_same_state(_final_state(workdir), runs["reference"])
    metadata = checkpointing.CheckpointStore(
        workdir / "checkpoints", checkpoint_every=10, keep_checkpoints=2
    ).read_json(NUM_STEPS, "metadata")
    assert metadata["num_processes"] == 2


@pytest.mark.slow
def test_two_processes_cross_hosts_only_where_something_is_logged_or_saved(two_processes):
    """40 steps make as many host collectives as 20 when both log 4 times, save twice and
    evaluate once: no step in between waits for the other host."""
    for stdout in two_processes["stdout"]:
        twenty, forty = json.loads(stdout.strip().splitlines()[-1])
        assert twenty > 0  # the log rows, the evaluation and the saves do cross hosts
        assert forty == twenty


@pytest.mark.slow
def test_two_processes_agree_on_a_signal_and_on_what_process_0_found(two_processes):
    """A signal seen by process 1 alone stops both at the start of an evaluation (a
    collective), and both act on process 0's finding."""
    for stdout in two_processes["stdout"]:
        agreed = json.loads(stdout.strip().splitlines()[-2])
        assert agreed == {"interrupt": "stopped", "primary_text": "found by process 0"}
