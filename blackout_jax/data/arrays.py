"""Your own count data: an ``.npy`` or ``.npz`` array, or a folder of 8-bit PNGs.

* ``.npy``: one array of shape (N, H, W, C) or (N, H, W), or (N, D) count vectors.
* ``.npz``: the array stored under ``array_key`` (``''`` = the first array in the file).
* a folder: every ``*.png`` in it, in sorted file-name order; each an 8-bit grayscale (mode
  ``L``, C = 1) or RGB (C = 3) image, all of one shape.

Nothing is ever unpickled (``allow_pickle=False``), and no array is allocated before its header's
shape is checked against the bytes the file holds (:func:`check_stored_size`). Values must be
finite, whole, non-negative numbers; the largest count is ``max_count`` when declared (> 0) and
otherwise inferred from the data (``.npy``/``.npz``) or 255 (PNGs). Every check runs before the
loader returns.

Class labels for conditional training (``model.num_classes > 0``) come from an array named
``labels`` in the same ``.npz``: integers in ``[0, num_classes)``, one per example.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from blackout_jax.data import count_checks

ARRAY_SUFFIXES = (".npy", ".npz")
LABELS_KEY = "labels"
PNG_MAX_COUNT = 255
_PNG_CHANNELS = {"L": 1, "RGB": 3}


@dataclasses.dataclass(frozen=True)
class LoadedCounts:
    """Validated counts read from a file or folder.

    Attributes:
      counts: ``np.int32`` (N, H, W, C), or (N, D) for count vectors.
      max_count: the declared largest count, or the inferred one.
      max_count_inferred: whether ``max_count`` was inferred from the data.
      source: the data's origin as named in messages (path, with the ``.npz`` key).
      labels: ``np.int32`` (N,) class labels when they were asked for, else ``None``.
    """

    counts: np.ndarray
    max_count: int
    max_count_inferred: bool
    source: str
    labels: np.ndarray | None = None


NPY_MAGIC = b"\x93NUMPY"


def _array_header(file) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from the ``.npy`` header at the start of ``file``, left after it."""
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(file)
    else:  # 2.0, and 3.0 whose UTF-8 header reads the same while it is ASCII
        shape, _, dtype = np.lib.format.read_array_header_2_0(file)
    return shape, dtype


def stored_header(
    path: str | os.PathLike[str], member: str | None = None
) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """``(shape, dtype, bytes present after the header)`` of an ``.npy`` file or of one member
    of an ``.npz`` file, read from the header alone; ``None`` when the header cannot be read.

    Args:
      path: an ``.npy`` file, or (with ``member``) an ``.npz`` file.
      member: the name of an array in the ``.npz`` (as :attr:`numpy.lib.npyio.NpzFile.files`
        lists it); its size is the one the archive records for it.
    """
    try:
        if member is None:
            with open(path, "rb") as file:
                shape, dtype = _array_header(file)
                present = os.fstat(file.fileno()).st_size - file.tell()
        else:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                info = archive.getinfo(f"{member}.npy" if f"{member}.npy" in names else member)
                with archive.open(info) as file:
                    shape, dtype = _array_header(file)
                    present = info.file_size - file.tell()
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return tuple(int(d) for d in shape), dtype, int(present)


def check_stored_size(path: str | os.PathLike[str], member: str | None = None) -> None:
    """Refuses an array whose header claims more data than the file holds, before any of it is
    read (numpy allocates the whole claimed shape first).

    Args:
      path: an ``.npy`` file, or (with ``member``) an ``.npz`` file.
      member: the name of an array in the ``.npz`` (see :func:`stored_header`).

    A header that cannot be read is left for numpy's loader to report, and arrays of Python
    objects (never unpickled) are not measured.

    Raises:
      ValueError: one line naming the file, the member, the claimed shape and dtype, the bytes
        they need and the bytes present.
    """
    source = str(path) if member is None else f"{path}[{member!r}]"
    header = stored_header(path, member)
    if header is None:
        return
    shape, dtype, present = header
    if dtype.hasobject:
        return
    needed = math.prod(shape) * dtype.itemsize
    if needed > present:
        raise ValueError(
            f"{source}: the header claims shape {tuple(shape)} of {dtype} ({needed} bytes), but "
            f"only {present} bytes of data follow it; the file is cut short or damaged"
        )


