"""The default experiment: Blackout Diffusion on sklearn's digits (8x8, counts 0..16).

Every config field, with its default, its meaning and its allowed values, is declared once in
the typed sections of ``blackout_jax/run/config.py``; this file turns those defaults into the
``ml_collections.ConfigDict`` that the other files in ``configs/`` override. The digits data ships
with scikit-learn, so this run needs no download and trains on a laptop CPU in minutes:

    python -m blackout_jax.main --config=configs/digits.py --workdir=runs/digits
"""

from __future__ import annotations

import ml_collections

from blackout_jax.run import config as config_lib


def get_config() -> ml_collections.ConfigDict:
    """The digits run: every field the code reads, at its default."""
    return ml_collections.ConfigDict(config_lib.default_dict())
