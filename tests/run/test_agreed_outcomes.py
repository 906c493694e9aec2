"""What one process finds and every process must act on alike: a signal seen by one process
during an evaluation, an output folder or a run folder only process 0 checks.

One process here; the two-process job of tests/run/test_parallel.py runs the collectives. The
other process's view is simulated by the agreement it would return."""

from __future__ import annotations

import errno
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blackout_jax.run import chunked, cli, outputs, parallel, safety, train
from blackout_jax.run.lock import RunFolderInUseError, RunFolderLock


def test_primary_text_is_the_text_itself_in_one_process():
    assert parallel.primary_text("") == ""
    assert parallel.primary_text("cannot write x") == "cannot write x"


def _chunks_until_stopped(agree_from_chunk: int) -> tuple[list[int], list[bool]]:
    """Run 5 chunks inside ``interrupting``, the (simulated) agreement saying from chunk
    ``agree_from_chunk`` on that some process received a signal; the chunks computed and the
    flags each agreement was asked about."""
    computed, asked = [], []

    def agree(requested: bool) -> bool:
        asked.append(requested)
        return len(asked) > agree_from_chunk

    def compute(key, rows):
        computed.append(int(rows[0, 0]))
        return jnp.asarray(rows) * 2

    flag = safety.ShutdownFlag()
    original = parallel.any_process
    parallel.any_process = agree
    try:
        with pytest.raises(safety.Interrupted), flag.interrupting(agree):
            chunked.run_in_chunks(
                jax.random.key(0),
                compute,
                num_examples=10,
                chunk_size=2,
                inputs=(np.arange(10, dtype=np.int32)[:, None],),
            )
    finally:
        parallel.any_process = original
    return computed, asked


def test_every_chunk_boundary_asks_every_process_and_stops_where_they_agree():
    computed, asked = _chunks_until_stopped(agree_from_chunk=3)
    assert computed == [0, 2, 4]  # this process saw no signal, yet stops with the others
    assert asked == [False, False, False, False]  # on entry, then after each chunk


def test_a_signal_agreed_on_entry_stops_before_any_chunk():
    computed, asked = _chunks_until_stopped(agree_from_chunk=0)
    assert computed == [] and asked == [False]


def test_outside_an_evaluation_no_agreement_is_asked():
    asked = []
    safety.stop_if_interrupted(lambda requested: asked.append(requested) or True)
    assert asked == []


def test_a_folder_process_0_cannot_write_is_the_same_line_on_every_process(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "is_primary", lambda: False)
    monkeypatch.setattr(parallel, "primary_text", lambda text: str(errno.EROFS))
    with pytest.raises(OSError) as raised:
        outputs.writable_output(tmp_path, "evaluate", 6)
    assert raised.value.errno == errno.EROFS
    primary = OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(tmp_path / "eval"))
    assert cli.write_problem(raised.value) == cli.write_problem(primary)
    assert "cannot write" in cli.write_problem(primary) and str(tmp_path / "eval") in (
        cli.write_problem(primary)
    )


def test_a_writable_folder_passes_on_every_process(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "is_primary", lambda: False)
    monkeypatch.setattr(parallel, "primary_text", lambda text: "")
    assert outputs.writable_output(tmp_path, "evaluate", 6) == tmp_path / "eval" / "metrics_6.json"


def test_a_run_folder_held_by_another_trainer_stops_every_process_alike(tmp_path, monkeypatch):
    with RunFolderLock(tmp_path), pytest.raises(RunFolderInUseError) as on_primary:
        train.train_and_evaluate(_tiny_config(), tmp_path, dataset=object())
    monkeypatch.setattr(parallel, "is_primary", lambda: False)
    monkeypatch.setattr(parallel, "primary_text", lambda text: str(on_primary.value))
    with pytest.raises(RunFolderInUseError) as elsewhere:
        train.train_and_evaluate(_tiny_config(), tmp_path, dataset=object())
    assert str(elsewhere.value) == str(on_primary.value)
    assert "is being trained by pid" in str(elsewhere.value)


def _tiny_config():
    from blackout_jax.run import config as config_lib
    from configs import tiny

    return config_lib.parse(tiny.get_config())
