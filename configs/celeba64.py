"""CelebA at 64x64 (counts 0..255), batch 100 as in the reference experiments.

The network is the CIFAR-10 reference NCSN++ with one more resolution level for 64x64 inputs.
Reads the TFDS copy offline from ``data.data_dir``:

    python -m blackout_jax.main --config=configs/celeba64.py --workdir=runs/celeba64 \\
        --config.data.data_dir=/path/to/tensorflow_datasets
"""

from __future__ import annotations

import ml_collections

from configs import cifar10 as cifar10_lib


def get_config() -> ml_collections.ConfigDict:
    """CelebA-64: reference optimiser and loss, batch 100."""
    config = cifar10_lib.get_config()
    config.data.name = "celeba64"
    config.data.max_count = 255
    config.data.random_flip = True

    config.model.ch_mult = (1, 1, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (16,)

    config.training.batch_size = 100
    config.eval.batch_size = 100
    config.sampling.batch_size = 100
    return config
