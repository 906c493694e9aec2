"""A residual MLP predictor for count vectors (cells x genes UMI counts), in Flax NNX.

The network maps a batch of count vectors ``n_t`` of shape ``(B, D)`` and times ``t`` of shape
``(B,)`` to ``yhat ~ E[n_0 - n_t | n_t]`` (float32, ``> 0``, shape ``(B, D)``), with
``p_t = e^{-t}`` the survival probability of the death process.

* **input**: per feature ``log1p(n_t)`` and ``log1p(n_t / p_t)`` (the second undoes the
  thinning on average), concatenated to ``(B, 2D)`` and mapped to ``width`` by a dense layer.
* **conditioning**: a vector ``c`` of size ``embedding_dim`` from the sinusoidal embedding of the
  continuous grid position ``k(t)`` (:func:`blackout_jax.schedule.grid_position`, clipped to
  ``[0, T]``, as NCSN++ with ``time_input = "continuous"``) and the log library size
  ``log1p(sum_g n_t / p_t)``, through two dense layers; with ``num_classes = C > 0`` a learned
  embedding ``E[y]`` of the label ``y`` in ``0..C`` (``C`` = the null label, no class) is added.
* **blocks** (``num_blocks`` of them, pre-norm, FiLM): ``h <- h + W_2 drop(act(W_1 act(
  LN(h) (1 + s) + b)))`` with ``(s, b) = V act(c)`` per block.
* **output**: ``h = W_out act(LN(h))`` ``(B, D)`` with ``W_out`` and its bias initialised to
  zero, and

  - ``"nb_corrected"``: ``yhat = m(n_t, t) exp(h)``, where ``m`` is the exact posterior mean of
    a per-feature negative-binomial prior (:func:`log_nb_posterior_mean`), whose log mean
    ``log mu_g`` and log Gamma scale ``log theta_g`` are parameters initialised from moments
    (:func:`nb_prior_from_moments`). The untrained network is exactly that posterior mean.
  - ``"log_rate"``: ``yhat = exp(h)``, no prior.

  ``log yhat`` is clipped to ``[-80, log N]`` (``N = max_count``, the most a count can still
  grow), which keeps ``exp`` finite and ``log yhat`` defined in float32.

Parameters are float32; ``model.dtype = "bfloat16"`` computes the dense layers in bfloat16
(LayerNorm statistics, the prior and the output in float32). ``model.inference_dtype`` sets the
compute dtype of evaluation mode (``train=False``) apart from training; empty means
``model.dtype``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from blackout_jax import schedule, settings
from blackout_jax.models import common, layers
from blackout_jax.models.common import COMPUTE_DTYPES
from blackout_jax.settings import setting

Array = jax.Array

OUTPUTS = ("nb_corrected", "log_rate")
MEAN_FLOOR = 1e-6
"""Smallest prior mean ``mu_g`` (features never seen in the moments get this one)."""
SCALE_FLOOR = 1e-4
"""Smallest Gamma scale ``theta_g`` (under-dispersed features: close to Poisson)."""
DEFAULT_FEATURE_MEAN = 1.0
DEFAULT_FEATURE_VARIANCE = 2.0
LOG_RATE_FLOOR = -80.0


@dataclasses.dataclass(frozen=True)
class CountMLPConfig(common.ConditionalDtypes):
    """Every setting of the count-vector MLP (the ``model`` section when ``name = "count_mlp"``).

    Each field is declared with its meaning and allowed values
    (:func:`blackout_jax.settings.setting`).
    """

    name: str = setting("count_mlp", "the network", choices=("count_mlp",))
    width: int = setting(512, "hidden width of the residual blocks", minimum=1)
    num_blocks: int = setting(4, "residual MLP blocks", minimum=1)
    dropout: float = setting(0.0, "dropout rate in the residual blocks", minimum=0.0, below=1.0)
    embedding_dim: int = setting(
        128, "size of the time / library-size / label conditioning vector", minimum=4
    )
    output: str = setting(
        "nb_corrected",
        "nb_corrected: per-feature negative-binomial posterior mean times exp(h); log_rate: exp(h)",
        choices=OUTPUTS,
    )
    dtype: str = common.dtype_setting()
    inference_dtype: str = common.inference_dtype_setting()
    nonlinearity: str = common.nonlinearity_setting()
    num_classes: int = common.num_classes_setting()


def parse_count_mlp_config(model_config: Mapping[str, Any] | CountMLPConfig) -> CountMLPConfig:
    """Validate a ``model`` config section and return it as a :class:`CountMLPConfig`.

    Missing fields take the defaults of :class:`CountMLPConfig`.

    Raises:
      ValueError: an unknown field, or a field of the wrong type or value; the message names
        ``model.<field>`` and the value.
    """
    return settings.build(CountMLPConfig(), settings.plain(model_config), section="model")


def check_example_shape(config: CountMLPConfig, example_shape: Sequence[int]) -> tuple[int]:
    """Check that one example is a vector ``(D,)`` with ``D >= 1``; return it as ``(D,)``.

    Raises:
      ValueError: any other shape, naming it.
    """
    del config  # every vector length is accepted
    shape = tuple(example_shape)
    if len(shape) != 1 or not common.is_int(shape[0]) or shape[0] < 1:
        raise ValueError(
            f"the count MLP takes examples of shape (D,) with an int D >= 1, "
            f"got example shape {example_shape!r}"
        )
    return (int(shape[0]),)


# --------------------------------------------------------------------------------------------
# The negative-binomial prior
# --------------------------------------------------------------------------------------------


def log_nb_posterior_mean(counts: Array, t: Array, log_mean: Array, log_scale: Array) -> Array:
    """``log E[n_0 - n_t | n_t]`` under a negative-binomial ``n_0`` and the death process.

    With ``lambda ~ Gamma(shape r, scale theta)``, ``n_0 | lambda ~ Poisson(lambda)`` (mean
    ``mu = r theta``, variance ``mu (1 + theta)``) and ``n_t ~ Binomial(n_0, p)``, thinning gives
    independent ``n_t | lambda ~ Poisson(lambda p)`` and ``n_0 - n_t | lambda ~
    Poisson(lambda (1 - p))``; the posterior is ``lambda | n_t ~ Gamma(r + n_t, theta / (1 +
    theta p))``, so

        E[n_0 - n_t | n_t] = (1 - p) (r + n_t) theta / (1 + theta p),   r = mu / theta.

    Args:
      counts: ``(B, D)`` states ``n_t``.
      t: ``(B,)`` times (``p = e^{-t}``).
      log_mean, log_scale: ``(D,)`` ``log mu`` and ``log theta``.

    Returns:
      the log of the posterior mean, ``(B, D)`` float32 (``1 - p`` as ``-expm1(-t)``).
    """
    counts = jnp.asarray(counts, jnp.float32)
    t = jnp.asarray(t, jnp.float32)[:, None]
    log_mean = jnp.asarray(log_mean, jnp.float32)
    log_scale = jnp.asarray(log_scale, jnp.float32)
    shape_r = jnp.exp(log_mean - log_scale)
    scale = jnp.exp(log_scale)
    return (
        jnp.log(-jnp.expm1(-t))
        + jnp.log(shape_r + counts)
        + log_scale
        - jnp.log1p(scale * jnp.exp(-t))
    )


def nb_prior_from_moments(
    feature_mean: Any, feature_variance: Any, num_features: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(log mu, log theta)``, each ``(D,)`` float32, from per-feature means and variances.

    ``mu = max(mean, 1e-6)`` and ``theta = max((variance - mean) / mu, 1e-4)`` (the method of
    moments for ``variance = mu (1 + theta)``; under-dispersed and all-zero features get the
    floor, close to a Poisson).

    Raises:
      ValueError: an argument that is not a finite non-negative ``(D,)`` array, naming it and
        the first bad index and value.
    """
    mean = _moment_array("feature_mean", feature_mean, num_features)
    variance = _moment_array("feature_variance", feature_variance, num_features)
    mu = np.maximum(mean, MEAN_FLOOR)
    theta = np.maximum((variance - mean) / mu, SCALE_FLOOR)
    return np.log(mu).astype(np.float32), np.log(theta).astype(np.float32)


