"""Benchmarks, each runnable as ``python -m experiments.benchmarks.<name>`` from the repository
root; shared measuring helpers in :mod:`experiments.benchmarks.common`."""
