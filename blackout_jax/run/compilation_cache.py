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
folder: none reads an entry another is still writing, and evictions do not race.
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


def enable_persistent_cache(environ: dict[str, str] | None = None) -> str | None:
    """Point JAX's persistent compilation cache at the folder chosen by the environment,
    bounded by :func:`max_size_from_environment` (least recently used entries evicted, reads
    and writes under a file lock).

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
        jax.config.update("jax_compilation_cache_max_size", max_size_from_environment(environ))
        jax.config.update("jax_compilation_cache_dir", path)
    return path