def _moment_array(name: str, values: Any, num_features: int) -> np.ndarray:
    array = np.asarray(values, np.float64)
    if array.shape != (num_features,):
        raise ValueError(
            f"{name} must have shape ({num_features},) (one value per feature), got {array.shape}"
        )
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0))
    if bad.size:
        raise ValueError(f"{name} must be finite and >= 0; index {bad[0]} is {array[bad[0]]!r}")
    return array


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class _Block(nnx.Module):
    """Pre-norm residual MLP block with FiLM conditioning:
    ``h + W_2 drop(act(W_1 act(LN(h) (1 + s) + b)))``, ``(s, b) = V c`` (``c`` activated)."""

    def __init__(
        self, width: int, cond_dim: int, *, dropout: float, dtype: jnp.dtype, rngs: nnx.Rngs
    ) -> None:
        self.norm = nnx.LayerNorm(width, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
        self.film = layers.dense(cond_dim, 2 * width, dtype=dtype, rngs=rngs)
        self.dense_0 = layers.dense(width, width, dtype=dtype, rngs=rngs)
        self.dense_1 = layers.dense(width, width, dtype=dtype, rngs=rngs)
        self.dropout = float(dropout)

    def __call__(
        self, h: Array, cond: Array, act: layers.Activation, dropout_key: Array | None
    ) -> Array:
        scale, shift = jnp.split(self.film(cond), 2, axis=-1)
        y = self.norm(h.astype(jnp.float32)).astype(h.dtype)
        y = act(y * (1.0 + scale) + shift)
        y = act(self.dense_0(y))
        y = layers.dropout(y, self.dropout, dropout_key)
        return h + self.dense_1(y)


class CountMLP(nnx.Module):
    """Residual-MLP predictor of ``E[n_0 - n_t | n_t]`` for count vectors.

    Call ``model(counts, t, labels=None, *, train=False, dropout_key=None)``:
      counts: ``(B, D)``, any int or float dtype holding whole numbers.
      t: ``(B,)`` (or a scalar, broadcast) float times ``> 0``.
      labels: ``(B,)`` integer labels in ``0..num_classes`` of a conditional network; ``None`` =
        the null label. Unconditional networks take none.
      train: apply dropout (needs ``dropout_key`` when ``config.dropout > 0``).
    Returns ``yhat``, float32, ``(B, D)``, ``> 0``. Computes in ``config.dtype`` when ``train``
    and in ``config.evaluation_dtype`` otherwise.

    Attributes ``config``, ``max_count`` (``N``: the cap of ``yhat``), ``num_features`` (``D``),
    ``t_end``, ``num_steps``. Construct it with :func:`create_count_mlp`.
    """

    def __init__(
        self,
        config: CountMLPConfig,
        *,
        num_features: int,
        max_count: int,
        t_end: float,
        num_steps: int,
        log_mean: Array,
        log_scale: Array,
        rngs: nnx.Rngs,
    ) -> None:
        self.config = config
        self.num_features = int(num_features)
        self.max_count = int(max_count)
        self.t_end = float(t_end)
        self.num_steps = int(num_steps)
        self.dtype = COMPUTE_DTYPES[config.dtype]
        self.act = layers.ACTIVATIONS[config.nonlinearity]
        dtype, width, cond_dim = self.dtype, config.width, config.embedding_dim

        self.cond_dense_0 = layers.dense(cond_dim + 1, cond_dim, dtype=dtype, rngs=rngs)
        self.cond_dense_1 = layers.dense(cond_dim, cond_dim, dtype=dtype, rngs=rngs)
        self.input_dense = layers.dense(2 * num_features, width, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List(
            [
                _Block(width, cond_dim, dropout=config.dropout, dtype=dtype, rngs=rngs)
                for _ in range(config.num_blocks)
            ]
        )
        self.output_norm = nnx.LayerNorm(
            width, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs
        )
        self.output_dense = nnx.Linear(
            width,
            num_features,
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=jax.nn.initializers.zeros,
            bias_init=jax.nn.initializers.zeros,
            rngs=rngs,
        )
        if config.output == "nb_corrected":
            self.log_mean = nnx.Param(jnp.asarray(log_mean, jnp.float32))
            self.log_scale = nnx.Param(jnp.asarray(log_scale, jnp.float32))
        else:
            self.log_mean = None
            self.log_scale = None
        if config.num_classes:
            self.label_embedding = nnx.Embed(
                config.num_classes + 1, cond_dim, dtype=dtype, rngs=rngs
            )
        else:
            self.label_embedding = None

    # ---- forward -----------------------------------------------------------------------------

    def __call__(
        self,
        counts: Array,
        t: Array,
        labels: Array | None = None,
        *,
        train: bool = False,
        dropout_key: Array | None = None,
    ) -> Array:
        wanted = COMPUTE_DTYPES[self.config.dtype if train else self.config.evaluation_dtype]
        network = common.with_compute_dtype(self, wanted, float32_modules=(nnx.LayerNorm,))
        return network._forward(counts, t, labels, train=train, dropout_key=dropout_key)

    def network_input(self, counts: Array, t: Array) -> Array:
        """``[log1p(n_t), log1p(n_t / p_t)]``, ``(B, 2D)`` float32, for ``t`` of shape ``(B,)``."""
        counts = jnp.asarray(counts, jnp.float32)
        rescaled = counts * jnp.exp(jnp.asarray(t, jnp.float32))[:, None]
        return jnp.concatenate([jnp.log1p(counts), jnp.log1p(rescaled)], axis=-1)

    def conditioning(self, counts: Array, t: Array, labels: Array | None) -> Array:
        """The conditioning vector ``c`` ``(B, embedding_dim)`` in the compute dtype: two dense
        layers on ``[sinusoidal(k(t)), log1p(sum_g n_t / p_t)]``, plus ``E[y]`` when
        conditional."""
        batch = counts.shape[0]
        position = schedule.grid_position(jnp.maximum(t, 1e-12), self.t_end, self.num_steps)
        position = jnp.clip(position, 0.0, float(self.num_steps))
        library = jnp.sum(jnp.asarray(counts, jnp.float32), axis=-1) * jnp.exp(t)
        features = jnp.concatenate(
            [
                layers.sinusoidal_embedding(position, self.config.embedding_dim),
                jnp.log1p(library)[:, None],
            ],
            axis=-1,
        )
        cond = self.cond_dense_1(self.act(self.cond_dense_0(features.astype(self.dtype))))
        label_embedding = self.label_embedding_of(labels, batch)
        if label_embedding is not None:
            cond = cond + label_embedding
        return cond

    def label_embedding_of(self, labels: Array | None, batch: int) -> Array | None:
        """``E[y]`` ``(B, embedding_dim)`` of ``labels`` (``None``: the null label), or ``None``
        for an unconditional network (:func:`blackout_jax.models.common.embed_labels`).

        Raises:
          ValueError: labels for an unconditional network, or of a shape other than (B,).
        """
        return common.embed_labels(self.label_embedding, labels, batch, self.config.null_label)

    def _forward(
        self,
        counts: Array,
        t: Array,
        labels: Array | None,
        *,
        train: bool,
        dropout_key: Array | None,
    ) -> Array:
        counts = jnp.asarray(counts)
        if counts.ndim != 2 or counts.shape[1] != self.num_features:
            raise ValueError(f"counts must have shape (B, {self.num_features}), got {counts.shape}")
        batch = counts.shape[0]
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},) or be a scalar, got {t.shape}")
        block_keys = self._dropout_keys(train, dropout_key)
        counts = counts.astype(jnp.float32)

        cond = self.act(self.conditioning(counts, t, labels))
        h = self.input_dense(self.network_input(counts, t).astype(self.dtype))
        for index, block in enumerate(self.blocks):
            h = block(h, cond, self.act, None if block_keys is None else block_keys[index])
        h = self.act(self.output_norm(h.astype(jnp.float32)).astype(self.dtype))
        log_rate = self.output_dense(h).astype(jnp.float32)
        if self.log_mean is not None:
            log_rate = log_rate + log_nb_posterior_mean(
                counts, t, self.log_mean[...], self.log_scale[...]
            )
        log_rate = jnp.clip(log_rate, LOG_RATE_FLOOR, float(np.log(self.max_count)))
        return jnp.exp(log_rate)

    def _dropout_keys(self, train: bool, dropout_key: Array | None) -> Array | None:
        if not train or self.config.dropout == 0.0:
            return None
        if dropout_key is None:
            raise ValueError(
                f"dropout_key is required when train=True and model.dropout="
                f"{self.config.dropout} > 0"
            )
        return jax.random.split(dropout_key, self.config.num_blocks)


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------


