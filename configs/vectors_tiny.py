"""Count vectors, tiny: the synthetic cells x genes matrix and a small count network.

    blackout-jax --config=configs/vectors_tiny.py --workdir=runs/vectors_tiny

The data (``data.name = "synthetic_cells"``, :mod:`blackout_jax.data.synthetic_cells`) are
1,200 cells of 64 genes drawn from a known three-type negative-binomial law, so the held-out
bound can be read against the law's exact entropy (about 2.30 bits per entry). Runs in about a
minute on a 2-core CPU; the end-to-end tests of count vectors use it.
"""

from __future__ import annotations

import ml_collections

from blackout_jax.run import config as config_lib
from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
    """Synthetic cells, a two-block count network of width 64, 30 steps of batch 32."""
    config = default_lib.get_config()

    data = config.data
    data.name = "synthetic_cells"
    data.max_count = 154  # the largest count of the synthetic cells
    data.num_test = 200

    config.diffusion.t_end = 15.0
    config.diffusion.num_steps = 100

    config.model = ml_collections.ConfigDict(config_lib.model_defaults("count_mlp"))
    config.model.width = 64
    config.model.num_blocks = 2
    config.model.embedding_dim = 32

    training = config.training
    training.num_steps = 30
    training.batch_size = 32
    training.learning_rate = 2e-3
    training.warmup_steps = 3
    training.log_every = 10
    training.eval_every = 15
    training.checkpoint_every = 15
    training.keep_checkpoints = 2

    evaluation = config.eval
    evaluation.num_examples = 64
    evaluation.num_time_samples = 2
    evaluation.batch_size = 32
    evaluation.num_grid_samples = 16

    sampling = config.sampling
    sampling.num_samples = 64
    sampling.num_steps = 10
    sampling.batch_size = 32
    return config
