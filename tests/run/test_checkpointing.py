"""Tests of blackout_jax.run.checkpointing (orbax CheckpointManager with a keep policy)."""

from __future__ import annotations

import logging
import shutil
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blackout_jax.run import checkpointing, digests, safety
from tests.run.stored_state import read_state


def _state(value: float) -> dict:
    return {
        "step": jnp.asarray(int(value), jnp.int32),
        "params": {"dense": {"kernel": jnp.full((3, 2), value, jnp.float32)}},
        "rng": jax.random.key_data(jax.random.key(7)),
    }


def _store(directory, **overrides) -> checkpointing.CheckpointStore:
    options = {"checkpoint_every": 2, "keep_checkpoints": 2, "keep_every": 0}
    options.update(overrides)
    return checkpointing.CheckpointStore(directory, **options)


def _save(store, step, *, force=False):
    return store.save(
        step,
        _state(step),
        data_iterator={"position": step},
        metadata={"max_count": 16, "image_shape": [8, 8, 1]},
        force=force,
    )


def test_save_and_restore_round_trip(tmp_path):
    store = _store(tmp_path / "checkpoints")
    assert store.latest_step() is None
    assert _save(store, 4)
    store.wait()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored = store.restore(None, checkpointing.abstract_like(_state(0), sharding))
    store.close()
    assert restored.step == 4
    assert int(restored.state["step"]) == 4
    np.testing.assert_array_equal(restored.state["params"]["dense"]["kernel"], np.full((3, 2), 4))
    np.testing.assert_array_equal(restored.state["rng"], jax.random.key_data(jax.random.key(7)))
    assert restored.data_iterator == {"position": 4}
    assert restored.metadata == {"max_count": 16, "image_shape": [8, 8, 1]}


def test_interval_force_and_existing_steps(tmp_path):
    store = _store(tmp_path, checkpoint_every=3, keep_checkpoints=10)
    assert not _save(store, 2)  # not a multiple of checkpoint_every
    assert _save(store, 3)
    assert _save(store, 5, force=True)  # forced (e.g. the last step or a signal)
    store.wait()
    assert not _save(store, 5, force=True)  # already on disk: left as it is
    store.close()
    assert store.all_steps() == [3, 5]


def test_keep_last_n_plus_every_kth(tmp_path):
    store = _store(tmp_path, checkpoint_every=2, keep_checkpoints=2, keep_every=4)
    for step in range(2, 13, 2):
        _save(store, step)
        store.wait()
    store.close()
    # the last two (10, 12) and every 4th step (4, 8, 12) survive.
    assert store.all_steps() == [4, 8, 10, 12]


def test_a_new_store_sees_the_checkpoints_and_reads_single_items(tmp_path):
    store = _store(tmp_path)
    _save(store, 2)
    store.close()
    reopened = _store(tmp_path)
    assert reopened.latest_step() == 2
    assert reopened.read_json(None, "metadata")["max_count"] == 16
    state = read_state(reopened, 2)
    np.testing.assert_array_equal(state["params"]["dense"]["kernel"], np.full((3, 2), 2.0))
    with pytest.raises(ValueError, match="item"):
        reopened.read_json(2, "state")
    reopened.close()


def test_restore_of_a_missing_step_names_the_available_ones(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        store.restore(None, _state(0))
    _save(store, 2)
    store.wait()
    with pytest.raises(FileNotFoundError, match=r"step 6 .*available steps: \[2\]"):
        store.restore(6, _state(0))
    store.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [("checkpoint_every", 0), ("keep_checkpoints", 0), ("keep_every", -1)],
)
def test_bad_options_name_the_option(tmp_path, option, value):
    with pytest.raises(ValueError, match=option):
        _store(tmp_path, **{option: value})


def test_restore_part_reads_only_the_requested_subtree(tmp_path):
    store = _store(tmp_path / "checkpoints")
    _save(store, 4, force=True)
    store.wait()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    kernel = jax.ShapeDtypeStruct((3, 2), jnp.float32, sharding=sharding)
    step, part = store.restore_part(None, {"params": {"dense": {"kernel": kernel}}})
    assert step == 4
    assert set(part) == {"params"}
    np.testing.assert_array_equal(part["params"]["dense"]["kernel"], np.full((3, 2), 4))
    with pytest.raises(FileNotFoundError, match="available steps: \\[4\\]"):
        store.restore_part(6, {"params": {"dense": {"kernel": kernel}}})
    store.close()


def test_only_closed_loop_callbacks_of_abandoned_reads_are_dropped(monkeypatch):
    reached = []
    monkeypatch.setattr("sys.unraisablehook", reached.append)
    safety.drop_callbacks_of_abandoned_reads()
    installed = sys.unraisablehook
    safety.drop_callbacks_of_abandoned_reads()
    assert sys.unraisablehook is installed  # once per process, not a chain of hooks

    def report(error):
        sys.unraisablehook(SimpleNamespace(exc_type=type(error), exc_value=error))

    report(RuntimeError("Event loop is closed"))
    report(RuntimeError("something else"))
    report(ValueError("Event loop is closed"))
    assert [str(u.exc_value) for u in reached] == ["something else", "Event loop is closed"]
    assert isinstance(reached[1].exc_value, ValueError)


