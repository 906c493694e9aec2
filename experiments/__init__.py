"""Experiments, studies and benchmarks of blackout_jax (run as ``python -m experiments.…``)."""
