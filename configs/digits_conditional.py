"""sklearn's digits, class-conditional: the digits run with a label embedding and label dropout.

Trained as long as ``configs/digits.py``; 10% of the training labels are replaced by the null
label so that one network gives both the conditional and the unconditional prediction, which
classifier-free guidance (``sampling.guidance_scale``) combines:

python -m blackout_jax.main --config=configs/digits_conditional.py --workdir=runs/digits_cond
python -m blackout_jax.main --config=configs/digits_conditional.py --workdir=runs/digits_cond \
    --mode=sample --config.sampling.guidance_scale=1.0
"""

from __future__ import annotations

import ml_collections

from configs import digits


def get_config() -> ml_collections.ConfigDict:
    """The digits run with ``model.num_classes = 10`` and ``training.label_dropout = 0.1``."""
    config = digits.get_config()
    config.model.num_classes = 10
    config.training.label_dropout = 0.1
    return config
