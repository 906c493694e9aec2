"""The default experiment: Blackout Diffusion on sklearn's digits (8x8, counts 0..16).

Every config field, with its default, its meaning and its allowed values, is declared once:
the sections ``data``, ``diffusion``, ``training``, ``eval`` and ``sampling`` in
``blackout_jax/run/config_sections.py`` (``DataConfig``, ``DiffusionConfig``, ``TrainingConfig``,
``EvalConfig``, ``SamplingConfig``; the digits network is its ``DIGITS_MODEL``), ``seed`` in
``ExperimentConfig`` of ``blackout_jax/run/config.py``, and the ``model`` section in the
network's module (``NCSNppConfig`` in ``blackout_jax/models/ncsnpp.py``, ``CountMLPConfig`` in
``blackout_jax/models/count_mlp.py``, chosen by ``model.name``). ``--mode=show_config``
prints them all, one ``section.field = value  # meaning`` line each. This file turns those
defaults into the ``ml_collections.ConfigDict`` that the other files in ``configs/`` override.
The digits data ships with scikit-learn, so this run needs no download and trains on a laptop
CPU in minutes:

    python -m blackout_jax.main --config=configs/digits.py --workdir=runs/digits
"""

from __future__ import annotations

import ml_collections

from blackout_jax.run import config as config_lib


def get_config() -> ml_collections.ConfigDict:
    """The digits run: every field the code reads, at its default."""
    return ml_collections.ConfigDict(config_lib.default_dict())
