"""Single-cell RNA-seq counts: cells x genes UMI matrices from 10x Cell Ranger (or any format
of docs/data.md), the top 2,000 genes of the training split.

    blackout-jax --config=configs/cells.py --workdir=runs/cells \\
        --config.data.path=donor1/filtered_feature_bc_matrix.h5,donor2/filtered_feature_bc_matrix.h5

``data.path`` names one file, or several of one gene space (comma-separated; their cells are
joined in order). A fifth of the cells is held out (``data.num_test`` is set for the 7,827
cells of the two liao2019 donors; set it for your data: training refuses to hold out more than
half). The genes are chosen on the training split only, by mean (``data.num_features``,
``data.feature_selection``), and listed in ``WORKDIR/features.json``. ``data.max_count = 0``
infers the largest count; the start of training prints the split and that count.

``diffusion.t_end = 21 >= log(50 N D)``: the prior ``Poisson((N / 2) e^-21)`` per entry then
has at most 0.01 non-zero entries per cell of D = 2,000 genes for the largest count N of these
data (12,866), so sampling starts from (almost) all zeros (docs/counts.md).
"""

from __future__ import annotations

import ml_collections

from blackout_jax.run import config as config_lib
from configs import default as default_lib


def get_config() -> ml_collections.ConfigDict:
    """10x matrices from ``data.path``, 2,000 genes, a residual count network."""
    config = default_lib.get_config()

    data = config.data
    data.name = "counts"
    data.path = ""  # required: set with --config.data.path=...
    data.max_count = 0
    data.num_test = 1565  # a fifth of the 7,827 liao2019 cells
    data.num_features = 2000
    data.feature_selection = "mean"

    diffusion = config.diffusion
    diffusion.t_end = 21.0
    diffusion.num_steps = 1000
    diffusion.weighting = "elbo"

    config.model = ml_collections.ConfigDict(config_lib.model_defaults("count_mlp"))

    training = config.training
    training.num_steps = 3000
    training.batch_size = 128
    training.learning_rate = 1e-3
    training.warmup_steps = 100
    training.log_every = 100
    training.eval_every = 1000
    training.checkpoint_every = 500

    evaluation = config.eval
    evaluation.num_examples = 500
    evaluation.num_time_samples = 4
    evaluation.batch_size = 128
    evaluation.num_grid_samples = 32

    sampling = config.sampling
    sampling.num_samples = 1024
    # Poisson births of rate yhat r: the reference bridge's round-to-nearest gives a gene whose
    # yhat stays below 1/2 no births at all (98% zeros against 88%), and the trapezoidal
    # bridge's extrapolation diverged on these counts (RESULTS.md, "Count vectors").
    sampling.method = "tau_leaping"
    sampling.unthin_method = "tau_leaping"
    sampling.num_steps = 100
    sampling.batch_size = 256
    return config
