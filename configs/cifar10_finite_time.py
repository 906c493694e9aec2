"""CIFAR-10 with the reference finite-time loss weighting ``w = p_{t_{k-1}} - p_{t_k}``.

Everything else as in ``configs/cifar10.py``.
"""

from __future__ import annotations

import ml_collections

from configs import cifar10 as cifar10_lib


def get_config() -> ml_collections.ConfigDict:
    """CIFAR-10, finite-time weighting."""
    config = cifar10_lib.get_config()
    config.diffusion.weighting = "finite_time"
    return config
