"""The inputs of --mode=impute and --mode=unthin (blackout_jax.data.inputs): plain .npy files and
headers that claim more data than the file holds."""

from __future__ import annotations

import re

import numpy as np
import pytest

from blackout_jax.data import inputs
from tests.hostile_arrays import HOSTILE_SHAPE, hostile_npy_bytes, write_hostile_npz

SHAPE = (8, 8, 1)


def _unthin(path):
    return inputs.read_unthinning_input(path, SHAPE, 16, t_end=10.0, default_survival=0.5)


def test_a_plain_npy_is_the_counts_to_unthin(tmp_path):
    path = tmp_path / "counts.npy"
    np.save(path, np.full((3, 8, 8), 2))
    counts, survival, truth = _unthin(path)
    assert counts.shape == (3, *SHAPE) and counts.dtype == np.int32
    np.testing.assert_allclose(survival, [0.5] * 3)
    assert truth is None


def test_a_plain_npy_cannot_be_imputed(tmp_path):
    path = tmp_path / "counts.npy"
    np.save(path, np.full((3, 8, 8), 2))
    expected = f"{path} is a single .npy array; an .npz with arrays 'counts' and 'mask' is needed"
    with pytest.raises(ValueError, match=re.escape(expected)):
        inputs.read_imputation_input(path, SHAPE, 16)


def test_headers_claiming_more_than_the_file_holds_are_refused(tmp_path):
    claim = f"the header claims shape {HOSTILE_SHAPE} of float64 ({2**40} bytes), but only 64"
    npy = tmp_path / "big.npy"
    npy.write_bytes(hostile_npy_bytes())
    with pytest.raises(ValueError, match=re.escape(f"{npy}: {claim}")):
        _unthin(npy)
    npz = tmp_path / "big.npz"
    write_hostile_npz(npz, "counts")
    with pytest.raises(ValueError, match=re.escape(f"{npz}['counts']: {claim}")):
        _unthin(npz)
    write_hostile_npz(npz, "mask", counts=np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=re.escape(f"{npz}['mask']: {claim}")):
        inputs.read_imputation_input(npz, SHAPE, 16)
    write_hostile_npz(npz, "survival", counts=np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=re.escape(f"{npz}['survival']: {claim}")):
        _unthin(npz)


def test_a_file_that_is_neither_npz_nor_npy_is_one_line_naming_it(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a readable .npz file")):
        _unthin(path)
