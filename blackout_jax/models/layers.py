"""Building blocks of the NCSN++ network (Song et al., ICLR 2021), in Flax NNX, NHWC layout.

* Initialisation as in DDPM / NCSN++: weights ``variance_scaling(scale, "fan_avg", "uniform")``
  (:func:`default_init`), biases zero; ``scale = 0`` is replaced by ``1e-10`` so that a layer
  "initialised at zero" starts numerically at zero but still passes gradients.
* FIR resampling (StyleGAN2): :func:`upfirdn2d` upsamples by zero insertion, pads, convolves
  with a FIR kernel (separable kernels as two 1-D passes) and keeps every ``down``-th sample.
  :func:`upsample_2d`, :func:`downsample_2d` and the fused convolutions
  :func:`upsample_conv_2d`, :func:`conv_downsample_2d` are built on it.
* Blocks: :class:`ResnetBlockBigGAN`, :class:`ResnetBlockDDPM`, :class:`AttentionBlock`,
  :class:`Upsample`, :class:`Downsample`, :class:`Combine`, and the time embeddings
  :func:`sinusoidal_embedding` and :class:`GaussianFourierProjection`.

Every block takes a compute ``dtype`` (``float32`` or ``bfloat16``) and keeps its parameters in
float32; GroupNorm statistics and the attention softmax are computed in float32. Dropout takes
an explicit PRNG key (no random state is stored in the modules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array
Activation = Callable[[Array], Array]

SKIP_RESCALE = float(1.0 / np.sqrt(2.0))

ACTIVATIONS: dict[str, Activation] = {
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "lrelu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.2),
}


# --------------------------------------------------------------------------------------------
# Initialisation, normalisation, dropout
# --------------------------------------------------------------------------------------------


def default_init(scale: float = 1.0) -> jax.nn.initializers.Initializer:
    """DDPM initialiser: ``variance_scaling(scale, "fan_avg", "uniform")``, ``0 -> 1e-10``.

    For a kernel of shape ``(..., fan_in_channels, fan_out_channels)`` the fans include the
    receptive field, so weights are uniform on ``±sqrt(3 scale / ((fan_in + fan_out) / 2))``.
    """
    scale = 1e-10 if scale == 0 else float(scale)
    return jax.nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


class ChannelGroupError(ValueError):
    """A GroupNorm cannot split its channels into ``min(C // 4, 32)`` equal groups."""


def group_count(channels: int) -> int:
    """Number of GroupNorm groups used for ``channels`` channels: ``min(channels // 4, 32)``.

    Raises:
      ChannelGroupError: (a ``ValueError``) when that count is zero or does not divide
        ``channels``.
    """
    groups = min(channels // 4, 32)
    if groups < 1 or channels % groups:
        raise ChannelGroupError(
            f"a GroupNorm over {channels} channels needs min({channels} // 4, 32) = {groups} "
            "groups that divide the channel count"
        )
    return groups


class GroupNorm(nnx.Module):
    """GroupNorm with ``min(C // 4, 32)`` groups, epsilon 1e-6, computed in float32.

    Input ``(B, H, W, C)`` of any float dtype; output has the compute ``dtype``.
    """

    def __init__(self, channels: int, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        self.norm = nnx.GroupNorm(
            channels,
            num_groups=group_count(channels),
            epsilon=1e-6,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        return self.norm(x.astype(jnp.float32)).astype(self.dtype)


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout: zero each entry with probability ``rate``, scale the rest by 1/(1-rate).

    ``key = None`` (evaluation) or ``rate = 0`` returns ``x`` unchanged.
    """
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


# --------------------------------------------------------------------------------------------
# Convolutions and dense layers with the DDPM initialisation
# --------------------------------------------------------------------------------------------


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
    init_scale: float = 1.0,
    strides: int = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
) -> nnx.Conv:
    """A square convolution with bias, DDPM-initialised; float32 parameters, ``dtype`` compute."""
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=strides,
        padding=padding,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=default_init(init_scale),
        bias_init=jax.nn.initializers.zeros,
        rngs=rngs,
    )


def dense(
    in_features: int,
    out_features: int,
    *,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
    init_scale: float = 1.0,
) -> nnx.Linear:
    """A dense layer over the last axis (also the 1x1 "network-in-network" layer)."""
    return nnx.Linear(
        in_features,
        out_features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=default_init(init_scale),
        bias_init=jax.nn.initializers.zeros,
        rngs=rngs,
    )


# --------------------------------------------------------------------------------------------
# FIR resampling
# --------------------------------------------------------------------------------------------


def fir_kernel_1d(kernel: Sequence[float]) -> np.ndarray:
    """1-D FIR kernel normalised to unit sum (float64 NumPy array).

    Raises:
      ValueError: not a non-empty 1-D sequence, or a sum that is zero or not finite.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 1 or k.size == 0:
        raise ValueError(f"FIR kernel must be a non-empty 1-D sequence, got {kernel!r}")
    total = k.sum()
    if not np.isfinite(total) or total == 0:
        raise ValueError(f"FIR kernel must have a finite non-zero sum, got {kernel!r}")
    return k / total


def _upfirdn_along_axis(
    x: Array, kernel: np.ndarray, axis: int, up: int, down: int, pad: tuple[int, int]
) -> Array:
    """:func:`upfirdn2d` along one axis with a 1-D kernel, as shifted slices (no convolution)."""
    if up > 1:
        x = jnp.expand_dims(x, axis + 1)
        x = jnp.concatenate([x] + [jnp.zeros_like(x)] * (up - 1), axis=axis + 1)
        shape = x.shape
        x = x.reshape(shape[:axis] + (shape[axis] * up,) + shape[axis + 2 :])
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (pad[0], pad[1], 0)
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
    taps = kernel.shape[0]
    length = x.shape[axis] - taps + 1
    out = None
    for offset in range(taps):
        weight = float(kernel[taps - 1 - offset])  # true convolution: flipped taps
        if weight == 0.0:
            continue
        term = jax.lax.slice_in_dim(x, offset, offset + length, axis=axis) * weight
        out = term if out is None else out + term
    if out is None:
        out = jnp.zeros(x.shape[:axis] + (length,) + x.shape[axis + 1 :], x.dtype)
    if down > 1:
        out = jax.lax.slice_in_dim(out, 0, length, stride=down, axis=axis)
    return out


def upfirdn2d(
    x: Array,
    kernel: np.ndarray,
    *,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int] = (0, 0),
) -> Array:
    """Upsample, FIR-filter and downsample a batch of images ``(B, H, W, C)``.

    Along each spatial axis: insert ``up - 1`` zeros after every sample (length ``H up``), pad
    ``pad[0]`` zeros before and ``pad[1]`` after (negative values crop), convolve ("valid") with
    the kernel (a true convolution, i.e. the flipped kernel is correlated), and keep every
    ``down``-th sample starting with the first. Each channel is filtered on its own.
    Output length ``(H up + pad[0] + pad[1] - kh) // down + 1``; dtype of ``x``.

    ``kernel`` is either 1-D, meaning the separable 2-D kernel ``outer(kernel, kernel)``
    (computed as two 1-D passes of shifted slices, cheap on every backend), or 2-D (a
    depthwise convolution).
    """
    kernel = np.asarray(kernel)
    if kernel.ndim == 1:
        for axis in (1, 2):
            x = _upfirdn_along_axis(x, kernel, axis, up, down, pad)
        return x
    channels = x.shape[-1]
    flipped = np.ascontiguousarray(kernel[::-1, ::-1])
    weights = jnp.asarray(np.tile(flipped[:, :, None, None], (1, 1, 1, channels)), x.dtype)
    # Zero insertion is an lhs dilation that leaves out the trailing up - 1 zeros; add them to
    # the trailing padding.
    padding = [(pad[0], pad[1] + up - 1), (pad[0], pad[1] + up - 1)]
    return jax.lax.conv_general_dilated(
        x,
        weights,
        window_strides=(down, down),
        padding=padding,
        lhs_dilation=(up, up),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


def upsample_2d(x: Array, fir_kernel: Sequence[float], factor: int = 2) -> Array:
    """FIR upsampling by ``factor``: ``(B, H, W, C) -> (B, H factor, W factor, C)``.

    The separable kernel ``outer(k, k)`` is normalised and multiplied by ``factor**2`` so that
    a constant image stays constant away from the borders.
    """
    k = fir_kernel_1d(fir_kernel) * factor
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Array, fir_kernel: Sequence[float], factor: int = 2) -> Array:
    """FIR downsampling by ``factor``: ``(B, H, W, C) -> (B, H // factor, W // factor, C)``."""
    k = fir_kernel_1d(fir_kernel)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(
    x: Array, weight: Array, fir_kernel: Sequence[float], factor: int = 2
) -> Array:
    """Fused upsampling and convolution: ``(B, H, W, Cin) -> (B, H factor, W factor, Cout)``.

    Zero insertion and a full correlation with the HWIO ``weight`` (a transposed convolution,
    output length ``(H - 1) factor + K``), then the FIR filter (gain ``factor**2``) that brings
    the length to ``H factor``. Away from the borders this equals :func:`upsample_2d` followed
    by a ``"SAME"`` convolution with ``weight``; the padding is applied only once.
    """
    size = weight.shape[0]
    k = fir_kernel_1d(fir_kernel) * factor
    p = (k.shape[0] - factor) - (size - 1)
    y = jax.lax.conv_general_dilated(
        x,
        weight,
        window_strides=(1, 1),
        padding=[(size - 1, size - 1), (size - 1, size - 1)],
        lhs_dilation=(factor, factor),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return upfirdn2d(y, k, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(
    x: Array, weight: Array, fir_kernel: Sequence[float], factor: int = 2
) -> Array:
    """Fused FIR filtering and strided convolution: ``(B, H, W, Cin) -> (B, H/f, W/f, Cout)``.

    The FIR filter (padding applied once) followed by a "valid" convolution with the HWIO
    ``weight`` and stride ``factor``. Away from the borders this equals a ``"SAME"``
    convolution followed by :func:`downsample_2d`.
    """
    size = weight.shape[0]
    k = fir_kernel_1d(fir_kernel)
    p = (k.shape[0] - factor) + (size - 1)
    y = upfirdn2d(x, k, pad=((p + 1) // 2, p // 2))
    return jax.lax.conv_general_dilated(
        y,
        weight,
        window_strides=(factor, factor),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling: every pixel repeated ``factor x factor`` times."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
    """Average pooling over ``factor x factor`` blocks (H and W divisible by ``factor``)."""
    b, h, w, c = x.shape
    blocks = x.reshape(b, h // factor, factor, w // factor, factor, c)
    return blocks.mean(axis=(2, 4))


class FIRConv2d(nnx.Module):
    """Convolution fused with FIR up- or downsampling by 2 (bias, DDPM initialisation).

    ``(B, H, W, Cin) -> (B, 2H, 2W, Cout)`` for ``mode="up"``, ``(B, H/2, W/2, Cout)`` for
    ``mode="down"``. Kernel HWIO float32, computed in ``dtype``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        mode: str,
        fir_kernel: Sequence[float],
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ) -> None:
        if mode not in ("up", "down"):
            raise ValueError(f"mode must be 'up' or 'down', got {mode!r}")
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.kernel = nnx.Param(default_init()(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))
        self.mode = mode
        self.fir_kernel = tuple(float(v) for v in fir_kernel)
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        weight = self.kernel[...].astype(self.dtype)
        if self.mode == "up":
            y = upsample_conv_2d(x, weight, self.fir_kernel)
        else:
            y = conv_downsample_2d(x, weight, self.fir_kernel)
        return y + self.bias[...].astype(self.dtype)


class _Resample(nnx.Module):
    """What :class:`Upsample` and :class:`Downsample` share: the optional convolution.

    ``with_conv and fir``: the fused FIR convolution (:class:`FIRConv2d` in ``mode``);
    ``with_conv`` alone: the plain convolution of :meth:`_plain_conv`; else none, and then the
    channel count cannot change.
    """

    mode: str

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        with_conv: bool,
        fir: bool,
        fir_kernel: Sequence[float],
        conv_size: int,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ) -> None:
        out_channels = out_channels or in_channels
        if not with_conv and out_channels != in_channels:
            raise ValueError(
                f"{type(self).__name__} without a convolution cannot change the channel count"
            )
        self.fir = fir
        self.fir_kernel = tuple(float(v) for v in fir_kernel)
        self.dtype = dtype
        self.conv: nnx.Module | None = nnx.data(None)
        if with_conv and fir:
            self.conv = FIRConv2d(
                in_channels,
                out_channels,
                conv_size,
                mode=self.mode,
                fir_kernel=fir_kernel,
                dtype=dtype,
                rngs=rngs,
            )
        elif with_conv:
            self.conv = self._plain_conv(in_channels, out_channels, conv_size, dtype, rngs)

    def _plain_conv(
        self, in_channels: int, out_channels: int, size: int, dtype: jnp.dtype, rngs: nnx.Rngs
    ) -> nnx.Module:
        raise NotImplementedError


class Upsample(_Resample):
    """Upsampling by 2, ``(B, H, W, Cin) -> (B, 2H, 2W, Cout)``.

    ``fir=False``: nearest neighbour, then an optional ``K x K`` convolution.
    ``fir=True``: FIR upsampling, or the fused FIR convolution when ``with_conv``.
    ``Cout = Cin`` without a convolution.
    """

    mode = "up"

    def _plain_conv(
        self, in_channels: int, out_channels: int, size: int, dtype: jnp.dtype, rngs: nnx.Rngs
    ) -> nnx.Module:
        return conv(in_channels, out_channels, size, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        if self.fir:
            if self.conv is not None:
                return self.conv(x)
            return upsample_2d(x, self.fir_kernel)
        h = naive_upsample_2d(x)
        return self.conv(h) if self.conv is not None else h


class Downsample(_Resample):
    """Downsampling by 2, ``(B, H, W, Cin) -> (B, H/2, W/2, Cout)``.

    ``fir=False``: a ``K x K`` convolution with stride 2 (padding 0 before, 1 after), or 2x2
    average pooling. ``fir=True``: FIR downsampling, or the fused FIR convolution.
    """

    mode = "down"

    def _plain_conv(
        self, in_channels: int, out_channels: int, size: int, dtype: jnp.dtype, rngs: nnx.Rngs
    ) -> nnx.Module:
        # Total padding K - 2 gives H/2 outputs; the extra row goes after (as with 'SAME').
        total = size - 2
        low = total // 2 if total >= 0 else 0
        high = total - low
        padding = [(low, high), (low, high)]
        return conv(
            in_channels, out_channels, size, strides=2, padding=padding, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        if self.conv is not None:
            return self.conv(x)
        if self.fir:
            return downsample_2d(x, self.fir_kernel)
        return naive_downsample_2d(x)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


def residual_sum(x: Array, h: Array, skip_rescale: bool) -> Array:
    """``(x + h) / sqrt(2)`` with ``skip_rescale``, else ``x + h``."""
    return (x + h) * SKIP_RESCALE if skip_rescale else x + h


class _ResidualBlock(nnx.Module):
    """What both residual blocks share: after ``h = Conv_0(...)``, the time embedding, the second
    convolution and the skip path (attributes ``temb_proj``, ``norm_1``, ``conv_1``, ``skip``,
    ``act``, ``dropout_rate``, ``skip_rescale`` set by the block)."""

    def _second_half(
        self, x: Array, h: Array, temb: Array | None, dropout_key: Array | None
    ) -> Array:
        """``Conv_1(drop(act(GN_1(h + Dense(act(temb))))))`` added to the skip path of ``x``."""
        if self.temb_proj is not None and temb is not None:
            h = h + self.temb_proj(self.act(temb))[:, None, None, :]
        h = self.act(self.norm_1(h))
        h = dropout(h, self.dropout_rate, dropout_key)
        h = self.conv_1(h)
        if self.skip is not None:
            x = self.skip(x)
        return residual_sum(x, h, self.skip_rescale)


class ResnetBlockBigGAN(_ResidualBlock):
    """BigGAN-type residual block with optional up/downsampling, conditioned on ``temb``.

    ``h = Conv_1(drop(act(GN_1(Conv_0(resample(act(GN_0(x)))) + Dense(act(temb))))))``,
    skip ``x -> resample(x)``, then a 1x1 convolution when the channels change or the block
    resamples; output ``(x + h) / sqrt(2)`` with ``skip_rescale`` (else ``x + h``).
    ``Conv_1`` is initialised with ``init_scale``. Shapes ``(B, H, W, Cin) -> (B, H', W',
    Cout)`` with ``H' = 2H`` (up), ``H/2`` (down) or ``H``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_dim: int | None,
        act: Activation,
        dropout_rate: float,
        resample: str | None = None,
        fir: bool,
        fir_kernel: Sequence[float],
        skip_rescale: bool,
        init_scale: float,
        conv_size: int,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ) -> None:
        out_channels = out_channels or in_channels
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.norm_0 = GroupNorm(in_channels, dtype=dtype, rngs=rngs)
        self.conv_0 = conv(in_channels, out_channels, conv_size, dtype=dtype, rngs=rngs)
        self.temb_proj = dense(temb_dim, out_channels, dtype=dtype, rngs=rngs) if temb_dim else None
        self.norm_1 = GroupNorm(out_channels, dtype=dtype, rngs=rngs)
        self.conv_1 = conv(
            out_channels, out_channels, conv_size, init_scale=init_scale, dtype=dtype, rngs=rngs
        )
        self.skip = nnx.data(None)
        if in_channels != out_channels or resample is not None:
            self.skip = conv(in_channels, out_channels, 1, dtype=dtype, rngs=rngs)
        self.act = act
        self.dropout_rate = float(dropout_rate)
        self.resample = resample
        self.fir = fir
        self.fir_kernel = tuple(float(v) for v in fir_kernel)
        self.skip_rescale = skip_rescale
        self.dtype = dtype

    def _resample(self, x: Array) -> Array:
        if self.resample == "up":
            return upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
        if self.resample == "down":
            return downsample_2d(x, self.fir_kernel) if self.fir else naive_downsample_2d(x)
        return x

    def __call__(
        self, x: Array, temb: Array | None = None, dropout_key: Array | None = None
    ) -> Array:
        x = x.astype(self.dtype)
        h = self.act(self.norm_0(x))
        h = self._resample(h)
        x = self._resample(x)
        return self._second_half(x, self.conv_0(h), temb, dropout_key)


class ResnetBlockDDPM(_ResidualBlock):
    """DDPM-type residual block (no resampling), conditioned on ``temb``.

    ``h = Conv_1(drop(act(GN_1(Conv_0(act(GN_0(x))) + Dense(act(temb))))))``; the skip path is
    a 1x1 layer (initialised with scale 0.1) when the channels change; output
    ``(x + h) / sqrt(2)`` with ``skip_rescale`` (else ``x + h``). ``(B, H, W, Cin) -> (B, H, W,
    Cout)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_dim: int | None,
        act: Activation,
        dropout_rate: float,
        skip_rescale: bool,
        init_scale: float,
        conv_size: int,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ) -> None:
        out_channels = out_channels or in_channels
        self.norm_0 = GroupNorm(in_channels, dtype=dtype, rngs=rngs)
        self.conv_0 = conv(in_channels, out_channels, conv_size, dtype=dtype, rngs=rngs)
        self.temb_proj = dense(temb_dim, out_channels, dtype=dtype, rngs=rngs) if temb_dim else None
        self.norm_1 = GroupNorm(out_channels, dtype=dtype, rngs=rngs)
        self.conv_1 = conv(
            out_channels, out_channels, conv_size, init_scale=init_scale, dtype=dtype, rngs=rngs
        )
        self.skip = nnx.data(None)
        if in_channels != out_channels:
            self.skip = dense(in_channels, out_channels, init_scale=0.1, dtype=dtype, rngs=rngs)
        self.act = act
        self.dropout_rate = float(dropout_rate)
        self.skip_rescale = skip_rescale
        self.dtype = dtype

    def __call__(
        self, x: Array, temb: Array | None = None, dropout_key: Array | None = None
    ) -> Array:
        x = x.astype(self.dtype)
        return self._second_half(x, self.conv_0(self.act(self.norm_0(x))), temb, dropout_key)


class AttentionBlock(nnx.Module):
    """Single-head self-attention over all ``H W`` positions, with a residual connection.

    ``q, k, v = NIN(GN(x))`` (1x1 layers, init scale 0.1), ``a = softmax(q k^T / sqrt(C))``
    over the positions (float32), ``h = NIN_out(a v)`` (init scale ``init_scale``); output
    ``(x + h) / sqrt(2)`` with ``skip_rescale`` (else ``x + h``). Shape preserved.
    """

    def __init__(
        self,
        channels: int,
        *,
        skip_rescale: bool,
        init_scale: float,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ) -> None:
        self.norm = GroupNorm(channels, dtype=dtype, rngs=rngs)
        self.query = dense(channels, channels, init_scale=0.1, dtype=dtype, rngs=rngs)
        self.key = dense(channels, channels, init_scale=0.1, dtype=dtype, rngs=rngs)
        self.value = dense(channels, channels, init_scale=0.1, dtype=dtype, rngs=rngs)
        self.output = dense(channels, channels, init_scale=init_scale, dtype=dtype, rngs=rngs)
        self.skip_rescale = skip_rescale
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        b, height, width, channels = x.shape
        h = self.norm(x)
        q = self.query(h).reshape(b, height * width, channels)
        k = self.key(h).reshape(b, height * width, channels)
        v = self.value(h).reshape(b, height * width, channels)
        logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits * (channels**-0.5), axis=-1).astype(self.dtype)
        h = jnp.einsum("bij,bjc->bic", weights, v).reshape(b, height, width, channels)
        h = self.output(h)
        return residual_sum(x, h, self.skip_rescale)


class Combine(nnx.Module):
    """Merge a pyramid input ``x`` into features ``y``: 1x1 layer on ``x``, then sum or concat.

    ``method="sum"``: ``NIN(x) + y`` (``Cy`` channels); ``"cat"``: ``concat(NIN(x), y)``
    (``2 Cy`` channels).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, method: str, dtype: jnp.dtype, rngs: nnx.Rngs
    ) -> None:
        if method not in ("sum", "cat"):
            raise ValueError(f"combine method must be 'sum' or 'cat', got {method!r}")
        self.proj = conv(in_channels, out_channels, 1, dtype=dtype, rngs=rngs)
        self.method = method

    def __call__(self, x: Array, y: Array) -> Array:
        h = self.proj(x)
        if self.method == "cat":
            return jnp.concatenate([h, y.astype(h.dtype)], axis=-1)
        return h + y.astype(h.dtype)


# --------------------------------------------------------------------------------------------
# Time embeddings
# --------------------------------------------------------------------------------------------


def sinusoidal_embedding(positions: Array, dim: int, max_positions: float = 10_000.0) -> Array:
    """Transformer/DDPM sinusoidal embedding of real positions, ``(B,) -> (B, dim)`` float32.

    With ``half = dim // 2`` and frequencies ``w_i = max_positions^(-i / (half - 1))``:
    ``[sin(x w_0), ..., sin(x w_{half-1}), cos(x w_0), ..., cos(x w_{half-1})]``, zero-padded
    by one column when ``dim`` is odd.
    """
    if dim < 4:
        raise ValueError(f"the positional embedding needs dim >= 4, got {dim}")
    half = dim // 2
    exponent = np.log(max_positions) / (half - 1)
    frequencies = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -exponent)
    angles = jnp.asarray(positions, jnp.float32)[:, None] * frequencies[None, :]
    embedding = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
    if dim % 2:
        embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
    return embedding


class FixedFeatures(nnx.Variable):
    """A constant drawn at initialisation and never trained (kept out of ``nnx.Param``)."""


class GaussianFourierProjection(nnx.Module):
    """Random Fourier features ``[sin(2 pi x w), cos(2 pi x w)]``, ``(B,) -> (B, 2 size)``.

    ``w ~ Normal(0, scale^2)`` of shape ``(size,)``, drawn from the seed and kept fixed (a
    :class:`FixedFeatures` variable, not a parameter). Output float32.
    """

    def __init__(self, size: int, *, scale: float, rngs: nnx.Rngs) -> None:
        self.frequencies = FixedFeatures(
            scale * jax.random.normal(rngs.params(), (size,), jnp.float32)
        )

    def __call__(self, x: Array) -> Array:
        frequencies = jax.lax.stop_gradient(self.frequencies[...])
        angles = jnp.asarray(x, jnp.float32)[:, None] * frequencies[None, :] * (2.0 * np.pi)
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