def read_array_file(path: str | os.PathLike[str], array_key: str = "") -> tuple[np.ndarray, str]:
    """Reads the raw array of an ``.npy`` file or one array of an ``.npz`` file.

    Args:
      path: the file.
      array_key: for ``.npz``: the array's name; ``''`` takes the first array in the file.

    Returns:
      ``(values, source)``: the array as stored and its name for messages
      (``path`` or ``path['key']``).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: an unknown suffix, an empty (0-byte) file, a file numpy cannot read without
        unpickling, a missing key, a header claiming more data than the file holds.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data.path: {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES and path.stat().st_size == 0:
        raise ValueError(f"data.path: {str(path)!r} is empty (0 bytes), not an {suffix} file")
    if suffix not in ARRAY_SUFFIXES:
        raise ValueError(
            f"data.path: {str(path)!r} must be an .npy or .npz file, a folder of PNGs or a "
            "count-matrix file (.h5, .mtx(.gz), .csv/.tsv(.gz), .h5ad), got suffix "
            f"{suffix!r}"
        )
    if suffix == ".npy":
        if array_key:
            raise ValueError(
                f"data.array_key = {array_key!r} names an array in an .npz file, but "
                f"{str(path)!r} is an .npy file; leave data.array_key empty"
            )
        check_stored_size(path)
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:  # object arrays need pickle, which is refused
            raise ValueError(
                f"{path}: not a readable .npy file of numbers (pickled objects are never "
                f"loaded): {error}"
            ) from error
        if not isinstance(values, np.ndarray):
            values.close()
            raise ValueError(f"{path}: has the .npy suffix but is an .npz archive")
        return values, str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz file: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: has the .npz suffix but holds a single .npy array")
    with archive:
        names = list(archive.files)
        if not names:
            raise ValueError(f"{path}: the .npz file holds no arrays")
        key = array_key or names[0]
        if key not in names:
            raise ValueError(
                f"data.array_key = {key!r} is not an array in {path}; it holds {names}"
            )
        source = f"{path}[{key!r}]"
        check_stored_size(path, key)
        try:
            return archive[key], source
        except ValueError as error:  # object arrays need pickle, which is refused
            raise ValueError(f"{source}: cannot be read without unpickling: {error}") from error
        except (OSError, zipfile.BadZipFile) as error:
            raise ValueError(f"{source}: not readable: {error}") from error


def read_png_folder(folder: str | os.PathLike[str]) -> tuple[np.ndarray, list[Path]]:
    """Reads every ``*.png`` of ``folder`` (sorted by name) into one uint8 array (N, H, W, C).

    Raises:
      FileNotFoundError: ``folder`` does not exist.
      ValueError: no PNGs; a PNG that is not 8-bit grayscale or RGB (naming the file and its
        mode); a PNG whose shape differs from the first one (naming both files and shapes).
    """
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.path: folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise ValueError(f"data.path: folder {str(folder)!r} holds no *.png files")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                mode = image.mode
                if mode not in _PNG_CHANNELS:
                    raise ValueError(
                        f"{file}: must be an 8-bit grayscale (mode 'L') or RGB (mode 'RGB') "
                        f"PNG, got mode {mode!r}; convert it, e.g. with PIL's "
                        "Image.convert('L') or Image.convert('RGB')"
                    )
                pixels = np.asarray(image, dtype=np.uint8)
        except OSError as error:
            raise ValueError(f"{file}: not a readable PNG: {error}") from error
        pixels = pixels.reshape(pixels.shape[:2] + (_PNG_CHANNELS[mode],))
        if images and pixels.shape != images[0].shape:
            raise ValueError(
                f"{file}: shape (H, W, C) = {pixels.shape} differs from {files[0]}'s "
                f"{images[0].shape}; every PNG in the folder must have the same size and mode"
            )
        images.append(pixels)
    return np.stack(images), files


def _check_labelled_file(path: str | os.PathLike[str], num_classes: int) -> None:
    if Path(path).is_dir() or Path(path).suffix.lower() != ".npz":
        raise ValueError(
            f"data.path: {str(path)!r} holds no class labels; conditional training "
            f"(model.num_classes = {num_classes}) needs an .npz file with the counts and an "
            f"array {LABELS_KEY!r} of one integer label per example"
        )


def load_labels(path: str | os.PathLike[str], *, num_classes: int, num_examples: int) -> np.ndarray:
    """The ``labels`` array of an ``.npz`` file, checked: int32 (num_examples,) in
    ``[0, num_classes)``.

    Raises:
      ValueError: ``path`` is not an ``.npz`` file, has no ``labels`` array, or a label is bad
        (naming the file, the array, the index and the value).
    """
    _check_labelled_file(path, num_classes)
    with np.load(path, allow_pickle=False) as archive:
        if LABELS_KEY not in archive.files:
            raise ValueError(
                f"{path} has no array {LABELS_KEY!r} (it holds {list(archive.files)}); "
                f"conditional training (model.num_classes = {num_classes}) needs one integer "
                "label per example"
            )
    values, source = read_array_file(path, LABELS_KEY)
    return count_checks.check_labels(
        values, source=source, num_classes=num_classes, num_examples=num_examples
    )


def load_counts(
    path: str | os.PathLike[str], *, array_key: str = "", max_count: int = 0, num_classes: int = 0
) -> LoadedCounts:
    """Loads and validates own count data from an ``.npy``/``.npz`` file or a PNG folder.

    Args:
      path: the file or folder (``data.path``).
      array_key: the ``.npz`` key (``data.array_key``; ``''`` = the first array).
      max_count: the declared largest count (``data.max_count``); 0 infers it from the data
        (the data's maximum, at least 1) for arrays, and means 255 for PNGs.
      num_classes: ``> 0`` also reads the ``.npz``'s ``labels`` (:func:`load_labels`);
        0 (unconditional) reads no labels.

    Returns:
      :class:`LoadedCounts` with counts of shape (N, H, W, C) or (N, D), int32.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: naming the file, the index and the value of the first bad element
        (NaN or inf, non-integer, negative, above the declared ``max_count``), a wrong rank,
        an empty array, an unreadable file or an unusable PNG.
    """
    count_checks.check_declared_max_count(max_count)
    declared = int(max_count) if max_count > 0 else None
    if num_classes > 0 and Path(path).exists():
        _check_labelled_file(path, num_classes)
    if Path(path).is_dir():
        if array_key:
            raise ValueError(
                f"data.array_key = {array_key!r} names an array in an .npz file, but "
                f"{str(path)!r} is a folder of PNGs; leave data.array_key empty"
            )
        pixels, files = read_png_folder(path)

        def locate(index: tuple[int, ...]) -> str:
            return f"{files[index[0]]}[{', '.join(str(i) for i in index[1:])}]"

        counts = count_checks.check_count_values(
            pixels, source=str(path), max_count=declared, locate=locate
        )
        return LoadedCounts(counts, declared or PNG_MAX_COUNT, False, str(path))
    values, source = read_array_file(path, array_key)
    counts = count_checks.check_count_values(values, source=source, max_count=declared)
    labels = None
    if num_classes > 0:
        labels = load_labels(path, num_classes=num_classes, num_examples=len(counts))
    if declared is not None:
        return LoadedCounts(counts, declared, False, source, labels)
    return LoadedCounts(counts, count_checks.infer_max_count(counts), True, source, labels)