def create_count_mlp(
    model_config: Mapping[str, Any] | CountMLPConfig,
    *,
    example_shape: Sequence[int],
    max_count: int,
    t_end: float,
    num_steps: int,
    seed: int,
    feature_mean: Any = None,
    feature_variance: Any = None,
) -> CountMLP:
    """Build the count MLP described by a ``model`` config section, initialised from ``seed``.

    Args:
      model_config: the ``config.model`` section (ConfigDict or mapping; missing fields take the
        defaults) or a :class:`CountMLPConfig`.
      example_shape: ``(D,)``, the number of features.
      max_count: the largest count ``N``; ``yhat <= N``.
      t_end, num_steps: the process end time and the number ``T`` of observation times, which
        fix the time-embedding position ``k(t)``.
      seed: the same seed (and moments) gives the same parameters.
      feature_mean, feature_variance: ``(D,)`` per-feature mean and variance of the training
        counts, which initialise the negative-binomial prior of ``output = "nb_corrected"``
        (:func:`nb_prior_from_moments`). Both omitted: mean 1 and variance 2 for every feature
        (``mu = 1``, ``theta = 1``). Not used by ``output = "log_rate"``.

    Raises:
      ValueError: naming ``model.<field>`` and the value for unknown or bad fields, the example
        shape for shapes other than ``(D,)``, or the bad argument.
    """
    config = parse_count_mlp_config(model_config)
    common.check_factory_arguments(max_count, t_end, num_steps, seed)
    (num_features,) = check_example_shape(config, example_shape)
    if (feature_mean is None) != (feature_variance is None):
        raise ValueError("feature_mean and feature_variance must be given together or not at all")
    if feature_mean is None:
        feature_mean = np.full((num_features,), DEFAULT_FEATURE_MEAN)
        feature_variance = np.full((num_features,), DEFAULT_FEATURE_VARIANCE)
    log_mean, log_scale = nb_prior_from_moments(feature_mean, feature_variance, num_features)
    with common.initialisation_prng():
        return _initialise(
            jax.random.key(int(seed)),
            jnp.asarray(log_mean),
            jnp.asarray(log_scale),
            config=config,
            num_features=num_features,
            max_count=int(max_count),
            t_end=float(t_end),
            num_steps=int(num_steps),
        )


@functools.partial(
    nnx.jit, static_argnames=("config", "num_features", "max_count", "t_end", "num_steps")
)
def _initialise(
    key: Array,
    log_mean: Array,
    log_scale: Array,
    *,
    config: CountMLPConfig,
    num_features: int,
    max_count: int,
    t_end: float,
    num_steps: int,
) -> CountMLP:
    """All parameters drawn in one compiled program (one compilation per network shape)."""
    return CountMLP(
        config,
        num_features=num_features,
        max_count=max_count,
        t_end=t_end,
        num_steps=num_steps,
        log_mean=log_mean,
        log_scale=log_scale,
        rngs=nnx.Rngs(params=key),
    )
