"""sklearn's digits (8x8, counts 0..16): the default run, tuned for a few minutes of CPU.

python -m blackout_jax.main --config=configs/digits.py --workdir=runs/digits
"""

from __future__ import annotations

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
    """``configs/default.py`` sampling with the best sampler measured at 100 network calls on
    digits (experiments/RESULTS.md, "Few-step study"): the trapezoidal bridge, 50 steps of two
    calls each, on the logit grid."""
    config = default_lib.get_config()
    config.sampling.method = "trapezoidal_bridge"
    config.sampling.num_steps = 50
    return config
