"""Experiment configs (ml_collections): ``default.py`` defines every field, the others override it.

Use one with ``python -m blackout_jax.main --config=configs/<name>.py --workdir=...``; any field
can be overridden on the command line, e.g. ``--config.training.num_steps=2000``.
"""
