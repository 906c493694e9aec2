"""The default experiment: Blackout Diffusion on sklearn's digits (8x8, counts 0..16).

Every config field is defined here; the other files in ``configs/`` start from this one and
override what differs. The digits data ships with scikit-learn, so this run needs no download
and trains on a laptop CPU in minutes:

    python -m blackout_jax.main --config=configs/digits.py --workdir=runs/digits

Fields (see ``blackout_jax.config_validation`` for the allowed values):

* ``seed``: seeds the initialisation, the data order and every random draw of training.
* ``data``: ``name`` ('digits' | 'cifar10' | 'binarized_mnist' | 'celeba64' | 'counts'),
  ``data_dir`` (TFDS data directory), ``path`` (own counts file or PNG folder for 'counts'),
  ``array_key`` (key in an .npz file, '' = the first array), ``max_count`` (largest count N;
  0 = infer from the data, 'counts' only), ``num_test`` (held-out examples split off for
  'digits' and 'counts'), ``random_flip`` (left-right flips in training), ``prefetch``
  (batches prepared ahead).
* ``diffusion``: ``t_end`` (end time of the death process), ``num_steps`` (T observation
  times of the reference grid), ``weighting`` ('instantaneous' | 'finite_time' | 'elbo').
* ``model``: the NCSN++ network (``blackout_jax.models``); ``dtype`` is the compute dtype
  ('float32' | 'bfloat16'), parameters stay float32; ``inference_dtype`` is the compute dtype
  of sampling and evaluation ('' = ``dtype``; 'bfloat16' samples a float32-trained network in
  bfloat16).
* ``training``: ``num_steps``, global ``batch_size``, Adam ``learning_rate`` with a linear
  warm-up over ``warmup_steps``, gradient clipping to global norm ``grad_clip_norm``
  (0 = off), ``ema_decay`` (the EMA uses ``min(ema_decay, (1 + s) / (10 + s))`` at update
  ``s``, so short runs have a usable average), ``log_every``, ``eval_every``,
  ``checkpoint_every``, ``keep_checkpoints`` (the last N), ``keep_every`` (also keep every
  K-th step for good; 0 = off), ``max_consecutive_nonfinite`` (stop after this many skipped
  updates in a row).
* ``eval``: ``num_examples`` (fixed held-out examples for the likelihood bound and the
  held-out loss; 0 = the whole held-out split), ``num_time_samples`` (stratified time draws
  per example for the bound), ``batch_size``, ``num_grid_samples`` (samples in the PNG grid
  written at each evaluation; 0 = none). For ``--mode=evaluate``: ``sample_metrics``
  ('auto' | 'digits' | 'inception' | 'none'; auto = the digits classifier for digits, Inception
  FID/IS/KID for the image datasets, none for own counts), ``inception_weights`` (local file of
  the Inception weights; '' = $BLACKOUT_JAX_INCEPTION_WEIGHTS or the default path of
  docs/metrics.md), ``reference_cache_dir`` (cached training-set statistics; '' =
  ~/.cache/blackout_jax/reference), ``kid_subset_size``.
* ``sampling``: ``num_samples``, ``num_steps`` (sampler steps; the evaluation grid uses them
  too), ``method`` ('binomial_bridge' | 'tau_leaping'), ``batch_size`` (samples drawn per
  compiled call), ``checkpoint_step`` (-1 = the latest checkpoint). For ``--mode=impute``:
  ``impute_particles`` (particles per example, reweighted by their fit to the observations
  and resampled; 1 = none), ``impute_resamples`` (takes of each sampler step, the state
  thinned back by the forward process between takes; 1 = none); one of the two may exceed 1,
  and each particle or take is a network call per step.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The digits run; every field the code reads is defined here."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    data.name = "digits"
    data.data_dir = ""
    data.path = ""
    data.array_key = ""
    data.max_count = 16
    data.num_test = 297
    data.random_flip = False
    data.prefetch = 2

    config.diffusion = diffusion = ml_collections.ConfigDict()
    diffusion.t_end = 10.0
    diffusion.num_steps = 1000
    diffusion.weighting = "elbo"

    config.model = model = ml_collections.ConfigDict()
    model.name = "ncsnpp"
    model.nf = 32
    model.ch_mult = (1, 2, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (4,)
    model.resblock_type = "biggan"
    model.skip_rescale = True
    model.resamp_with_conv = True
    model.fir = True
    model.fir_kernel = (1, 3, 3, 1)
    model.progressive = "none"
    model.progressive_input = "residual"
    model.progressive_combine = "sum"
    model.dropout = 0.1
    model.embedding_type = "positional"
    model.fourier_scale = 16.0
    model.time_input = "continuous"
    model.init_scale = 0.0
    model.conv_size = 3
    model.input_transform = "reference"
    model.output_transform = "softplus"
    model.dtype = "float32"
    model.inference_dtype = ""

    config.training = training = ml_collections.ConfigDict()
    training.num_steps = 1000
    training.batch_size = 128
    training.learning_rate = 1e-3
    training.warmup_steps = 200
    training.grad_clip_norm = 1.0
    training.ema_decay = 0.999
    training.log_every = 50
    training.eval_every = 500
    training.checkpoint_every = 250
    training.keep_checkpoints = 3
    training.keep_every = 0
    training.max_consecutive_nonfinite = 20

    config.eval = evaluation = ml_collections.ConfigDict()
    evaluation.num_examples = 0
    evaluation.num_time_samples = 16
    evaluation.batch_size = 256
    evaluation.num_grid_samples = 64
    evaluation.sample_metrics = "auto"
    evaluation.inception_weights = ""
    evaluation.reference_cache_dir = ""
    evaluation.kid_subset_size = 1000

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.num_samples = 64
    sampling.num_steps = 100
    sampling.method = "binomial_bridge"
    sampling.batch_size = 64
    sampling.checkpoint_step = -1
    sampling.impute_resamples = 1
    sampling.impute_particles = 5

    return config
