"""The run layer: experiments from a config to a run folder.

The typed config (:mod:`~blackout_jax.run.config`), the training loop
(:mod:`~blackout_jax.run.train`), the sample/evaluate/impute commands
(:mod:`~blackout_jax.run.inference`), the one chunked sampler driver
(:mod:`~blackout_jax.run.chunked`), the one loop over a held-out dataset
(:mod:`~blackout_jax.run.held_out`), checkpoints, reports, devices and random streams. It glues
the pure math of :mod:`blackout_jax`, the networks of :mod:`blackout_jax.models` and the data of
:mod:`blackout_jax.data`; none of those imports it. The command line is
:mod:`blackout_jax.main`.
"""
