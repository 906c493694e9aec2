"""Your own count data on a laptop CPU: a small network that learns in minutes, not days.

    python -m blackout_jax.main --config=configs/counts_small.py --workdir=runs/mine_small \\
        --config.data.path=/path/to/counts.npz

The same data handling as ``configs/counts.py`` (see docs/data.md, "Your own counts"), with a
network of about 0.1M parameters (width 16, two levels, one block, no attention), batch 32, 2000
steps and a 100-step sampler. Warm-up is a twentieth of ``training.num_steps``, also when the
number of steps is overridden. H and W must be even.
"""

from __future__ import annotations

import ml_collections

from configs import counts as counts_lib


def get_config() -> ml_collections.ConfigDict:
    """Own counts from ``data.path``; sized for a 2-core CPU."""
    config = counts_lib.get_config()
    config.data.num_test = 100

    model = config.model
    model.nf = 16
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = ()
    model.dropout = 0.0

    training = config.training
    training.num_steps = 2000
    training.batch_size = 32
    training.learning_rate = 1e-3
    training.ema_decay = 0.999
    training.log_every = 50
    training.eval_every = 1000
    training.checkpoint_every = 500

    evaluation = config.eval
    evaluation.num_examples = 100
    evaluation.num_time_samples = 8
    evaluation.num_grid_samples = 16

    sampling = config.sampling
    sampling.num_steps = 100
    sampling.num_samples = 64
    sampling.batch_size = 32
    return config
