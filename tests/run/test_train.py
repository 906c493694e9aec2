"""Tests of blackout_jax.run.train: the step, the EMA, skipped updates, and runs through main.

The end-to-end test drives ``python -m blackout_jax.main`` with ``configs/tiny.py`` through a
SIGTERM (saves and exits 0), a restart, a SIGKILL and a second restart that finishes, and checks
the run folder after each phase.
"""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from blackout_jax import data
from blackout_jax.run import checkpointing, reporting, safety, train, train_step
from blackout_jax.run import config as config_lib
from blackout_jax.run.config import TrainingConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from configs import tiny  # noqa: E402  (the repository root must be importable first)
from tests.cli import cpu_environment  # noqa: E402
from tests.run.stored_state import read_state  # noqa: E402


class SmallNet(nnx.Module):
    """A two-convolution stand-in for NCSN++ with the same call signature (fast to compile)."""

    def __init__(self, *, max_count: int, dropout: float, seed: int) -> None:
        rngs = nnx.Rngs(seed)
        self.inner = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.outer = nnx.Conv(4, 1, (3, 3), rngs=rngs)
        self.max_count = max_count
        self.dropout = dropout

    def __call__(self, counts, t, *, train=False, dropout_key=None):
        x = counts.astype(jnp.float32) / self.max_count
        time_channel = jnp.broadcast_to(t[:, None, None, None] / 10.0, x.shape)
        hidden = jax.nn.silu(self.inner(jnp.concatenate([x, time_channel], axis=-1)))
        if train and self.dropout > 0:
            keep = jax.random.bernoulli(dropout_key, 1.0 - self.dropout, hidden.shape)
            hidden = jnp.where(keep, hidden / (1.0 - self.dropout), 0.0)
        return jax.nn.softplus(self.outer(hidden))


def _small_net_factory(model_config, *, image_shape, max_count, t_end, num_steps, seed):
    del image_shape, t_end, num_steps
    return SmallNet(max_count=max_count, dropout=model_config.dropout, seed=seed)


def _small_step(ema_decay=0.5, clip=1.0, net=None, **step_options):
    """A jitted training step of ``net`` (default: :class:`SmallNet`) with its initial state;
    ``step_options`` go to :func:`train_step.make_train_step`."""
    net = net if net is not None else SmallNet(max_count=16, dropout=0.0, seed=0)
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    optimizer = train_step.skipping_nonfinite(
        optax.chain(optax.clip_by_global_norm(clip), optax.adam(1e-2))
    )
    step_fn = jax.jit(
        train_step.make_train_step(
            graphdef,
            optimizer,
            weighting="elbo",
            t_end=10.0,
            num_steps=100,
            global_batch_size=4,
            ema_decay=ema_decay,
            learning_rate=lambda count: 1e-2,
            **step_options,
        )
    )
    state = train_step.TrainState.create(params, optimizer, jax.random.key_data(jax.random.key(0)))
    return step_fn, state, rest


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_a_finite_step_updates_params_and_ema():
    step_fn, state, rest = _small_step(ema_decay=0.5)
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 17, (4, 8, 8, 1)), jnp.int32)
    new_state, metrics = step_fn(state, rest, batch)
    assert float(metrics["finite"]) == 1.0
    assert np.isfinite(float(metrics["loss"]))
    assert int(new_state.step) == 1
    old, new, ema = _leaves(state.params), _leaves(new_state.params), _leaves(new_state.ema_params)
    assert any(not np.allclose(a, b) for a, b in zip(old, new, strict=True))
    # at step 0 the decay is min(0.5, 1/10) = 0.1: ema = 0.1 old + 0.9 new.
    for a, b, e in zip(old, new, ema, strict=True):
        np.testing.assert_allclose(e, 0.1 * a + 0.9 * b, rtol=1e-5, atol=1e-7)


def test_a_non_finite_step_is_skipped_and_counted():
    step_fn, state, rest = _small_step()
    bad_batch = jnp.full((4, 8, 8, 1), jnp.nan, jnp.float32)
    new_state, metrics = step_fn(state, rest, bad_batch)
    assert float(metrics["finite"]) == 0.0
    for name in ("params", "ema_params"):
        for before, after in zip(
            _leaves(getattr(state, name)), _leaves(getattr(new_state, name)), strict=True
        ):
            np.testing.assert_array_equal(before, after)
    inner = new_state.opt_state.inner_state
    for before, after in zip(_leaves(state.opt_state.inner_state), _leaves(inner), strict=True):
        np.testing.assert_array_equal(before, after)
    assert int(new_state.step) == 1
    assert int(new_state.consecutive_nonfinite) == 1
    new_state, _ = step_fn(new_state, rest, bad_batch)
    assert int(new_state.consecutive_nonfinite) == 2
    assert int(new_state.longest_nonfinite) == 2
    good_batch = jnp.ones((4, 8, 8, 1), jnp.int32)
    new_state, metrics = step_fn(new_state, rest, good_batch)
    assert float(metrics["finite"]) == 1.0
    assert int(new_state.consecutive_nonfinite) == 0
    assert int(new_state.total_nonfinite) == 2
    assert int(new_state.longest_nonfinite) == 2


