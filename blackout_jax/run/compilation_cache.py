"""The persistent XLA compilation cache, on by default for runs.

A run compiles its training step, evaluation and sampler programs once; a resumed or repeated
run with the same programs on the same backend then loads them from disk instead of compiling
again (the CIFAR-10 training step takes about a minute to compile on a CPU and more on a GPU).

The folder is, in order of precedence:

1. the environment variable ``JAX_COMPILATION_CACHE_DIR`` (JAX's own name for it); the value
   ``off`` (any case), ``none``, ``0`` or an empty string turns the cache off;
2. ``~/.cache/blackout_jax/xla``.

JAX keys each entry by the program, the backend, the device kinds and the JAX version, so one
folder serves every run of a user; JAX's own thresholds (entries of programs that compile in
under a second are not written) are left as they are.

The folder is bounded: at most :data:`DEFAULT_MAX_SIZE` bytes (2 GiB) unless the environment
variable ``JAX_COMPILATION_CACHE_MAX_SIZE`` (JAX's own name) gives another number of bytes
(``-1`` = unbounded, ``0`` = no caching). With a bound JAX evicts the least recently used
entries once the folder would exceed it, and takes a file lock (``<folder>/.lockfile``, with
the ``filelock`` package) around every read and write, so that several processes can share one
folder: none reads an entry another is still writing, and evictions do not race. JAX records
each entry's last use in a file ``<key>-atime`` beside the entry ``<key>-cache``, only while the
folder is bounded; :func:`enable_persistent_cache` gives the entries written while it was not
(``-1``) such a file, without which every later write of a bounded process would fail with a
``FileNotFoundError`` warning (JAX 0.10.2 reads it for every entry when it evicts).
"""

from __future__ import annotations

import os

ENVIRONMENT_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
OFF_VALUES = ("", "off", "none", "0")
MAX_SIZE_VARIABLE = "JAX_COMPILATION_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = 2 * 2**30
"""The folder's bound in bytes when ``JAX_COMPILATION_CACHE_MAX_SIZE`` is not set: 2 GiB."""


def default_cache_dir() -> str:
    """``~/.cache/blackout_jax/xla`` (with ``~`` expanded)."""
    return os.path.join(os.path.expanduser("~"), ".cache", "blackout_jax", "xla")


def cache_dir_from_environment(environ: dict[str, str] | None = None) -> str | None:
    """The cache folder chosen by the environment (see the module docstring); ``None`` = off."""
    environ = os.environ if environ is None else environ
    if ENVIRONMENT_VARIABLE not in environ:
        return default_cache_dir()
    value = environ[ENVIRONMENT_VARIABLE].strip()
    if value.lower() in OFF_VALUES:
        return None
    return os.path.expanduser(value)


def max_size_from_environment(environ: dict[str, str] | None = None) -> int:
    """The folder's bound in bytes: ``JAX_COMPILATION_CACHE_MAX_SIZE`` if set (``-1`` =
    unbounded), else :data:`DEFAULT_MAX_SIZE`.

    Raises:
      ValueError: the variable is not an integer >= -1 (naming it and its value).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(MAX_SIZE_VARIABLE)
    if value is None:
        return DEFAULT_MAX_SIZE
    try:
        size = int(value.strip())
    except ValueError:
        size = -2
    if size < -1:
        raise ValueError(
            f"{MAX_SIZE_VARIABLE}={value!r} is not a number of bytes (an integer >= 0, or -1 "
            "for no bound)"
        )
    return size


ENTRY_SUFFIX = "-cache"
ACCESS_TIME_SUFFIX = "-atime"


def add_missing_access_times(path: str) -> int:
    """Give every entry ``<key>-cache`` of the cache folder ``path`` that has no access-time
    file ``<key>-atime`` one, holding the entry's modification time (nanoseconds since the
    epoch, 8 bytes little-endian, as JAX writes it); returns how many were added (0 when the
    folder does not exist)."""
    if not os.path.isdir(path):
        return 0
    added = 0
    for name in os.listdir(path):
        if not name.endswith(ENTRY_SUFFIX):
            continue
        entry = os.path.join(path, name)
        access_time = entry[: -len(ENTRY_SUFFIX)] + ACCESS_TIME_SUFFIX
        if os.path.exists(access_time):
            continue
        try:
            modified = os.stat(entry).st_mtime_ns
            with open(access_time, "wb") as file:
                file.write(modified.to_bytes(8, "little"))
        except OSError:  # evicted meanwhile by another process, or a read-only folder
            continue
        added += 1
    return added


def enable_persistent_cache(environ: dict[str, str] | None = None) -> str | None:
    """Point JAX's persistent compilation cache at the folder chosen by the environment,
    bounded by :func:`max_size_from_environment` (least recently used entries evicted, reads
    and writes under a file lock; entries without an access-time file get one,
    :func:`add_missing_access_times`).

    Call it once at the start of a run, before anything is compiled: JAX opens its cache at
    the first compilation of a process and ignores later changes of the folder or the bound.
    Returns the folder, or ``None`` when the cache is off (then the JAX settings are left as
    they are).

    Raises:
      ValueError: ``JAX_COMPILATION_CACHE_MAX_SIZE`` is not an integer >= -1.
    """
    import jax  # here, so that the command can check the variables before JAX reads them

    path = cache_dir_from_environment(environ)
    if path is not None:
        max_size = max_size_from_environment(environ)
        if max_size != -1:
            add_missing_access_times(path)
        jax.config.update("jax_compilation_cache_max_size", max_size)
        jax.config.update("jax_compilation_cache_dir", path)
    return path
