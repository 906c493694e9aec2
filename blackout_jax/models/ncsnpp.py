"""The NCSN++ network (Song et al., "Score-Based Generative Modeling through Stochastic
Differential Equations", ICLR 2021) as the Blackout Diffusion predictor, in Flax NNX.

The network maps a batch of count images ``n_t`` of shape ``(B, H, W, C)`` and times ``t`` of
shape ``(B,)`` to ``yhat ~ E[n_0 - n_t | n_t]`` (float32, ``>= 0``, shape of ``n_t``):

* **input** (``model.input_transform``): ``"reference"`` feeds ``x = n_t - (N/2) p_t``
  (unscaled, ``p_t = e^{-t}``, ``N = max_count``); ``"scaled"`` feeds ``x = 2 n_t / N - p_t``
  (the same quantity divided by ``N/2``).
* **time** (``model.time_input``): the time enters through the continuous grid position
  ``k(t) = 1 + (T - 1)(1 - logit(p_t)/L)/2`` of the reference schedule
  (:func:`blackout_jax.schedule.grid_position`; ``k(t_k) = k`` on the training grid).
  ``"continuous"`` embeds ``k(t)`` itself (clipped to ``[0, T]``), so any sampling grid works
  without retraining; ``"grid_index"`` embeds the reference's integer label ``round(k(t)) - 1``
  of the nearest grid time (clipped to ``[0, T - 1]``): ``0`` at ``t_1``, ``T - 1`` at
  ``t_T``, exactly what the reference network receives. The positional embedding takes this
  value; the Fourier embedding takes ``u = (k - 1)/(T - 1)``, the position on ``[0, 1]``
  (the same for both inputs on the grid).
* **class label** (``model.num_classes = C > 0``, class-conditional): a learned embedding of
  the label ``y`` in ``0..C`` (``C`` = the "null" label, no class) is added to the time
  embedding, ``temb <- temb + E[y]``; without labels the network sees the null label. With
  ``C = 0`` (default) the network and its parameters are exactly the unconditional ones.
* **output** (``model.output_transform``): ``"softplus"`` gives ``yhat = softplus(h)``
  (reference); ``"bounded_sigmoid"`` gives ``yhat = (N - n_t) sigmoid(h)``, which never exceeds
  the room left.

The architecture (U-Net of residual blocks with a time embedding, attention at chosen
resolutions, FIR resampling, progressive input/output pyramids) follows the published NCSN++;
with :data:`CIFAR10_REFERENCE` (``nf = 128``, ``ch_mult = (1, 2, 2, 2)``, 4 BigGAN blocks per
resolution, attention at 16, residual input pyramid) it has 62,693,251 parameters for
32x32x3 images. Parameters are float32; ``model.dtype = "bfloat16"`` computes convolutions,
dense layers and attention in bfloat16 (GroupNorm and softmax in float32).
``model.inference_dtype`` sets the compute dtype of evaluation mode (``train=False``: sampling,
the likelihood bound, the held-out loss) apart from training; empty means ``model.dtype``.
The parameters are the same either way, so a network trained in float32 samples in bfloat16
from the same checkpoint.
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
from blackout_jax.settings import setting

Array = jax.Array

RESBLOCK_TYPES = ("biggan", "ddpm")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")
EMBEDDING_TYPES = ("positional", "fourier")
TIME_INPUTS = ("continuous", "grid_index")
INPUT_TRANSFORMS = ("reference", "scaled")
OUTPUT_TRANSFORMS = ("softplus", "bounded_sigmoid")
COMPUTE_DTYPES = common.COMPUTE_DTYPES


@dataclasses.dataclass(frozen=True)
class NCSNppConfig(common.ConditionalDtypes):
    """Every setting of the network; the defaults are the CIFAR-10 reference network.

    Each field is declared with its meaning and allowed values
    (:func:`blackout_jax.settings.setting`); it is the ``model`` section of the experiment
    config. The normalisation is always GroupNorm, as in the reference.
    """

    name: str = setting("ncsnpp", "the network", choices=("ncsnpp",))
    nf: int = setting(128, "channels of the first level", minimum=1)
    ch_mult: tuple[int, ...] = setting(
        (1, 2, 2, 2),
        "channel multiplier of each level (H and W must be multiples of 2**(levels - 1))",
        minimum=1,
        check=(bool, "a non-empty tuple of ints >= 1"),
    )
    num_res_blocks: int = setting(4, "residual blocks per level", minimum=1)
    attn_resolutions: tuple[int, ...] = setting(
        (16,), "feature-map heights with self-attention", minimum=1
    )
    resblock_type: str = setting("biggan", "residual block", choices=RESBLOCK_TYPES)
    skip_rescale: bool = setting(True, "scale skip connections by 1/sqrt(2)")
    resamp_with_conv: bool = setting(True, "convolutions in the resampling layers")
    fir: bool = setting(True, "FIR filters in the resampling layers")
    fir_kernel: tuple[float, ...] = setting(
        (1.0, 3.0, 3.0, 1.0),
        "the FIR filter's taps",
        check=(lambda taps: bool(taps) and sum(taps) != 0.0, "non-empty with a non-zero sum"),
    )
    progressive: str = setting("none", "output pyramid", choices=PROGRESSIVE)
    progressive_input: str = setting("residual", "input pyramid", choices=PROGRESSIVE_INPUT)
    progressive_combine: str = setting(
        "sum", "how the input pyramid joins the features", choices=PROGRESSIVE_COMBINE
    )
    dropout: float = setting(0.1, "dropout rate in the residual blocks", minimum=0.0, below=1.0)
    embedding_type: str = setting("positional", "time embedding", choices=EMBEDDING_TYPES)
    fourier_scale: float = setting(16.0, "scale of the Fourier embedding", strictly_above=0.0)
    time_input: str = setting(
        "continuous",
        "the embedded time: continuous grid position k(t) or the nearest grid index",
        choices=TIME_INPUTS,
    )
    init_scale: float = setting(0.0, "scale of the last layers' initialisation", minimum=0.0)
    conv_size: int = setting(
        3, "convolution kernel size", minimum=1, check=(lambda size: size % 2 == 1, "an odd int")
    )
    input_transform: str = setting(
        "reference", "reference: n_t - (N/2) p_t; scaled: 2 n_t / N - p_t", choices=INPUT_TRANSFORMS
    )
    output_transform: str = setting(
        "softplus",
        "softplus(h), or (N - n_t) sigmoid(h) which never exceeds the room left",
        choices=OUTPUT_TRANSFORMS,
    )
    dtype: str = common.dtype_setting()
    inference_dtype: str = common.inference_dtype_setting()
    nonlinearity: str = common.nonlinearity_setting()
    num_classes: int = common.num_classes_setting()

    @property
    def num_levels(self) -> int:
        """Number of resolutions, ``len(ch_mult)``."""
        return len(self.ch_mult)

    @property
    def size_divisor(self) -> int:
        """``2**(len(ch_mult) - 1)``: H and W must be multiples of it."""
        return 2 ** (len(self.ch_mult) - 1)


CIFAR10_REFERENCE = NCSNppConfig()
"""The CIFAR-10 continuous-VP NCSN++ of the reference (62,693,251 parameters at 32x32x3)."""


# --------------------------------------------------------------------------------------------
# Config parsing and validation
# --------------------------------------------------------------------------------------------


def parse_config(model_config: Mapping[str, Any] | NCSNppConfig) -> NCSNppConfig:
    """Validate a ``model`` config section and return it as an :class:`NCSNppConfig`.

    Missing fields take the reference (CIFAR-10) values. Lists are accepted for tuples.

    Raises:
      ValueError: an unknown field, or a field of the wrong type or value; the message names
        ``model.<field>`` and the value.
    """
    return settings.build(CIFAR10_REFERENCE, settings.plain(model_config), section="model")


def check_image_shape(config: NCSNppConfig, image_shape: Sequence[int]) -> tuple[int, int, int]:
    """Check ``image_shape = (H, W, C)`` against the network; return it as a tuple of ints.

    Raises:
      ValueError: not three positive ints; H or W not divisible by ``2**(len(ch_mult) - 1)``
        (naming the image shape and ``model.ch_mult``); an ``attn_resolutions`` entry that
        matches no level height ``H / 2**i``.
    """
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(common.is_int(d) and d >= 1 for d in shape):
        raise ValueError(f"image_shape must be (H, W, C) with positive ints, got {image_shape!r}")
    height, width, channels = (int(d) for d in shape)
    divisor = config.size_divisor
    for axis, size in (("height", height), ("width", width)):
        if size % divisor:
            raise ValueError(
                f"image shape {shape}: {axis} {size} is not divisible by "
                f"2**(len(model.ch_mult) - 1) = {divisor} (model.ch_mult={config.ch_mult}); "
                "choose fewer levels in model.ch_mult or pad the images"
            )
    heights = tuple(height // 2**level for level in range(config.num_levels))
    for resolution in config.attn_resolutions:
        if resolution not in heights:
            raise ValueError(
                f"model.attn_resolutions entry {resolution} matches no level of the network; "
                f"the feature-map heights for image shape {shape} are {heights}"
            )
    return height, width, channels


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class _DownLevel(nnx.Module):
    """Modules of one resolution of the contracting path (a container, no call)."""

    def __init__(self) -> None:
        self.blocks = nnx.List([])
        self.attentions = nnx.List([])
        self.downsample: nnx.Module | None = nnx.data(None)
        self.pyramid_downsample: nnx.Module | None = nnx.data(None)
        self.combine: nnx.Module | None = nnx.data(None)


class _UpLevel(nnx.Module):
    """Modules of one resolution of the expanding path (a container, no call)."""

    def __init__(self) -> None:
        self.blocks = nnx.List([])
        self.attention: nnx.Module | None = nnx.data(None)
        self.pyramid_norm: nnx.Module | None = nnx.data(None)
        self.pyramid_conv: nnx.Module | None = nnx.data(None)
        self.pyramid_upsample: nnx.Module | None = nnx.data(None)
        self.upsample: nnx.Module | None = nnx.data(None)


class NCSNpp(nnx.Module):
    """NCSN++ predictor of ``E[n_0 - n_t | n_t]`` for count images.

    Call ``model(counts, t, labels=None, *, train=False, dropout_key=None)``:
      counts: ``(B, H, W, C)``, any int or float dtype holding whole numbers, with
        ``(H, W, C) = image_shape``.
      t: ``(B,)`` (or a scalar, broadcast) float times ``> 0``.
      labels: ``(B,)`` integer class labels in ``0..num_classes`` (``num_classes`` = null) of a
        conditional network; ``None`` = the null label. Unconditional networks take none.
      train: apply dropout (needs ``dropout_key`` when ``config.dropout > 0``).
    Returns ``yhat``, float32, shape of ``counts``, ``>= 0``. Computes in ``config.dtype``
    when ``train`` and in ``config.evaluation_dtype`` otherwise.

    The module holds parameters only (``nnx.Param``, plus fixed Fourier frequencies when
    ``embedding_type = "fourier"``); no random state. Construct it with :func:`create_model`.
    """

    def __init__(
        self,
        config: NCSNppConfig,
        *,
        image_shape: tuple[int, int, int],
        max_count: int,
        t_end: float,
        num_steps: int,
        rngs: nnx.Rngs,
    ) -> None:
        height, _, channels = check_image_shape(config, image_shape)
        self.config = config
        self.image_shape = tuple(int(d) for d in image_shape)
        self.max_count = int(max_count)
        self.t_end = float(t_end)
        self.num_steps = int(num_steps)
        self.dtype = COMPUTE_DTYPES[config.dtype]
        try:
            self._build(config, height, channels, rngs)
        except layers.ChannelGroupError as error:
            raise ValueError(
                f"model.nf={config.nf} with model.ch_mult={config.ch_mult} and "
                f"model.progressive_combine={config.progressive_combine!r} gives {error}; "
                "use an nf that is a multiple of 4 (of 32 when channel counts exceed 128)"
            ) from error

    # ---- construction ------------------------------------------------------------------------

    def _build(self, cfg: NCSNppConfig, height: int, channels: int, rngs: nnx.Rngs) -> None:
        dtype = self.dtype
        act = layers.ACTIVATIONS[cfg.nonlinearity]
        nf = cfg.nf
        temb_dim = 4 * nf
        self.act = act
        self.num_resnet_blocks = 0

        if cfg.embedding_type == "fourier":
            self.fourier = layers.GaussianFourierProjection(nf, scale=cfg.fourier_scale, rngs=rngs)
            embed_dim = 2 * nf
        else:
            self.fourier = None
            embed_dim = nf
        self.temb_dense_0 = layers.dense(embed_dim, temb_dim, dtype=dtype, rngs=rngs)
        self.temb_dense_1 = layers.dense(temb_dim, temb_dim, dtype=dtype, rngs=rngs)

        def resnet_block(in_ch: int, out_ch: int | None = None, resample: str | None = None):
            self.num_resnet_blocks += 1
            common = dict(
                temb_dim=temb_dim,
                act=act,
                dropout_rate=cfg.dropout,
                skip_rescale=cfg.skip_rescale,
                init_scale=cfg.init_scale,
                conv_size=cfg.conv_size,
                dtype=dtype,
                rngs=rngs,
            )
            if cfg.resblock_type == "biggan":
                return layers.ResnetBlockBigGAN(
                    in_ch,
                    out_ch,
                    resample=resample,
                    fir=cfg.fir,
                    fir_kernel=cfg.fir_kernel,
                    **common,
                )
            return layers.ResnetBlockDDPM(in_ch, out_ch, **common)

        def attention(ch: int) -> layers.AttentionBlock:
            return layers.AttentionBlock(
                ch, skip_rescale=cfg.skip_rescale, init_scale=cfg.init_scale, dtype=dtype, rngs=rngs
            )

        resampling = dict(
            fir=cfg.fir, fir_kernel=cfg.fir_kernel, conv_size=cfg.conv_size, dtype=dtype, rngs=rngs
        )

        # Contracting path.
        self.input_conv = layers.conv(channels, nf, cfg.conv_size, dtype=dtype, rngs=rngs)
        skip_channels = [nf]
        in_ch = nf
        pyramid_ch = channels
        down_levels = []
        for level, mult in enumerate(cfg.ch_mult):
            modules = _DownLevel()
            attend = height // 2**level in cfg.attn_resolutions
            for _ in range(cfg.num_res_blocks):
                out_ch = nf * mult
                modules.blocks.append(resnet_block(in_ch, out_ch))
                in_ch = out_ch
                if attend:
                    modules.attentions.append(attention(in_ch))
                skip_channels.append(in_ch)
            if level != cfg.num_levels - 1:
                if cfg.resblock_type == "ddpm":
                    modules.downsample = layers.Downsample(
                        in_ch, with_conv=cfg.resamp_with_conv, **resampling
                    )
                else:
                    modules.downsample = resnet_block(in_ch, resample="down")
                if cfg.progressive_input == "input_skip":
                    modules.pyramid_downsample = layers.Downsample(
                        pyramid_ch, with_conv=False, **resampling
                    )
                    modules.combine = layers.Combine(
                        pyramid_ch, in_ch, method=cfg.progressive_combine, dtype=dtype, rngs=rngs
                    )
                    if cfg.progressive_combine == "cat":
                        in_ch *= 2
                elif cfg.progressive_input == "residual":
                    modules.pyramid_downsample = layers.Downsample(
                        pyramid_ch, in_ch, with_conv=True, **resampling
                    )
                    pyramid_ch = in_ch
                skip_channels.append(in_ch)
            down_levels.append(modules)
        self.down_levels = nnx.List(down_levels)

        # Bottleneck.
        in_ch = skip_channels[-1]
        self.middle_block_0 = resnet_block(in_ch)
        self.middle_attention = attention(in_ch)
        self.middle_block_1 = resnet_block(in_ch)

        # Expanding path (built from the lowest resolution up; stored in that order).
        up_levels = []
        pyramid_ch = 0
        for level in reversed(range(cfg.num_levels)):
            modules = _UpLevel()
            for _ in range(cfg.num_res_blocks + 1):
                out_ch = nf * cfg.ch_mult[level]
                modules.blocks.append(resnet_block(in_ch + skip_channels.pop(), out_ch))
                in_ch = out_ch
            if height // 2**level in cfg.attn_resolutions:
                modules.attention = attention(in_ch)
            top = level == cfg.num_levels - 1
            if cfg.progressive == "output_skip":
                if not top:
                    modules.pyramid_upsample = layers.Upsample(
                        pyramid_ch, with_conv=False, **resampling
                    )
                modules.pyramid_norm = layers.GroupNorm(in_ch, dtype=dtype, rngs=rngs)
                modules.pyramid_conv = layers.conv(
                    in_ch,
                    channels,
                    cfg.conv_size,
                    init_scale=cfg.init_scale,
                    dtype=dtype,
                    rngs=rngs,
                )
                pyramid_ch = channels
            elif cfg.progressive == "residual":
                if top:
                    modules.pyramid_norm = layers.GroupNorm(in_ch, dtype=dtype, rngs=rngs)
                    modules.pyramid_conv = layers.conv(
                        in_ch, in_ch, cfg.conv_size, dtype=dtype, rngs=rngs
                    )
                else:
                    modules.pyramid_upsample = layers.Upsample(
                        pyramid_ch, in_ch, with_conv=True, **resampling
                    )
                pyramid_ch = in_ch
            if level != 0:
                if cfg.resblock_type == "ddpm":
                    modules.upsample = layers.Upsample(
                        in_ch, with_conv=cfg.resamp_with_conv, **resampling
                    )
                else:
                    modules.upsample = resnet_block(in_ch, resample="up")
            up_levels.append(modules)
        self.up_levels = nnx.List(up_levels)
        if skip_channels:
            raise AssertionError("unused skip connections")  # construction bug guard

        # Head.
        if cfg.progressive != "output_skip":
            self.output_norm = layers.GroupNorm(in_ch, dtype=dtype, rngs=rngs)
            self.output_conv = layers.conv(
                in_ch, channels, cfg.conv_size, init_scale=cfg.init_scale, dtype=dtype, rngs=rngs
            )
        else:
            self.output_norm = None
            self.output_conv = None

        # Class labels, built last so that the other parameters draw what they draw without.
        if cfg.num_classes:
            self.label_embedding = nnx.Embed(cfg.num_classes + 1, temb_dim, dtype=dtype, rngs=rngs)
        else:
            self.label_embedding = None

    # ---- forward -----------------------------------------------------------------------------

    def embedding_position(self, t: Array) -> Array:
        """The value fed to the time embedding for times ``t`` (same shape, float32).

        Positional embedding: the grid position ``k(t)`` (``"continuous"``, clipped to
        ``[0, T]``) or the reference label ``round(k(t)) - 1`` clipped to ``[0, T - 1]``
        (``"grid_index"``; ``t_k`` gets ``k - 1``). Fourier embedding: ``(k - 1) / (T - 1)``
        (``1`` when ``T = 1``).
        """
        t = jnp.maximum(jnp.asarray(t, jnp.float32), 1e-12)
        total = self.num_steps
        position = schedule.grid_position(t, self.t_end, total)
        if self.config.time_input == "grid_index":
            label = jnp.clip(jnp.round(position) - 1.0, 0.0, float(total - 1))
            if self.config.embedding_type == "positional":
                return label
            position = label + 1.0
        else:
            position = jnp.clip(position, 0.0, float(total))
        if self.config.embedding_type == "fourier":
            if total == 1:
                return jnp.ones_like(position)
            return (position - 1.0) / (total - 1.0)
        return position

    def network_input(self, counts: Array, t: Array) -> Array:
        """The array fed to the first convolution, float32, shape of ``counts``.

        ``"reference"``: ``n_t - (N/2) e^{-t}``; ``"scaled"``: ``2 n_t / N - e^{-t}``, with
        ``t`` of shape ``(B,)`` broadcast over the image.
        """
        counts = jnp.asarray(counts, jnp.float32)
        survival = jnp.exp(-jnp.asarray(t, jnp.float32))[:, None, None, None]
        half = 0.5 * self.max_count
        if self.config.input_transform == "scaled":
            return counts / half - survival
        return counts - half * survival

    def _output(self, h: Array, counts: Array) -> Array:
        h = h.astype(jnp.float32)
        if self.config.output_transform == "bounded_sigmoid":
            room = jnp.maximum(self.max_count - counts, 0.0)
            return room * jax.nn.sigmoid(h)
        return jax.nn.softplus(h)

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
        network = common.with_compute_dtype(self, wanted, float32_modules=(nnx.GroupNorm,))
        return network._forward(counts, t, labels, train=train, dropout_key=dropout_key)

    def label_embedding_of(self, labels: Array | None, batch: int) -> Array | None:
        """``E[y]`` ``(B, 4 nf)`` of ``labels`` (``None``: the null label), or ``None`` for an
        unconditional network (:func:`blackout_jax.models.common.embed_labels`).

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
        cfg = self.config
        counts = jnp.asarray(counts)
        if counts.ndim != 4 or tuple(counts.shape[1:]) != self.image_shape:
            raise ValueError(
                f"counts must have shape (B, {', '.join(map(str, self.image_shape))}), "
                f"got {counts.shape}"
            )
        batch = counts.shape[0]
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},) or be a scalar, got {t.shape}")
        block_keys = self._dropout_keys(train, dropout_key)

        def next_key() -> Array | None:
            return None if block_keys is None else next(block_keys)

        counts = counts.astype(jnp.float32)
        x = self.network_input(counts, t)
        act = self.act
        dtype = self.dtype

        # Time embedding.
        position = self.embedding_position(t)
        if self.fourier is not None:
            temb = self.fourier(position)
        else:
            temb = layers.sinusoidal_embedding(position, cfg.nf)
        temb = self.temb_dense_0(temb.astype(dtype))
        temb = self.temb_dense_1(act(temb))
        label_embedding = self.label_embedding_of(labels, batch)
        if label_embedding is not None:
            temb = temb + label_embedding

        # Contracting path.
        x = x.astype(dtype)
        pyramid = x if cfg.progressive_input != "none" else None
        hs = [self.input_conv(x)]
        for modules in self.down_levels:
            for index, block in enumerate(modules.blocks):
                h = block(hs[-1], temb, next_key())
                if len(modules.attentions):
                    h = modules.attentions[index](h)
                hs.append(h)
            if modules.downsample is None:
                continue
            if cfg.resblock_type == "ddpm":
                h = modules.downsample(hs[-1])
            else:
                h = modules.downsample(hs[-1], temb, next_key())
            if cfg.progressive_input == "input_skip":
                pyramid = modules.pyramid_downsample(pyramid)
                h = modules.combine(pyramid, h)
            elif cfg.progressive_input == "residual":
                pyramid = modules.pyramid_downsample(pyramid)
                pyramid = layers.residual_sum(pyramid, h, cfg.skip_rescale)
                h = pyramid
            hs.append(h)

        # Bottleneck.
        h = self.middle_block_0(hs[-1], temb, next_key())
        h = self.middle_attention(h)
        h = self.middle_block_1(h, temb, next_key())

        # Expanding path.
        out_pyramid = None
        for modules in self.up_levels:
            for block in modules.blocks:
                h = block(jnp.concatenate([h, hs.pop()], axis=-1), temb, next_key())
            if modules.attention is not None:
                h = modules.attention(h)
            if cfg.progressive == "output_skip":
                branch = modules.pyramid_conv(act(modules.pyramid_norm(h)))
                if modules.pyramid_upsample is None:
                    out_pyramid = branch
                else:
                    out_pyramid = modules.pyramid_upsample(out_pyramid) + branch
            elif cfg.progressive == "residual":
                if modules.pyramid_upsample is None:
                    out_pyramid = modules.pyramid_conv(act(modules.pyramid_norm(h)))
                else:
                    out_pyramid = modules.pyramid_upsample(out_pyramid)
                    out_pyramid = layers.residual_sum(out_pyramid, h, cfg.skip_rescale)
                    h = out_pyramid
            if modules.upsample is not None:
                if cfg.resblock_type == "ddpm":
                    h = modules.upsample(h)
                else:
                    h = modules.upsample(h, temb, next_key())

        if cfg.progressive == "output_skip":
            h = out_pyramid
        else:
            h = self.output_conv(act(self.output_norm(h)))
        return self._output(h, counts)

    def _dropout_keys(self, train: bool, dropout_key: Array | None):
        if not train or self.config.dropout == 0.0:
            return None
        if dropout_key is None:
            raise ValueError(
                f"dropout_key is required when train=True and model.dropout="
                f"{self.config.dropout} > 0"
            )
        return iter(jax.random.split(dropout_key, self.num_resnet_blocks))


