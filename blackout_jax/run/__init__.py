"""The run layer: experiments from a config to a run folder.

The typed config (:mod:`~blackout_jax.run.config`), the run folder's layout and stored config
(:mod:`~blackout_jax.run.folder`), the data and network of an experiment
(:mod:`~blackout_jax.run.network`), the training step (:mod:`~blackout_jax.run.train_step`)
and loop (:mod:`~blackout_jax.run.train`), evaluation during training and on command
(:mod:`~blackout_jax.run.evaluation`), a trained run opened for use
(:mod:`~blackout_jax.run.trained`), the sample/evaluate/impute/unthin commands
(:mod:`~blackout_jax.run.inference`), the one chunked sampler driver
(:mod:`~blackout_jax.run.chunked`), the one loop over a held-out dataset
(:mod:`~blackout_jax.run.held_out`), what a run does when something fails
(:mod:`~blackout_jax.run.safety`), the console progress (:mod:`~blackout_jax.run.progress`),
checkpoints, reports, devices and random streams. It glues
the pure math of :mod:`blackout_jax`, the networks of :mod:`blackout_jax.models` and the data of
:mod:`blackout_jax.data`; none of those imports it. The command line is
:mod:`blackout_jax.main`.
"""