def test_ema_decay_warms_up_to_its_cap():
    np.testing.assert_allclose(train_step.ema_decay_at(0, 0.999), 0.1)
    np.testing.assert_allclose(train_step.ema_decay_at(90, 0.999), 91 / 100)
    np.testing.assert_allclose(train_step.ema_decay_at(10**6, 0.999), 0.999)


def test_learning_rate_warmup():
    rate = train_step.learning_rate_schedule(1e-3, 4)
    np.testing.assert_allclose(
        [float(rate(c)) for c in range(6)], [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )
    np.testing.assert_allclose(float(train_step.learning_rate_schedule(1e-3, 0)(0)), 1e-3)


def test_optimizer_clips_the_gradient_norm():
    config = TrainingConfig(learning_rate=1.0, warmup_steps=0, grad_clip_norm=0.5)
    optimizer = train_step.make_optimizer(config)
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.asarray([30.0, 40.0, 0.0])}
    state = optimizer.init(params)
    clipped = optax.clip_by_global_norm(0.5).update(grads, optax.EmptyState())[0]
    np.testing.assert_allclose(optax.tree.norm(clipped), 0.5, rtol=1e-6)
    updates, _ = optimizer.update(grads, state, params)
    # Adam's first update is -lr * sign(g) whatever the clipping: finite, same direction.
    np.testing.assert_allclose(np.asarray(updates["w"])[:2], [-1.0, -1.0], rtol=1e-3)


class _PoisonedIterator:
    """The tiny config's training stream as float32, all NaN from batch ``bad_from`` on."""

    def __init__(self, inner, bad_from):
        self.inner, self.bad_from, self.count = inner, bad_from, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = np.asarray(next(self.inner), np.float32)
        self.count += 1
        return np.full_like(batch, np.nan) if self.count > self.bad_from else batch

    def get_state(self):
        return {"inner": self.inner.get_state(), "count": self.count}

    def set_state(self, state):
        self.inner.set_state(state["inner"])
        self.count = state["count"]


class _PoisonedDataset:
    def __init__(self, dataset, bad_from):
        self.dataset, self.bad_from = dataset, bad_from

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def train_iterator(self, **kwargs):
        return _PoisonedIterator(self.dataset.train_iterator(**kwargs), self.bad_from)


def test_training_stops_after_too_many_non_finite_updates(tmp_path, monkeypatch):
    from blackout_jax import models

    monkeypatch.setattr(models, "create_model", _small_net_factory)
    config = tiny.get_config()
    config.training.num_steps = 30
    config.training.log_every = 1
    config.training.eval_every = 100
    config.training.checkpoint_every = 3
    config.training.max_consecutive_nonfinite = 3
    config.eval.num_grid_samples = 0
    dataset = data.load_dataset(config.data, seed=config.seed)
    poisoned = _PoisonedDataset(dataset, bad_from=7)  # steps 8, 9, 10, ... see NaN counts

    with pytest.raises(safety.NonFiniteTrainingError, match="max_consecutive_nonfinite=3") as info:
        train.train_and_evaluate(config_lib.parse(config), tmp_path, dataset=poisoned)
    assert "training stopped at step 10" in str(info.value)
    assert "(step 6)" in str(info.value)

    store = checkpointing.CheckpointStore(
        tmp_path / "checkpoints", checkpoint_every=3, keep_checkpoints=2
    )
    assert store.latest_step() == 6  # step 9 was inside the bad run: not saved
    assert all(np.all(np.isfinite(leaf)) for leaf in _leaves(read_state(store, 6)["params"]))
    store.close()
    rows = reporting.read_metrics(tmp_path / reporting.METRICS_FILE)
    assert [row["skipped_updates"] for row in rows if row["split"] == "train"] == [
        0, 0, 0, 0, 0, 0, 0, 1, 2, 3
    ]  # fmt: skip