# --------------------------------------------------------------------------------------------
# Factory and helpers
# --------------------------------------------------------------------------------------------


def create_model(
    model_config: Mapping[str, Any] | NCSNppConfig,
    *,
    image_shape: Sequence[int],
    max_count: int,
    t_end: float,
    num_steps: int,
    seed: int,
) -> NCSNpp:
    """Build the network described by a ``model`` config section, initialised from ``seed``.

    Args:
      model_config: the ``config.model`` section (ConfigDict or mapping; missing fields take the
        CIFAR-10 reference values) or an :class:`NCSNppConfig`.
      image_shape: ``(H, W, C)``; H and W multiples of ``2**(len(ch_mult) - 1)``.
      max_count: the largest count ``N`` (input centring and the bounded output).
      t_end: end time of the forward process; with ``num_steps`` (the number ``T`` of
        observation times) it fixes the time-embedding position ``k(t)``.
      num_steps: ``T``.
      seed: the same seed gives the same parameters.

    Raises:
      ValueError: naming ``model.<field>`` and the value for unknown or bad fields, the image
        shape for shapes the network cannot take, or the bad argument.
    """
    config = parse_config(model_config)
    common.check_factory_arguments(max_count, t_end, num_steps, seed)
    shape = check_image_shape(config, image_shape)
    with common.initialisation_prng():
        return _initialise(
            jax.random.key(int(seed)),
            config=config,
            image_shape=shape,
            max_count=int(max_count),
            t_end=float(t_end),
            num_steps=int(num_steps),
        )


