"""Binarized MNIST (32x32x1, counts 0..1) with a small network: a variant, not the reference.

The data and t_end = 10 are those of ``configs/binarized_mnist.py`` (the reference); the
network is a 3-level NCSN++ with nf 64 and 2 blocks per level (attention at 8x8), trained with
batch 128, Adam 2e-4 after a 1000-step warm-up, gradient clipping at norm 1 and 200k steps.
Reads the TFDS copy offline from ``data.data_dir``:

    python -m blackout_jax.main --config=configs/binarized_mnist_small.py --workdir=runs/bmnist \\
        --config.data.data_dir=/path/to/tensorflow_datasets
"""

from __future__ import annotations

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
    """Binarized MNIST, small network: 32 -> 16 -> 8 (ch_mult of length 3)."""
    config = default_lib.get_config()

    data = config.data
    data.name = "binarized_mnist"
    data.max_count = 1

    diffusion = config.diffusion
    diffusion.t_end = 10.0
    diffusion.num_steps = 1000
    diffusion.weighting = "instantaneous"

    model = config.model
    model.nf = 64
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (8,)

    training = config.training
    training.num_steps = 200_000
    training.batch_size = 128
    training.learning_rate = 2e-4
    training.warmup_steps = 1000
    training.ema_decay = 0.9999
    training.log_every = 100
    training.eval_every = 5000
    training.checkpoint_every = 5000
    training.keep_every = 50_000

    evaluation = config.eval
    evaluation.num_examples = 1000
    evaluation.num_time_samples = 8

    sampling = config.sampling
    sampling.num_samples = 10_000
    sampling.num_steps = 1000
    sampling.batch_size = 500
    return config
