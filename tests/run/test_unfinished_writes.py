"""The temporary files of atomic writes are removed when a signal ends the process at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from blackout_jax.run import reporting, safety
from tests.cli import REPO_ROOT, cpu_environment


def test_a_write_in_progress_is_known_and_forgotten_after(tmp_path, monkeypatch):
    monkeypatch.setattr(safety, "_exiting", threading.Event())
    seen = []

    def write(file):
        seen.extend(safety._unfinished_writes)
        file.write(b"x")

    reporting.write_atomically(tmp_path / "out.bin", write)
    assert len(seen) == 1 and seen[0].endswith(".tmp") and "out.bin" in seen[0]
    assert not safety._unfinished_writes
    assert (tmp_path / "out.bin").read_bytes() == b"x"


def test_removing_unfinished_writes_deletes_their_temporary_files(tmp_path, monkeypatch):
    monkeypatch.setattr(safety, "_exiting", threading.Event())
    removed = []

    def write(file):
        file.write(b"partial")
        removed.extend(safety.remove_unfinished_writes())

    reporting.write_atomically(tmp_path / "out.bin", lambda file: file.write(b"old"))
    with pytest.raises(FileNotFoundError):  # the rename; in a run os._exit comes first
        reporting.write_atomically(tmp_path / "out.bin", write)
    assert len(removed) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert (tmp_path / "out.bin").read_bytes() == b"old"


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from blackout_jax.run import reporting, safety

    def write(file):
        file.write(b"partial")
        file.flush()
        print("writing", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    with safety.StopAtOnce(lambda name: f"{name} received: stopped at once"):
        reporting.write_atomically(sys.argv[1], write)
    """
)


def test_a_signal_during_an_atomic_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out" / "result.npz"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(target)],
        cwd=REPO_ROOT,
        env=cpu_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 143, result.stderr[-2000:]
    assert result.stdout == "writing\n"
    assert result.stderr == "SIGTERM received: stopped at once\n"
    assert list((tmp_path / "out").iterdir()) == []
