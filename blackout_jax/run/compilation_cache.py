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
"""

from __future__ import annotations

import os

import jax

ENVIRONMENT_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
OFF_VALUES = ("", "off", "none", "0")


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


def enable_persistent_cache(environ: dict[str, str] | None = None) -> str | None:
    """Point JAX's persistent compilation cache at the folder chosen by the environment.

    Call it once at the start of a run, before anything is compiled: JAX opens its cache at
    the first compilation of a process and ignores later changes of the folder. Returns the
    folder, or ``None`` when the cache is off (then the JAX setting is left as it is).
    """
    path = cache_dir_from_environment(environ)
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", path)
    return path
