"""Tests of the NCSN++ building blocks: FIR resampling against direct NumPy computations,
initialisation, GroupNorm groups, attention, residual blocks, time embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from blackout_jax.models import layers

DIMS = ("NHWC", "HWIO", "NHWC")


def numpy_upfirdn2d(x, kernel, up, down, pad):
    """Direct definition: zero insertion, padding (negative crops), true convolution, decimation."""
    batch, height, width, channels = x.shape
    z = np.zeros((batch, height * up, width * up, channels))
    z[:, ::up, ::up, :] = x
    p0, p1 = pad
    z = np.pad(z, ((0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0)), (0, 0)))
    z = z[:, max(-p0, 0) : z.shape[1] - max(-p1, 0), max(-p0, 0) : z.shape[2] - max(-p1, 0)]
    kh, kw = kernel.shape
    out_h, out_w = z.shape[1] - kh + 1, z.shape[2] - kw + 1
    out = np.zeros((batch, out_h, out_w, channels))
    for i in range(out_h):
        for j in range(out_w):
            for a in range(kh):
                for b in range(kw):
                    out[:, i, j, :] += z[:, i + a, j + b, :] * kernel[kh - 1 - a, kw - 1 - b]
    return out[:, ::down, ::down, :]


def numpy_fir_1d(x, axis, *, mode):
    """FIR resampling by 2 along one axis with k = (1, 3, 3, 1), written out per output sample.

    Downsampling: y[i] = sum_a k[a] x[2i + a - 1] / 8 (the filter centred on the 2x2 block).
    Upsampling:   y[o] = sum_a (2 k[a] / 8) z[o + a - 2] with z[2i] = x[i], z[odd] = 0.
    Samples outside the image are zero.
    """
    k = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0
    x = np.moveaxis(x, axis, 0)
    n = x.shape[0]
    if mode == "down":
        out = np.zeros((n // 2,) + x.shape[1:])
        for i in range(n // 2):
            for a in range(4):
                m = 2 * i + a - 1
                if 0 <= m < n:
                    out[i] += k[a] * x[m]
    else:
        out = np.zeros((2 * n,) + x.shape[1:])
        for o in range(2 * n):
            for a in range(4):
                m = o + a - 2
                if m % 2 == 0 and 0 <= m // 2 < n:
                    out[o] += 2.0 * k[a] * x[m // 2]
    return np.moveaxis(out, 0, axis)


@pytest.fixture
def images(numpy_rng):
    return numpy_rng.normal(size=(2, 6, 8, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "up, down, pad",
    [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (0, -1)), (3, 1, (1, 1))],
)
def test_upfirdn2d_matches_numpy_definition(numpy_rng, images, up, down, pad):
    # Asymmetric kernels check the flip; a 1-D kernel means the separable outer(k, k).
    kernel_2d = numpy_rng.normal(size=(3, 3)).astype(np.float32)
    kernel_1d = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    for kernel, dense_kernel in (
        (kernel_2d, kernel_2d),
        (kernel_1d, np.outer(kernel_1d, kernel_1d)),
    ):
        got = layers.upfirdn2d(jnp.asarray(images), kernel, up=up, down=down, pad=pad)
        want = numpy_upfirdn2d(images, dense_kernel, up, down, pad)
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_fir_downsample_matches_direct_separable_sum(images):
    got = np.asarray(layers.downsample_2d(jnp.asarray(images), (1, 3, 3, 1)))
    want = numpy_fir_1d(numpy_fir_1d(images, 1, mode="down"), 2, mode="down")
    assert got.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fir_upsample_matches_direct_separable_sum(images):
    got = np.asarray(layers.upsample_2d(jnp.asarray(images), (1, 3, 3, 1)))
    want = numpy_fir_1d(numpy_fir_1d(images, 1, mode="up"), 2, mode="up")
    assert got.shape == (2, 12, 16, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_box_kernel_is_nearest_upsampling_and_average_pooling(images):
    x = jnp.asarray(images)
    np.testing.assert_allclose(
        layers.upsample_2d(x, (1, 1)), np.repeat(np.repeat(images, 2, 1), 2, 2), atol=1e-6
    )
    pooled = images.reshape(2, 3, 2, 4, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(layers.downsample_2d(x, (1, 1)), pooled, atol=1e-6)
    np.testing.assert_allclose(
        layers.naive_upsample_2d(x), np.repeat(np.repeat(images, 2, 1), 2, 2)
    )
    np.testing.assert_allclose(layers.naive_downsample_2d(x), pooled, atol=1e-6)


def test_fir_resampling_keeps_constant_images_constant_inside():
    x = jnp.full((1, 8, 8, 1), 3.0)
    up = np.asarray(layers.upsample_2d(x, (1, 3, 3, 1)))
    down = np.asarray(layers.downsample_2d(x, (1, 3, 3, 1)))
    np.testing.assert_allclose(up[:, 2:-2, 2:-2], 3.0, rtol=1e-6)
    np.testing.assert_allclose(down[:, 1:-1, 1:-1], 3.0, rtol=1e-6)


def test_fused_convolutions_equal_separate_steps_away_from_borders(numpy_rng, images):
    x = jnp.asarray(images)
    weight = jnp.asarray(numpy_rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    fir = (1, 3, 3, 1)

    fused_up = layers.upsample_conv_2d(x, weight, fir)
    separate_up = jax.lax.conv_general_dilated(
        layers.upsample_2d(x, fir), weight, (1, 1), "SAME", dimension_numbers=DIMS
    )
    assert fused_up.shape == (2, 12, 16, 4)
    np.testing.assert_allclose(fused_up[:, 2:-2, 2:-2], separate_up[:, 2:-2, 2:-2], atol=1e-4)

    fused_down = layers.conv_downsample_2d(x, weight, fir)
    separate_down = layers.downsample_2d(
        jax.lax.conv_general_dilated(x, weight, (1, 1), "SAME", dimension_numbers=DIMS), fir
    )
    assert fused_down.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(fused_down[:, 1:-1, 1:-1], separate_down[:, 1:-1, 1:-1], atol=1e-4)


@pytest.mark.parametrize("conv_size", [1, 3, 5])
def test_resampling_modules_halve_and_double_for_every_setting(conv_size):
    x = jnp.ones((1, 8, 4, 3))
    rngs = nnx.Rngs(0)
    for fir in (False, True):
        for with_conv in (False, True):
            out_ch = 5 if with_conv else 3
            kwargs = dict(
                with_conv=with_conv,
                fir=fir,
                fir_kernel=(1, 3, 3, 1),
                conv_size=conv_size,
                dtype=jnp.float32,
                rngs=rngs,
            )
            down = layers.Downsample(3, out_ch, **kwargs)(x)
            up = layers.Upsample(3, out_ch, **kwargs)(x)
            assert down.shape == (1, 4, 2, out_ch)
            assert up.shape == (1, 16, 8, out_ch)


def test_fir_kernel_is_normalised_and_rejects_zero_sum():
    k = layers.fir_kernel_1d((1, 3, 3, 1))
    assert k.shape == (4,)
    np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(k, np.array([1, 3, 3, 1]) / 8.0, rtol=1e-12)
    with pytest.raises(ValueError, match="non-zero sum"):
        layers.fir_kernel_1d((1, -1))


def test_default_init_is_uniform_with_fan_avg_bound():
    shape = (3, 3, 64, 32)
    fan_avg = (64 * 9 + 32 * 9) / 2
    for scale in (1.0, 0.1):
        w = np.asarray(layers.default_init(scale)(jax.random.key(0), shape, jnp.float32))
        bound = np.sqrt(3.0 * scale / fan_avg)
        assert np.abs(w).max() <= bound
        assert np.abs(w).max() > 0.95 * bound
        np.testing.assert_allclose(w.var(), scale / fan_avg, rtol=0.05)
    tiny = np.asarray(layers.default_init(0.0)(jax.random.key(0), shape, jnp.float32))
    assert 0 < np.abs(tiny).max() <= np.sqrt(3e-10 / fan_avg)


def test_group_count_follows_reference_rule_and_rejects_bad_channels():
    assert layers.group_count(8) == 2
    assert layers.group_count(96) == 24
    assert layers.group_count(256) == 32
    with pytest.raises(ValueError, match="144 channels"):
        layers.group_count(144)
    with pytest.raises(ValueError, match="3 channels"):
        layers.group_count(3)


def test_sinusoidal_embedding_formula():
    positions = jnp.array([0.0, 1.0, 7.5])
    emb = np.asarray(layers.sinusoidal_embedding(positions, 8))
    freqs = 10_000.0 ** (-np.arange(4) / 3.0)
    angles = np.array([0.0, 1.0, 7.5])[:, None] * freqs[None, :]
    np.testing.assert_allclose(emb, np.concatenate([np.sin(angles), np.cos(angles)], 1), atol=1e-5)
    odd = layers.sinusoidal_embedding(positions, 9)
    assert odd.shape == (3, 9)
    np.testing.assert_array_equal(odd[:, -1], 0.0)


def test_fourier_features_are_fixed_and_not_parameters():
    projection = layers.GaussianFourierProjection(4, scale=16.0, rngs=nnx.Rngs(0))
    out = projection(jnp.array([0.25, 0.5]))
    assert out.shape == (2, 8)
    assert not jax.tree.leaves(nnx.state(projection, nnx.Param))
    np.testing.assert_allclose(np.asarray(out[:, :4]) ** 2 + np.asarray(out[:, 4:]) ** 2, 1.0)


def test_attention_is_equivariant_to_permuting_positions(numpy_rng):
    block = layers.AttentionBlock(
        8, skip_rescale=True, init_scale=1.0, dtype=jnp.float32, rngs=nnx.Rngs(1)
    )
    x = jnp.asarray(numpy_rng.normal(size=(2, 4, 4, 8)), jnp.float32)
    order = numpy_rng.permutation(16)
    permuted = x.reshape(2, 16, 8)[:, order].reshape(2, 4, 4, 8)
    out = block(x).reshape(2, 16, 8)[:, order].reshape(2, 4, 4, 8)
    np.testing.assert_allclose(block(permuted), out, atol=1e-5)
    assert not np.allclose(block(x), x * layers.SKIP_RESCALE)


def block_kwargs(seed=2, **overrides):
    kwargs = dict(
        temb_dim=16,
        act=jax.nn.silu,
        dropout_rate=0.5,
        skip_rescale=True,
        init_scale=1.0,
        conv_size=3,
        dtype=jnp.float32,
        rngs=nnx.Rngs(seed),
    )
    return kwargs | overrides


FIR = dict(fir=True, fir_kernel=(1, 3, 3, 1))


@nnx.jit
def run_block(block, x, temb, key):
    return block(x, temb, key)


def test_residual_block_shapes():
    x = jnp.zeros((2, 8, 8, 8))
    temb = jnp.zeros((2, 16))

    def shape_of(make):
        return nnx.eval_shape(lambda: make()(x, temb)).shape

    biggan = layers.ResnetBlockBigGAN
    assert shape_of(lambda: biggan(8, 16, resample="down", **FIR, **block_kwargs())) == (
        2,
        4,
        4,
        16,
    )
    assert shape_of(lambda: biggan(8, resample="up", **FIR, **block_kwargs())) == (2, 16, 16, 8)
    assert shape_of(lambda: biggan(8, 12, fir=False, fir_kernel=(1,), **block_kwargs())) == (
        2,
        8,
        8,
        12,
    )
    assert shape_of(lambda: layers.ResnetBlockDDPM(8, 12, **block_kwargs())) == (2, 8, 8, 12)


def test_residual_block_dropout_and_skip_rescale(numpy_rng):
    x = jnp.asarray(numpy_rng.normal(size=(2, 8, 8, 8)), jnp.float32)
    temb = jnp.asarray(numpy_rng.normal(size=(2, 16)), jnp.float32)
    block = layers.ResnetBlockBigGAN(8, **FIR, **block_kwargs())
    evaluation = run_block(block, x, temb, None)
    first = run_block(block, x, temb, jax.random.key(0))
    assert not np.allclose(first, evaluation)
    np.testing.assert_array_equal(run_block(block, x, temb, jax.random.key(0)), first)
    assert not np.allclose(run_block(block, x, temb, jax.random.key(1)), first)
    # Same parameters (same seed) without the 1/sqrt(2) rescaling of the residual sum.
    plain = layers.ResnetBlockBigGAN(8, **FIR, **block_kwargs(skip_rescale=False))
    np.testing.assert_allclose(
        run_block(plain, x, temb, None), np.sqrt(2.0) * np.asarray(evaluation), rtol=1e-5
    )


def test_compute_dtype_bfloat16_keeps_float32_parameters():
    block = layers.ResnetBlockBigGAN(
        8,
        temb_dim=16,
        act=jax.nn.silu,
        dropout_rate=0.0,
        fir=True,
        fir_kernel=(1, 3, 3, 1),
        resample="down",
        skip_rescale=True,
        init_scale=1.0,
        conv_size=3,
        dtype=jnp.bfloat16,
        rngs=nnx.Rngs(3),
    )
    out = block(jnp.ones((1, 8, 8, 8)), jnp.ones((1, 16)))
    assert out.dtype == jnp.bfloat16
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(nnx.state(block, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}
