"""The input of --mode=unthin is checked whole before any work: one line naming the file, the
array, the index and the value (or the config field)."""

import numpy as np
import pytest

from blackout_jax.data import inputs

SHAPE = (4, 4, 1)


def _read(path, warn=None, **arrays):
    np.savez(path, **arrays)
    return inputs.read_unthinning_input(
        path, SHAPE, 16, t_end=10.0, default_survival=0.5, warn=warn
    )


def test_reads_counts_survival_and_truth(tmp_path):
    truth = np.full((2, 4, 4), 9)
    counts, survival, read_truth = _read(
        tmp_path / "a.npz", counts=truth // 3, survival=np.array([0.3, 1.0]), truth=truth
    )
    assert counts.shape == (2, *SHAPE) and counts.dtype == np.int32
    np.testing.assert_allclose(survival, [0.3, 1.0])
    np.testing.assert_array_equal(read_truth[..., 0], truth)
    counts, survival, read_truth = _read(tmp_path / "b.npz", counts=np.zeros((3, *SHAPE)))
    np.testing.assert_allclose(survival, [0.5] * 3)  # sampling.survival
    assert read_truth is None


def test_the_survival_taken_from_the_config_is_named_once(tmp_path):
    """Without a 'survival' array the value of sampling.survival is used, and said."""
    warnings = []
    path = tmp_path / "thinned.npz"
    _read(path, warnings.append, counts=np.zeros((3, *SHAPE)))
    assert len(warnings) == 1 and warnings[0].startswith(f"{path} has no 'survival' array")
    assert "survival q = 0.5, the config field sampling.survival" in warnings[0]
    _read(path, warnings.append, counts=np.zeros((3, *SHAPE)), survival=np.full(3, 0.5))
    assert len(warnings) == 1  # an input that gives its survival is not warned about


def test_bad_inputs_name_array_index_and_value(tmp_path):
    path = tmp_path / "bad.npz"
    counts = np.ones((2, *SHAPE), np.int64)
    cases = [
        ({"counts": counts + 16}, rf"{path}\['counts'\]\[0, 0, 0, 0\] = 17"),
        ({"counts": counts, "survival": np.array([0.5, 1.5])}, r"\['survival'\]\[1\] = 1.5"),
        ({"counts": counts, "survival": np.array([np.nan, 0.5])}, r"\['survival'\]\[0\] = nan"),
        (
            {"counts": counts, "survival": np.array([0.5, 1e-5])},
            r"\['survival'\]\[1\] = 1e-05: survival below exp\(-t_end\) = 4.54e-05",
        ),
        ({"counts": counts, "survival": np.full(3, 0.5)}, r"shape \(3,\); expected \(2,\)"),
        ({"counts": counts, "truth": counts - 1}, r"\['truth'\]\[0, 0, 0, 0\] = 0 is below"),
        ({"counts": counts, "truth": counts[:1]}, r"'counts' has 2 examples but 'truth' has 1"),
        ({"counts": np.ones((2, 3, 3))}, r"\['counts'\] has shape \(2, 3, 3, 1\)"),
        ({"survival": np.ones(2)}, r"has no array 'counts'"),
    ]
    for arrays, message in cases:
        with pytest.raises(ValueError, match=message):
            _read(path, **arrays)
    np.savez(path, counts=counts)
    for value, message in ((1.5, r"= 1.5: survival must be in \(0, 1\]"), (1e-5, r"below exp")):
        with pytest.raises(ValueError, match=rf"sampling.survival.*{message}|{message}"):
            inputs.read_unthinning_input(path, SHAPE, 16, t_end=10.0, default_survival=value)
