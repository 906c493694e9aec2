"""Binarized MNIST (counts 0..1) as in the reference experiments.

The reference resizes MNIST's 28x28 images to 32x32 (antialiased bilinear on ``pixel / 255``)
and thresholds them at 0.5 (``blackout_jax.data.tfds_source.binarize_mnist``), then trains the
CIFAR-10 NCSN++ unchanged with one input channel (62,686,337 parameters): batch 256,
t_end = 10, instantaneous loss, no flips, plain Adam 2e-4, EMA 0.9999, 1.3M steps; sampling as
``configs/cifar10.py``. ``configs/binarized_mnist_small.py`` is a much smaller network on the
same data. Reads the TFDS copy offline from ``data.data_dir``:

    python -m blackout_jax.main --config=configs/binarized_mnist.py --workdir=runs/bmnist \\
        --config.data.data_dir=/path/to/tensorflow_datasets
"""

from __future__ import annotations

import ml_collections

from configs import cifar10 as cifar10_lib


def get_config() -> ml_collections.ConfigDict:
    """Binarized MNIST at 32x32: the CIFAR-10 reference network, t_end 10, batch 256."""
    config = cifar10_lib.get_config()
    config.data.name = "binarized_mnist"
    config.data.max_count = 1
    config.data.random_flip = False
    config.diffusion.t_end = 10.0
    config.sampling.num_samples = 60_000
    config.sampling.batch_size = 512
    return config
