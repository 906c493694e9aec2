"""CIFAR-10 (32x32x3, counts 0..255) with the reference settings of Blackout Diffusion.

Santos et al. (ICML 2023), as their notebooks (lanl/Blackout-Diffusion) run it: the CIFAR-10
NCSN++ of score_sde (62,693,251 parameters) fed the integer time label ``k - 1``
(``model.time_input = 'grid_index'``), instantaneous loss, batch 256, random flips,
plain Adam 2e-4 (no learning-rate warm-up, no gradient clipping: score_sde's ``warmup`` and
``grad_clip`` values are never applied in their loop), EMA 0.9999, T = 1000 observation
times, t_end = 15, 1.3M steps. Sampling as their generation notebooks: every d-th training
time (``sampling.grid = 'subgrid'``), from an all-zero image (``sampling.start = 'zeros'``),
with the network's dropout active (``sampling.dropout = True``). docs/reference.md lists
every difference from the library's defaults. Reads the TFDS copy of CIFAR-10 offline from
``data.data_dir``:

    python -m blackout_jax.main --config=configs/cifar10.py --workdir=runs/cifar10 \\
        --config.data.data_dir=/path/to/tensorflow_datasets
"""

from __future__ import annotations

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
    """CIFAR-10, reference network, optimiser and sampler."""
    config = default_lib.get_config()

    data = config.data
    data.name = "cifar10"
    data.max_count = 255
    data.random_flip = True

    diffusion = config.diffusion
    diffusion.t_end = 15.0
    diffusion.num_steps = 1000
    diffusion.weighting = "instantaneous"

    model = config.model
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.resblock_type = "biggan"
    model.skip_rescale = True
    model.resamp_with_conv = True
    model.fir = True
    model.fir_kernel = (1, 3, 3, 1)
    model.progressive = "none"
    model.progressive_input = "residual"
    model.progressive_combine = "sum"
    model.dropout = 0.1
    model.embedding_type = "positional"
    model.time_input = "grid_index"  # the reference's integer label k - 1 of time t_k
    model.init_scale = 0.0
    model.conv_size = 3

    training = config.training
    training.num_steps = 1_300_000
    training.batch_size = 256
    training.learning_rate = 2e-4
    training.warmup_steps = 0
    training.grad_clip_norm = 0.0
    training.ema_decay = 0.9999
    training.log_every = 100
    training.eval_every = 10_000
    training.checkpoint_every = 5000
    training.keep_checkpoints = 3
    training.keep_every = 50_000

    evaluation = config.eval
    evaluation.num_examples = 1000
    evaluation.num_time_samples = 8
    evaluation.batch_size = 256
    evaluation.num_grid_samples = 64

    sampling = config.sampling
    sampling.num_samples = 50_000
    sampling.num_steps = 1000
    sampling.grid = "subgrid"
    sampling.start = "zeros"
    sampling.dropout = True
    sampling.batch_size = 500
    return config
