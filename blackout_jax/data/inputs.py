"""The inputs of the impute and unthin commands: ``.npz`` files read and checked before any work.

* :func:`read_imputation_input`: ``counts`` and ``mask`` (``True`` = observed);
* :func:`read_unthinning_input`: thinned ``counts``, optional ``survival`` (one ``q`` per
  example, checked by :func:`check_survival_values`) and ``truth``; a plain ``.npy`` file is
  taken as the ``counts``.

Every error names the file, the array, the global index and the value of the first problem.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable

import numpy as np

from blackout_jax.data.arrays import NPY_MAGIC, check_stored_size
from blackout_jax.data.count_checks import check_count_values, index_locator


def _read_arrays(
    path: str | os.PathLike[str], names: tuple[str, ...], optional: tuple[str, ...] = ()
) -> list[np.ndarray | None]:
    """The named arrays of an ``.npz`` (no pickled objects), then the ``optional`` ones (``None``
    where the file has none); errors name the file and array. A plain ``.npy`` file is taken as
    the one array ``names[0]`` where that is the only one needed; no array is read before its
    header's shape is checked against the bytes present (:func:`check_stored_size`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input {path} does not exist")
    with open(path, "rb") as file:
        plain = file.read(len(NPY_MAGIC)) == NPY_MAGIC
    if plain:
        return [_read_plain_array(path, names), *([None] * len(optional))]
    try:
        archive = np.load(path, allow_pickle=False)
    except (EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable .npz file ({error})") from None
    with archive:
        missing = [name for name in names if name not in archive.files]
        if missing:
            raise ValueError(f"{path} has no array {missing[0]!r} (found {archive.files})")
        arrays = []
        for name in (*names, *optional):
            if name not in archive.files:
                arrays.append(None)
                continue
            check_stored_size(path, name)
            try:
                arrays.append(archive[name])
            except ValueError as error:  # object arrays need pickle, which is refused
                raise ValueError(f"{path}[{name!r}] cannot be read: {error}") from None
            except (EOFError, OSError, zipfile.BadZipFile) as error:
                raise ValueError(f"{path}[{name!r}] is not readable ({error})") from None
        return arrays


def _read_plain_array(path: str | os.PathLike[str], names: tuple[str, ...]) -> np.ndarray:
    """The array of an ``.npy`` file as ``names[0]``, when it is the only array needed."""
    if len(names) > 1:
        listed = " and ".join(repr(name) for name in names)
        raise ValueError(f"{path} is a single .npy array; an .npz with arrays {listed} is needed")
    check_stored_size(path)
    try:
        return np.load(path, allow_pickle=False)
    except (EOFError, OSError, ValueError) as error:  # object arrays need pickle: refused
        raise ValueError(f"{path} is not a readable .npy file of numbers ({error})") from None


def read_imputation_input(
    path: str | os.PathLike[str], image_shape: tuple[int, ...], max_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read and check ``counts`` and ``mask`` of an ``.npz`` before any work is done.

    Shapes ``(N, H, W, C)`` or ``(N, H, W)`` (one channel); ``mask`` is boolean or 0/1
    (``True`` = observed), ``counts`` whole numbers in ``0..max_count`` where observed (the
    unobserved entries are ignored).

    Returns:
      ``(counts int32, mask bool)``, both ``(N, *image_shape)``.

    Raises:
      ValueError: naming the file, the array, the global index and the value of the first
        problem (or the two lengths when they differ).
    """
    counts, mask = _read_arrays(path, ("counts", "mask"))
    arrays = _image_arrays(path, {"counts": counts, "mask": mask}, image_shape)
    counts, mask = arrays["counts"], arrays["mask"]
    if len(counts) != len(mask):
        raise ValueError(f"{path}: 'counts' has {len(counts)} examples but 'mask' has {len(mask)}")
    if mask.dtype != np.bool_:
        if mask.dtype.kind not in "biuf":
            raise ValueError(f"{path}['mask'] must be boolean or 0/1, got dtype {mask.dtype}")
        bad = ~np.isin(mask, (0, 1))
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{path}['mask'][{', '.join(map(str, index))}] = {mask[index].item()!r}: the "
                "mask must be boolean or 0/1"
            )
        mask = mask.astype(bool)
    if counts.dtype.kind not in "biuf":
        raise ValueError(f"{path}['counts'] must hold numbers, got dtype {counts.dtype}")
    observed = np.where(mask, counts, 0)
    counts = check_count_values(observed, source=f"{path}['counts']", max_count=max_count)
    return counts, mask


def _image_arrays(
    path: str | os.PathLike[str], named: dict[str, np.ndarray], image_shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Each array as ``(N, *image_shape)`` (a missing channel axis of size 1 added)."""
    shaped = {}
    for name, array in named.items():
        if array.ndim == len(image_shape) and image_shape[-1] == 1:
            array = array[..., None]
        if array.shape[1:] != tuple(image_shape) or array.shape[0] < 1:
            raise ValueError(
                f"{path}[{name!r}] has shape {array.shape}; expected (N, *{tuple(image_shape)})"
            )
        shaped[name] = array
    return shaped


def check_survival_values(
    values: np.ndarray,
    *,
    source: str,
    t_end: float,
    locate: Callable[[tuple[int, ...]], str] | None = None,
) -> np.ndarray:
    """Survival probabilities ``q`` as float32: finite, in ``(0, 1]`` and ``>= exp(-t_end)``.

    ``t* = -ln q`` must not pass the model's ``t_end``: the network has learnt the reverse
    process only on ``[0, t_end]``.

    Raises:
      ValueError: ``source[index] = value: ...`` for the first bad value.
    """
    locate = locate or index_locator(source)
    if values.dtype.kind not in "iuf":
        raise ValueError(f"{source} must hold numbers in (0, 1], got dtype {values.dtype}")
    values = values.astype(np.float64)
    smallest = math.exp(-t_end)
    for bad, problem in (
        (~np.isfinite(values) | (values <= 0) | (values > 1), "survival must be in (0, 1]"),
        (
            values < smallest,
            f"survival below exp(-t_end) = {smallest:.4g} gives t* = -ln q beyond the model's "
            f"t_end = {t_end:g}",
        ),
    ):
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{locate(index)} = {values[index].item()!r}: {problem}")
    return values.astype(np.float32)


def read_unthinning_input(
    path: str | os.PathLike[str],
    image_shape: tuple[int, ...],
    max_count: int,
    *,
    t_end: float,
    default_survival: float,
    warn: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read and check the thinned observations of an ``.npz`` (or the ``counts`` alone, as a
    plain ``.npy``) before any work is done.

    ``counts`` ``(N, H, W, C)`` or ``(N, H, W)``: whole numbers in ``0..max_count``; optional
    ``survival`` ``(N,)``, one ``q`` per example in ``(0, 1]`` (else ``default_survival``, the
    config's ``sampling.survival``, for every example), each ``>= exp(-t_end)``; optional
    ``truth`` with the shape of ``counts``, whole numbers in ``0..max_count`` and ``>= counts``
    (the thinning only removes units). Without a ``survival`` array, ``warn`` (if given) gets
    one line naming the file, the value used and its config field.

    Returns:
      ``(counts int32, survival float32 (N,), truth int32 or None)``.

    Raises:
      ValueError: naming the file, the array, the global index and the value of the first
        problem (or the config field for a bad ``sampling.survival``).
    """
    counts, survival, truth = _read_arrays(path, ("counts",), optional=("survival", "truth"))
    named = {"counts": counts} | ({} if truth is None else {"truth": truth})
    named = _image_arrays(path, named, image_shape)
    checked = {
        name: check_count_values(a, source=f"{path}[{name!r}]", max_count=max_count)
        for name, a in named.items()
    }
    counts = checked["counts"]
    if truth is not None:
        truth = checked["truth"]
        if len(truth) != len(counts):
            raise ValueError(
                f"{path}: 'counts' has {len(counts)} examples but 'truth' has {len(truth)}"
            )
        below = truth < counts
        if below.any():
            index = tuple(int(i) for i in np.argwhere(below)[0])
            raise ValueError(
                f"{path}['truth'][{', '.join(map(str, index))}] = {truth[index].item()} is below "
                f"the observed count {counts[index].item()}: thinning only removes units"
            )
    if survival is None:
        source = "config field sampling.survival"
        survival = check_survival_values(
            np.full(len(counts), default_survival),
            source=source,
            t_end=t_end,
            locate=lambda index: source,
        )
        if warn is not None:
            warn(
                f"{path} has no 'survival' array: every example is taken as thinned with "
                f"survival q = {default_survival:g}, the config field sampling.survival (set "
                "--config.sampling.survival=Q, or add a 'survival' array of one q per example)"
            )
    else:
        if survival.shape != (len(counts),):
            raise ValueError(
                f"{path}['survival'] has shape {survival.shape}; expected ({len(counts)},), one "
                "survival probability per example"
            )
        survival = check_survival_values(survival, source=f"{path}['survival']", t_end=t_end)
    return counts, survival, truth
