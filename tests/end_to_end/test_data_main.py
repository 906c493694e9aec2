"""Bad own data stops `python -m blackout_jax.main` before it writes to the run folder."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from configs import counts
from tests import cli

NUM_EXAMPLES = 20
NUM_TEST = 4

pytestmark = pytest.mark.slow


def size_divisor() -> int:
    """The downsampling factor of configs/counts.py's network."""
    return 2 ** (len(counts.get_config().model.ch_mult) - 1)


def good_counts() -> np.ndarray:
    side = 2 * size_divisor()
    return np.random.default_rng(0).integers(0, 10, (NUM_EXAMPLES, side, side, 1))


def bad_counts(kind: str) -> tuple[np.ndarray, list[str], str]:
    """A defective array, extra config flags, and a regex the error message must match."""
    counts = good_counts().astype(np.float64)
    if kind == "negative":
        counts[12, 3, 2, 0] = -2
        return counts.astype(np.int64), [], r"\['x'\]\[12, 3, 2, 0\] = -2\b.*non-negative"
    if kind == "non_integer":
        counts[5, 1, 0, 0] = 2.5
        return counts, [], r"\['x'\]\[5, 1, 0, 0\] = 2\.5.*whole numbers"
    if kind == "nan":
        counts[7, 0, 1, 0] = np.nan
        return counts, [], r"\['x'\]\[7, 0, 1, 0\] = nan.*finite"
    if kind == "inf":
        counts[2, 2, 2, 0] = -np.inf
        return counts, [], r"\['x'\]\[2, 2, 2, 0\] = -inf.*finite"
    if kind == "above_max":
        counts[9, 3, 3, 0] = 300
        flags = ["--config.data.max_count=255"]
        return counts.astype(np.int32), flags, r"\['x'\]\[9, 3, 3, 0\] = 300.*max count 255"
    if kind == "wrong_rank":
        return counts[:, :, :, 0, None, None], [], r"\['x'\].*rank 5"
    if kind == "empty":
        return counts[:0], [], r"\['x'\].*empty"
    if kind == "image_size":
        side = 2 * size_divisor() + 1
        odd = np.ones((NUM_EXAMPLES, side, side, 1))
        return odd, [], rf"\['x'\].*height {side} is not divisible by .* = {size_divisor()}"
    if kind == "test_split":
        flags = [f"--config.data.num_test={NUM_EXAMPLES}"]
        return counts, flags, rf"num_test = {NUM_EXAMPLES}.*has {NUM_EXAMPLES} examples"
    raise AssertionError(kind)


def run_main(data_path: Path, workdir: Path, extra_flags: list[str]):
    return cli.run_main(
        "--config=configs/counts.py",
        f"--config.data.path={data_path}",
        f"--config.data.num_test={NUM_TEST}",
        *extra_flags,
        f"--workdir={workdir}",
    )


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize(
    "kind",
    [
        "negative",
        "non_integer",
        "nan",
        "inf",
        "above_max",
        "wrong_rank",
        "empty",
        "image_size",
        "test_split",
    ],
)
def test_bad_counts_exit_non_zero_with_the_message_and_write_nothing(tmp_path, kind):
    values, extra_flags, message = bad_counts(kind)
    data_path = tmp_path / "counts.npz"
    np.savez(data_path, x=values)
    workdir = tmp_path / "run"
    result = run_main(data_path, workdir, extra_flags)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert re.search(message, output, flags=re.DOTALL), output
    assert str(data_path) in output
    assert files_under(workdir) == []
    assert not (workdir / "checkpoints").exists()


def test_missing_counts_file_exits_non_zero(tmp_path):
    workdir = tmp_path / "run"
    result = run_main(tmp_path / "absent.npy", workdir, [])
    assert result.returncode != 0
    assert "absent.npy" in result.stderr and "does not exist" in result.stderr
    assert files_under(workdir) == []