def test_in_process_run_writes_the_run_folder_and_resumes(tmp_path, monkeypatch, capsys):
    from blackout_jax import models

    monkeypatch.setattr(models, "create_model", _small_net_factory)
    config = tiny.get_config()
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "grid_21.png").write_bytes(b"left by an earlier, failed run")
    result = train.train_and_evaluate(config_lib.parse(config), tmp_path)
    assert result.step == 6 and not result.stopped_by_signal
    assert set(result.last_eval) >= {"loss", "bits_per_dim", "nll_nats"}
    assert not (tmp_path / "samples" / "grid_21.png").exists()
    # Six steps of a tiny network do not beat per-pixel histograms: the user is told.
    baseline = result.last_eval["histogram_baseline_bits_per_dim"]
    assert 0 < baseline < result.last_eval["bits_per_dim"]
    output = capsys.readouterr().out
    assert "compiling the training step" in output and "evaluating at step 3" in output
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "undertrained" in warnings[0]
    assert (tmp_path / "samples" / "grid_6.png").exists()
    assert (tmp_path / "config.json").exists() and (tmp_path / "metadata.json").exists()

    config.training.num_steps = 8
    resumed = train.train_and_evaluate(config_lib.parse(config), tmp_path)
    assert resumed.step == 8
    rows = reporting.read_metrics(tmp_path / reporting.METRICS_FILE)
    assert [row["step"] for row in rows if row["split"] == "train"] == [2, 4, 6, 8]


# ------------------------------------------------------------------------------------------
# End to end through main (subprocesses, the real tiny NCSN++)
# ------------------------------------------------------------------------------------------

NUM_STEPS = 400
OVERRIDES = [
    f"--config.training.num_steps={NUM_STEPS}",
    "--config.training.log_every=5",
    "--config.training.checkpoint_every=25",
    "--config.training.keep_checkpoints=3",
    "--config.training.eval_every=1000",
]


def _launch(workdir: pathlib.Path, env: dict[str, str]) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "blackout_jax.main",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        *OVERRIDES,
    ]
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _last_logged_step(workdir: pathlib.Path) -> int:
    rows = reporting.read_metrics(workdir / reporting.METRICS_FILE)
    return max((row["step"] for row in rows), default=0)


def _wait_for_step(process: subprocess.Popen, workdir: pathlib.Path, step: int) -> None:
    deadline = time.monotonic() + 600
    while _last_logged_step(workdir) < step:
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"training ended before step {step}: {stderr[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"training did not reach step {step}")
        time.sleep(0.02)


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """SIGTERM at ~step 30, restart, SIGKILL ~40 steps later, restart to the end."""
    workdir = tmp_path_factory.mktemp("run") / "digits_tiny"
    env = dict(cpu_environment(), PYTHONUNBUFFERED="1")
    record = {"workdir": workdir}

    process = _launch(workdir, env)
    _wait_for_step(process, workdir, 30)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=600)
    record["term"] = (process.returncode, stdout, stderr, _checkpoint_steps(workdir))

    process = _launch(workdir, env)
    resumed_from = max(record["term"][3])
    _wait_for_step(process, workdir, resumed_from + 40)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=600)
    record["kill"] = (process.returncode, _checkpoint_steps(workdir))
    record["rows_before_restart"] = reporting.read_metrics(workdir / reporting.METRICS_FILE)

    process = _launch(workdir, env)
    stdout, stderr = process.communicate(timeout=600)
    record["final"] = (process.returncode, stdout, stderr, _checkpoint_steps(workdir))
    return record


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_as_preempted(interrupted_run):
    """After saving, the exit status is training.preempted_exit_code (75: resume by rerunning),
    so a batch system does not take the run for finished."""
    returncode, stdout, stderr, steps = interrupted_run["term"]
    assert returncode == 75, stderr[-3000:]
    assert "SIGTERM received: saved the checkpoint of step" in stdout
    stopped_at = int(stdout.split("saved the checkpoint of step ")[1].split()[0])
    assert stopped_at >= 30
    assert max(steps) == stopped_at
    assert 25 in steps  # the periodic checkpoint before it


