"""Your own count data: an .npy/.npz array of non-negative integers, shape (N, H, W, C).

    python -m blackout_jax.main --config=configs/counts.py --workdir=runs/mine \\
        --config.data.path=/path/to/counts.npz [--config.data.array_key=counts]

``data.max_count = 0`` infers the largest count N from the data; set it to the true upper bound
when it is known (e.g. 255 for 8-bit images). ``data.num_test`` examples are held out for the
likelihood bound: 100 here, a sixth of 600 examples; lower it for smaller data, since training
refuses to hold out more than half of the examples (unless ``data.allow_large_test_share=True``).
H and W must be divisible by ``2 ** (len(model.ch_mult) - 1)``.
"""

from __future__ import annotations

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
    """Own counts from ``data.path``; a mid-sized network and reference-style training."""
    config = default_lib.get_config()

    data = config.data
    data.name = "counts"
    data.path = ""  # required: set with --config.data.path=...
    data.array_key = ""
    data.max_count = 0
    data.num_test = 100  # a sixth of 600 examples; the start of training prints the split

    diffusion = config.diffusion
    diffusion.t_end = 15.0
    diffusion.num_steps = 1000
    diffusion.weighting = "elbo"

    model = config.model
    model.nf = 64
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = ()

    training = config.training
    training.num_steps = 100_000
    training.batch_size = 128
    training.learning_rate = 2e-4
    # A twentieth of the run (1000 steps here), also when --config.training.num_steps changes.
    training.warmup_steps = training.get_ref("num_steps") // 20
    training.ema_decay = 0.9999
    training.log_every = 100
    training.eval_every = 5000
    training.checkpoint_every = 5000

    evaluation = config.eval
    evaluation.num_examples = 500

    sampling = config.sampling
    sampling.num_steps = 1000
    return config
