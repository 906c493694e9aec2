"""Shared helpers for the tests: exact reference distributions and a pooled chi-square test."""

from __future__ import annotations

import os

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

    The end-to-end tests run the command line in subprocesses that compile the same small
    programs; with the cache only the first compiles them. Set in this process's environment,
    which the children inherit (this process's JAX has read its configuration already).
    """
    cache = tmp_path_factory.mktemp("xla_cache")
    settings = {
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    yield cache
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def numpy_rng() -> np.random.Generator:
    """A NumPy generator with a fixed seed."""
    return np.random.default_rng(20231124)