@functools.partial(
    nnx.jit, static_argnames=("config", "image_shape", "max_count", "t_end", "num_steps")
)
def _initialise(
    key: Array,
    *,
    config: NCSNppConfig,
    image_shape: tuple[int, int, int],
    max_count: int,
    t_end: float,
    num_steps: int,
) -> NCSNpp:
    """All parameters drawn in one compiled program (one compilation per network shape)."""
    return NCSNpp(
        config,
        image_shape=image_shape,
        max_count=max_count,
        t_end=t_end,
        num_steps=num_steps,
        rngs=nnx.Rngs(params=key),
    )


def count_parameters(tree: Any) -> int:
    """Number of trainable scalars (``nnx.Param`` entries) in a module or state.

    Works on abstract modules from ``nnx.eval_shape`` (only shapes are read).
    """
    state = nnx.state(tree, nnx.Param) if isinstance(tree, nnx.Module) else tree
    leaves = jax.tree.leaves(state)
    return int(sum(int(np.prod(leaf.shape)) for leaf in leaves))


def abstract_network(
    model_config: Mapping[str, Any] | NCSNppConfig,
    *,
    image_shape: Sequence[int],
    max_count: int = 255,
    t_end: float = 15.0,
    num_steps: int = 1000,
) -> NCSNpp:
    """The network with shapes only (``nnx.eval_shape``): no parameters are allocated."""
    return nnx.eval_shape(
        lambda: create_model(
            model_config,
            image_shape=image_shape,
            max_count=max_count,
            t_end=t_end,
            num_steps=num_steps,
            seed=0,
        )
    )
