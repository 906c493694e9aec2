"""Array files whose header claims far more data than they hold, for the tests of the readers."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

HOSTILE_SHAPE = (2**31, 8, 8, 1)
"""The claimed shape: 2**40 bytes of float64."""


def hostile_npy_bytes(version: tuple[int, int] = (1, 0), data: bytes = bytes(64)) -> bytes:
    """An .npy (format ``version``) claiming :data:`HOSTILE_SHAPE` float64 over ``data``."""
    stream = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": HOSTILE_SHAPE}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(stream, header)
    else:
        np.lib.format.write_array_header_2_0(stream, header)
    return stream.getvalue() + data


def write_hostile_npz(
    path: str | os.PathLike[str], member: str = "counts", **arrays: np.ndarray
) -> None:
    """An .npz with ``member`` of :func:`hostile_npy_bytes` beside the valid ``arrays``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{member}.npy", hostile_npy_bytes())
        for name, values in arrays.items():
            stream = io.BytesIO()
            np.save(stream, values)
            archive.writestr(f"{name}.npy", stream.getvalue())