@pytest.mark.slow
def test_sigkill_then_restart_finishes_at_the_right_step(interrupted_run):
    workdir = interrupted_run["workdir"]
    kill_code, steps_after_kill = interrupted_run["kill"]
    assert kill_code == -signal.SIGKILL
    restored = max(steps_after_kill)
    assert max(row["step"] for row in interrupted_run["rows_before_restart"]) > restored

    returncode, stdout, stderr, steps = interrupted_run["final"]
    assert returncode == 0, stderr[-3000:]
    assert f"resumed from the checkpoint of step {restored}" in stdout
    assert max(steps) == NUM_STEPS
    assert len(steps) <= 3  # keep_checkpoints
    rows = reporting.read_metrics(workdir / reporting.METRICS_FILE)
    train_steps = [row["step"] for row in rows if row["split"] == "train"]
    # Rows past the restored checkpoint were dropped and written again: one per log period.
    assert train_steps == list(range(5, NUM_STEPS + 1, 5))
    eval_rows = [row for row in rows if row["split"] == "eval"]
    assert [row["step"] for row in eval_rows] == [NUM_STEPS]
    assert np.isfinite(eval_rows[0]["bits_per_dim"])


@pytest.mark.slow
def test_the_run_folder_holds_everything(interrupted_run):
    workdir = interrupted_run["workdir"]
    assert (workdir / "samples" / f"grid_{NUM_STEPS}.png").exists()
    assert (workdir / "loss_curve.png").exists()
    assert any((workdir / "tensorboard").iterdir())
    metadata = json.loads((workdir / "metadata.json").read_text())
    assert metadata["max_count"] == 16 and metadata["image_shape"] == [8, 8, 1]
    saved_config = json.loads((workdir / "config.json").read_text())
    assert saved_config["training"]["num_steps"] == NUM_STEPS
    store = checkpointing.CheckpointStore(
        workdir / "checkpoints", checkpoint_every=25, keep_checkpoints=3
    )
    assert store.read_json(NUM_STEPS, "metadata")["image_shape"] == [8, 8, 1]
    assert saved_config["model"]["nf"] == tiny.get_config().model.nf
    state = read_state(store, NUM_STEPS)
    assert int(state["step"]) == NUM_STEPS
    assert set(state) >= {"params", "opt_state", "ema_params", "rng", "step"}
    store.close()


def test_a_tree_layout_state_migrates_to_the_flat_state_of_the_same_values():
    """A checkpoint's state of the tree layout (optimiser moments per parameter array) holds
    the same numbers as the flat state: migrating one Adam step's tree state gives the flat
    vectors of those trees."""
    net = SmallNet(max_count=16, dropout=0.0, seed=0)
    _, params, _ = nnx.split(net, nnx.Param, ...)
    optimizer = train_step.skipping_nonfinite(optax.adam(1e-2))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, tree_opt_state = optimizer.update(grads, optimizer.init(params), params)
    moved = optax.apply_updates(params, updates)
    rng = jax.random.key_data(jax.random.key(0))
    flat = train_step.TrainState.create(params, optimizer, rng)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    template = checkpointing.abstract_like(flat.as_dict(), sharding)
    tree_target = train_step.tree_layout_target(template, flat.layout, optimizer)
    stored = {
        **flat.as_dict(),
        "params": moved,
        "opt_state": tree_opt_state,
        "ema_params": params,
    }
    assert jax.tree.structure(stored) == jax.tree.structure(tree_target)
    migrated = train_step.from_tree_layout(stored, template, flat.layout)
    assert jax.tree.structure(migrated) == jax.tree.structure(flat.as_dict())
    ravel = flat.layout.ravel
    np.testing.assert_array_equal(migrated["params"]["float32"], ravel(moved)["float32"])
    np.testing.assert_array_equal(migrated["ema_params"]["float32"], ravel(params)["float32"])
    adam = migrated["opt_state"].inner_state[0]
    np.testing.assert_array_equal(
        adam.mu["float32"], ravel(tree_opt_state.inner_state[0].mu)["float32"]
    )
    assert int(adam.count) == 1
    assert int(migrated["opt_state"].notfinite_count) == 0


def test_a_non_finite_held_out_bound_is_a_warning(tmp_path, monkeypatch, capsys):
    from blackout_jax import models
    from blackout_jax.run import evaluation

    monkeypatch.setattr(models, "create_model", _small_net_factory)
    nan = float("nan")
    monkeypatch.setattr(
        evaluation.Evaluator,
        "metrics",
        lambda self, ema_params: {
            "loss": nan,
            "nll_nats": nan,
            "bits_per_dim": nan,
            "num_examples": 4,
        },
    )
    config = tiny.get_config()
    config.training.num_steps = 3
    config.eval.num_grid_samples = 0
    train.train_and_evaluate(config_lib.parse(config), tmp_path)
    output = capsys.readouterr()
    warnings = [
        line
        for line in (output.out + output.err).splitlines()
        if line.startswith("warning: the held-out bound at step")
    ]
    assert warnings == [
        "warning: the held-out bound at step 3 is not finite (nan): the EMA parameters hold "
        "non-finite values"
    ]
