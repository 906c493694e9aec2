"""sklearn's digits (8x8, counts 0..16): the default run, tuned for a few minutes of CPU.

python -m blackout_jax.main --config=configs/digits.py --workdir=runs/digits
"""

from __future__ import annotations

import ml_collections

from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
    """The digits run (identical to ``configs/default.py``)."""
    return default_lib.get_config()
