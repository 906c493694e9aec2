"""Shared helpers for the tests: exact reference distributions and a pooled chi-square test."""

from __future__ import annotations

import contextlib
import functools
import os

from tests.cli import xla_flags_for_tests

# Before JAX starts its backend: this process and every child of tests.cli.cpu_environment
# compile with the tests' XLA flags (tests.cli.xla_flags_for_tests); flags the caller set come
# after, so that theirs win.
if xla_flags_for_tests() not in os.environ.get("XLA_FLAGS", ""):  # a pytest-xdist worker has them
    os.environ["XLA_FLAGS"] = f"{xla_flags_for_tests()} {os.environ.get('XLA_FLAGS', '')}".strip()

import jax  # noqa: E402
import numpy as np
import pytest
from scipy import stats


def pooled_chi_square_pvalue(
    observed_values: np.ndarray, support: np.ndarray, pmf: np.ndarray, min_expected: float = 5.0
) -> float:
    """p-value of a chi-square goodness-of-fit test of integer draws against an exact pmf.

    ``support`` lists the possible values in increasing order and ``pmf`` their probabilities.
    Neighbouring bins are pooled until every pooled bin expects at least ``min_expected``
    draws; draws outside ``support`` make the test fail outright (p-value 0).
    """
    observed_values = np.asarray(observed_values).ravel()
    support = np.asarray(support)
    pmf = np.asarray(pmf, np.float64)
    if not np.all(np.isin(observed_values, support)):
        return 0.0
    num_draws = observed_values.size
    counts = np.array([(observed_values == value).sum() for value in support], np.float64)
    expected = pmf / pmf.sum() * num_draws
    pooled_observed, pooled_expected = [], []
    running_observed = running_expected = 0.0
    for count, expect in zip(counts, expected, strict=True):
        running_observed += count
        running_expected += expect
        if running_expected >= min_expected:
            pooled_observed.append(running_observed)
            pooled_expected.append(running_expected)
            running_observed = running_expected = 0.0
    if running_expected > 0 or running_observed > 0:
        if pooled_expected:
            pooled_observed[-1] += running_observed
            pooled_expected[-1] += running_expected
        else:
            pooled_observed.append(running_observed)
            pooled_expected.append(running_expected)
    if len(pooled_expected) < 2:
        return 1.0
    return float(stats.chisquare(pooled_observed, pooled_expected).pvalue)


@pytest.fixture
def chi_square_pvalue():
    """The pooled chi-square goodness-of-fit test, as a fixture."""
    return pooled_chi_square_pvalue


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache for every child process the tests start.

    Tests that need the command line in a process of its own (signals, forced device counts,
    several processes, the studies) start children that compile the same small programs; with
    the cache, set in the environment that the children inherit, only the first compiles them.
    Under pytest-xdist the workers share one folder (the parent of their base temporary
    folders); the size limit makes JAX lock it (with ``filelock``), so that no child reads an
    entry that another is still writing.

    The test processes use the same folder for their own compilations (the in-process runs of
    the command line compile the programs that the children load, and the reverse), writing
    only programs that take a second or more to compile: every write scans the folder.
    """
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xla_cache"
    cache.mkdir(exist_ok=True)
    max_size = 16 * 2**30
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
        patch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        patch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
        patch.setenv("JAX_COMPILATION_CACHE_MAX_SIZE", str(max_size))
        with jax_settings(
            jax_compilation_cache_dir=str(cache),
            jax_persistent_cache_min_compile_time_secs=1.0,
            jax_compilation_cache_max_size=max_size,
        ):
            yield cache


def memory_mappings() -> int | None:
    """How many memory mappings this process holds (``/proc/self/maps``); ``None`` where the
    system does not say (not Linux)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return maps.read().count(b"\n")
    except OSError:
        return None


@functools.cache
def mapping_limit() -> int:
    """Linux's limit on memory mappings per process (``vm.max_map_count``, 65,530 by default)."""
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return 65530


@pytest.fixture(autouse=True)
def release_compiled_programs():
    """Drop every compiled program (``jax.clear_caches``) after a test that leaves this process
    holding more than half of the memory mappings it may have.

    XLA's CPU backend maps each compiled kernel into memory on its own (three mappings per
    kernel, some hundreds per sampler program) and keeps them while the program is cached. A
    pytest-xdist worker that runs many test files reaches Linux's limit (:func:`mapping_limit`),
    and the next compilation then fails inside LLVM with a segmentation fault
    (experiments/RESULTS.md, "CI steps"). One test adds a few thousand mappings at most (a
    training run of configs/tiny.py about 1,600), far below the half left.
    """
    yield
    mappings = memory_mappings()
    if mappings is not None and mappings > mapping_limit() // 2:
        jax.clear_caches()


@contextlib.contextmanager
def jax_settings(**values):
    """Set JAX config values for the duration of the block (previous values restored)."""
    previous = {name: getattr(jax.config, name) for name in values}
    for name, value in values.items():
        jax.config.update(name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)


@pytest.fixture
def numpy_rng() -> np.random.Generator:
    """A NumPy generator with a fixed seed."""
    return np.random.default_rng(20231124)
