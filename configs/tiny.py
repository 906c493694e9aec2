"""A very small network and a few steps on sklearn's digits: the end-to-end test run."""

from __future__ import annotations

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
    """Digits, a one-level network with 8 channels, 6 steps of batch 8."""
    config = default_lib.get_config()

    config.diffusion.num_steps = 20

    model = config.model
    model.nf = 8
    model.ch_mult = (1,)
    model.num_res_blocks = 1
    model.attn_resolutions = ()
    model.resblock_type = "ddpm"
    model.fir = False
    model.progressive_input = "none"
    model.dropout = 0.1

    training = config.training
    training.num_steps = 6
    training.batch_size = 8
    training.warmup_steps = 2
    training.log_every = 2
    training.eval_every = 3
    training.checkpoint_every = 3
    training.keep_checkpoints = 2

    evaluation = config.eval
    evaluation.num_examples = 16
    evaluation.num_time_samples = 2
    evaluation.batch_size = 8
    evaluation.num_grid_samples = 4

    sampling = config.sampling
    sampling.num_samples = 4
    sampling.num_steps = 4
    sampling.batch_size = 4
    return config