def _record(message: str, code_file: str) -> logging.LogRecord:
    """A record as asyncio logs it, with the traceback of an error raised in ``code_file``."""
    namespace: dict = {}
    source = "def fail():\n    raise ValueError('read failed')\n"
    exec(compile(source, code_file, "exec"), namespace)
    try:
        namespace["fail"]()
    except ValueError:
        exc_info = sys.exc_info()
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, exc_info)


def test_only_never_retrieved_errors_of_orbax_reads_are_dropped_from_the_asyncio_log():
    keep = safety.AbandonedReadRecords().filter
    orbax_file = "/site-packages/orbax/checkpoint/_src/serialization/serialization.py"
    assert not keep(_record("Task exception was never retrieved", orbax_file))
    assert keep(_record("Task exception was never retrieved", "/somewhere/else.py"))
    assert keep(_record("Exception in callback", orbax_file))  # other asyncio errors stay


def _replicated():
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def test_arrays_that_decode_to_other_values_are_damage_and_set_aside(tmp_path):
    store = _store(tmp_path / "checkpoints", keep_checkpoints=5)
    for step in (2, 4):
        saved = _state(step)
        written = _state(step + 0.5) if step == 4 else saved  # what the disk now holds
        store.save(
            step,
            written,
            data_iterator={},
            metadata={"digests": digests.digests(saved)},
            force=True,
        )
    store.wait()
    target = checkpointing.abstract_like(_state(0), _replicated())
    warnings = []

    def restore(step):
        restored = store.restore(step, target)
        digests.verify_digests(restored.state, restored.metadata, step)
        return restored

    restored = store.restore_newest_usable(restore, set_aside=True, warn=warnings.append)
    store.close()
    assert restored.step == 2
    assert len(warnings) == 1 and "checkpoint 4" in warnings[0]
    assert "array params.dense.kernel of checkpoint 4 does not match the digest" in warnings[0]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4.damaged"]


def test_an_intact_checkpoint_of_another_network_is_a_mismatch_and_renames_nothing(tmp_path):
    store = _store(tmp_path / "checkpoints")
    _save(store, 2, force=True)
    store.wait()
    wider = {**_state(0), "params": {"dense": {"kernel": jnp.zeros((3, 4), jnp.float32)}}}
    target = checkpointing.abstract_like(wider, _replicated())

    def restore(step):
        store.check_shapes(step, target)
        return store.restore(step, target)

    with pytest.raises(checkpointing.CheckpointMismatchError) as raised:
        store.restore_newest_usable(restore, set_aside=True, warn=pytest.fail)
    store.close()
    assert "params.dense.kernel: float32[3, 2] -> float32[3, 4]" in str(raised.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]


def test_a_file_that_may_not_be_read_is_an_error_not_damage(tmp_path):
    store = _store(tmp_path / "checkpoints")
    _save(store, 2, force=True)
    store.wait()
    path = str(tmp_path / "checkpoints" / "2" / "state" / "manifest.ocdbt")

    def restore(step):
        raise PermissionError(13, "Permission denied", path)

    with pytest.raises(PermissionError, match="manifest.ocdbt"):
        store.restore_newest_usable(restore, set_aside=True, warn=pytest.fail)
    store.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]


def test_a_checkpoint_pruned_during_the_read_is_no_damage_and_the_newest_is_read(tmp_path):
    """A trainer beside the reader removes checkpoint 4 while it is read and writes 6: the reader
    warns of nothing and reads 6."""
    store = _store(tmp_path / "checkpoints", keep_checkpoints=5)
    for step in (2, 4):
        _save(store, step, force=True)
    store.wait()
    trainer = _store(tmp_path / "checkpoints", keep_checkpoints=5)
    target = checkpointing.abstract_like(_state(0), _replicated())
    read = []

    def restore(step):
        read.append(step)
        if step == 4 and len(read) == 1:
            _save(trainer, 6, force=True)
            trainer.wait()
            shutil.rmtree(tmp_path / "checkpoints" / "4")
            raise FileNotFoundError("a file of checkpoint 4 vanished")
        return store.restore(step, target)

    restored = store.restore_newest_usable(restore, set_aside=True, warn=pytest.fail)
    store.close()
    trainer.close()
    assert read == [4, 6] and restored.step == 6
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "6"]


def test_a_store_opened_while_a_trainer_prunes_a_listed_step_opens_on_the_rest(
    tmp_path, monkeypatch
):
    """orbax reads every step folder it lists: one removed in between (a trainer's keep policy)
    fails the listing with FileNotFoundError, and the store lists the folder again."""
    store = _store(tmp_path, keep_checkpoints=5)
    for step in (2, 4):
        _save(store, step, force=True)
    store.wait()
    store.close()
    manager = checkpointing.ocp.CheckpointManager
    openings = []

    def pruned_while_listing(*args, **kwargs):
        openings.append(1)
        if len(openings) == 1:
            shutil.rmtree(tmp_path / "2")
            raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "2"))
        return manager(*args, **kwargs)

    monkeypatch.setattr(checkpointing.ocp, "CheckpointManager", pruned_while_listing)
    reopened = _store(tmp_path, keep_checkpoints=5)
    assert len(openings) == 2 and reopened.all_steps() == [4]
    reopened.close()
