"""CelebA at 64x64 (counts 0..255) as in the reference experiments.

The reference trains the CIFAR-10 network unchanged at 64x64 (``ch_mult (1, 2, 2, 2)``, 4
blocks per resolution, attention at 16: 62,693,251 parameters, the same count as at 32x32),
batch 100, t_end 15, instantaneous loss, no random flips (its data is a pre-built 64x64 array);
optimiser and sampler as ``configs/cifar10.py``. The TFDS centre crop 140 and antialiased
resize to 64 (``blackout_jax.data.tfds_source.celeba_crop_resize``) is how that array is
built here. Reads the TFDS copy offline from ``data.data_dir``:

    python -m blackout_jax.main --config=configs/celeba64.py --workdir=runs/celeba64 \\
        --config.data.data_dir=/path/to/tensorflow_datasets
"""

from __future__ import annotations

import ml_collections

from configs import cifar10 as cifar10_lib


def get_config() -> ml_collections.ConfigDict:
    """CelebA-64: the CIFAR-10 reference network, loss and optimiser, batch 100, no flips."""
    config = cifar10_lib.get_config()
    config.data.name = "celeba64"
    config.data.max_count = 255
    config.data.random_flip = False

    config.training.batch_size = 100
    config.eval.batch_size = 100
    config.sampling.batch_size = 100
    return config
