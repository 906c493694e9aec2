"""Tests of the NCSN++ network: shapes and dtypes, the reference parameter count, jit vs eager,
gradients, time conditioning, input/output parameterisations, dropout, config errors, and a
small overfitting run."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from blackout_jax import observation_times, poisson_divergence
from blackout_jax.models import (
    CIFAR10_REFERENCE,
    abstract_network,
    count_parameters,
    create_model,
    parse_config,
)

T_END = 10.0
NUM_STEPS = 100
MAX_COUNT = 16

TINY = dict(
    nf=8,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    dropout=0.1,
    init_scale=1.0,
)


def build(overrides=None, *, image_shape=(8, 8, 1), seed=0, max_count=MAX_COUNT):
    return create_model(
        TINY | (overrides or {}),
        image_shape=image_shape,
        max_count=max_count,
        t_end=T_END,
        num_steps=NUM_STEPS,
        seed=seed,
    )


@functools.cache
def _cached(overrides_items, image_shape):
    return build(dict(overrides_items), image_shape=image_shape)


def shared_model(overrides=None, image_shape=(8, 8, 1)):
    """A model built once per configuration and shared by tests that only read it."""
    return _cached(tuple(sorted((overrides or {}).items())), image_shape)


def abstract_model(overrides=None):
    """Shapes-only model, enough for the parts that do not touch the parameters."""
    return nnx.eval_shape(lambda: build(overrides))


def random_counts(shape, max_count=MAX_COUNT, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, max_count + 1, shape), jnp.int32)


@functools.partial(nnx.jit, static_argnames="train")
def forward(model, counts, t, key=None, train=False):
    return model(counts, t, train=train, dropout_key=key)


def params_of(model):
    return nnx.state(model, nnx.Param)


@pytest.mark.parametrize(
    "overrides, image_shape",
    [
        ({"dtype": "bfloat16", "attn_resolutions": (8,)}, (8, 12, 3)),
        (
            {
                "resblock_type": "ddpm",
                "fir": False,
                "resamp_with_conv": False,
                "progressive": "residual",
                "output_transform": "bounded_sigmoid",
            },
            (4, 8, 3),
        ),
        (
            {
                "progressive": "output_skip",
                "progressive_input": "input_skip",
                "progressive_combine": "cat",
                "embedding_type": "fourier",
                "attn_resolutions": (8,),
            },
            (16, 8, 1),
        ),
    ],
)
def test_output_shape_dtype_and_range(overrides, image_shape):
    model = shared_model(overrides, image_shape)
    counts = random_counts((3, *image_shape))
    out = forward(model, counts, jnp.array([1e-4, 0.7, T_END]))
    assert out.shape == counts.shape
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(out >= 0))
    param_dtypes = {leaf.dtype for leaf in jax.tree.leaves(params_of(model))}
    assert param_dtypes == {jnp.dtype(jnp.float32)}
    if overrides.get("output_transform") == "bounded_sigmoid":
        assert bool(jnp.all(out <= MAX_COUNT - counts))


def test_cifar10_reference_has_62693251_parameters():
    reference = ml_collections.ConfigDict(
        dict(
            name="ncsnpp",
            nf=128,
            ch_mult=(1, 2, 2, 2),
            num_res_blocks=4,
            attn_resolutions=(16,),
            resblock_type="biggan",
            skip_rescale=True,
            resamp_with_conv=True,
            fir=True,
            fir_kernel=(1, 3, 3, 1),
            progressive="none",
            progressive_input="residual",
            progressive_combine="sum",
            dropout=0.1,
            embedding_type="positional",
            fourier_scale=16.0,
            time_input="grid_index",
            init_scale=0.0,
            conv_size=3,
            input_transform="reference",
            output_transform="softplus",
            dtype="float32",
        )
    )
    network = abstract_network(reference, image_shape=(32, 32, 3), max_count=255, t_end=15.0)
    assert count_parameters(network) == 62_693_251
    # The library's reference config is the same network (it embeds continuous time).
    assert parse_config(reference) == dataclasses.replace(
        CIFAR10_REFERENCE, time_input="grid_index"
    )


def test_jit_equals_eager():
    model = shared_model()
    counts = random_counts((2, 8, 8, 1))
    t = jnp.array([0.05, 2.0])
    np.testing.assert_allclose(model(counts, t), forward(model, counts, t), rtol=1e-5, atol=1e-5)


def test_initialisation_is_deterministic_from_the_seed():
    first = jax.tree.leaves(params_of(build(seed=3)))
    again = jax.tree.leaves(params_of(build(seed=3)))
    other = jax.tree.leaves(params_of(build(seed=4)))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_init_scale_zero_starts_at_softplus_of_zero():
    model = shared_model({"init_scale": 0.0})
    out = forward(model, random_counts((2, 8, 8, 1)), jnp.array([0.1, 1.0]))
    np.testing.assert_allclose(out, np.log(2.0), atol=1e-3)


def test_dropout_only_in_training_and_needs_a_key():
    model = shared_model()  # dropout 0.1
    counts = random_counts((2, 8, 8, 1))
    t = jnp.array([0.3, 2.0])
    key0, key1 = jax.random.key(0), jax.random.key(1)

    evaluation = forward(model, counts, t)
    first = forward(model, counts, t, key0, train=True)
    assert not np.allclose(first, evaluation)
    np.testing.assert_array_equal(forward(model, counts, t, key0, train=True), first)
    assert not np.allclose(forward(model, counts, t, key1, train=True), first)
    np.testing.assert_array_equal(forward(model, counts, t, key0, train=False), evaluation)
    with pytest.raises(ValueError, match="dropout_key is required"):
        forward(model, counts, t, train=True)
    no_dropout = abstract_model({"dropout": 0.0})  # needs no key in training
    out = nnx.eval_shape(lambda m: m(counts, t, train=True), no_dropout)
    assert out.shape == counts.shape


def test_module_holds_only_parameters_no_random_state():
    model = shared_model()
    everything = jax.tree.leaves(nnx.state(model))
    assert len(everything) == len(jax.tree.leaves(params_of(model)))
    assert count_parameters(model) == sum(leaf.size for leaf in everything)
    assert not jax.tree.leaves(nnx.state(model, nnx.RngState))


def _reference_grid_model(overrides):
    """Shapes-only model on the reference grid (T = 1000, t_end = 15)."""
    return nnx.eval_shape(
        lambda: create_model(
            TINY | overrides,
            image_shape=(8, 8, 1),
            max_count=255,
            t_end=15.0,
            num_steps=1000,
            seed=0,
        )
    )


def test_grid_index_is_the_reference_label_on_the_thousand_step_grid():
    times = observation_times(1000, 15.0)[1:]
    labels = np.asarray(
        _reference_grid_model({"time_input": "grid_index"}).embedding_position(times)
    )
    assert labels[0] == 0.0  # times[1]
    assert labels[-1] == 999.0  # times[1000]
    np.testing.assert_array_equal(labels, np.arange(1000, dtype=np.float32))
    fourier = _reference_grid_model({"time_input": "grid_index", "embedding_type": "fourier"})
    np.testing.assert_allclose(
        fourier.embedding_position(times), np.arange(1000) / 999.0, rtol=1e-6, atol=1e-7
    )


def test_time_position_continuous_and_grid_index_agree_on_the_grid():
    continuous = shared_model({"time_input": "continuous"})
    grid_index = abstract_model({"time_input": "grid_index"})
    times = observation_times(NUM_STEPS, T_END)[1:]
    expected = np.arange(1, NUM_STEPS + 1, dtype=np.float32)
    np.testing.assert_allclose(continuous.embedding_position(times), expected, atol=2e-3)
    # grid_index feeds the reference's label k - 1: 0 at t_1, T - 1 at t_T
    np.testing.assert_array_equal(grid_index.embedding_position(times), expected - 1.0)
    # Between grid points the continuous position moves, the grid index snaps to the nearest.
    between = 0.5 * (times[9] + times[10])
    position = float(continuous.embedding_position(between[None])[0])
    assert 10.0 < position < 11.0
    assert float(grid_index.embedding_position(between[None])[0]) in (9.0, 10.0)
    # Off the grid the label stays in 0..T-1.
    np.testing.assert_array_equal(
        grid_index.embedding_position(jnp.array([0.0, 2 * T_END])), [0.0, NUM_STEPS - 1.0]
    )
    # Out-of-range times stay finite: t = 0 maps to position 0, t > t_end to T.
    edges = continuous.embedding_position(jnp.array([0.0, 2 * T_END]))
    np.testing.assert_array_equal(edges, [0.0, float(NUM_STEPS)])
    # The network output depends on t, and continuously so.
    counts = jnp.broadcast_to(random_counts((1, 8, 8, 1)), (3, 8, 8, 1))
    near = forward(continuous, counts, jnp.array([1.0, 1.0 + 1e-4, 2.0]))
    assert not np.allclose(near[0], near[2])
    np.testing.assert_allclose(near[0], near[1], atol=1e-3)


def test_input_transforms():
    counts = jnp.asarray(np.arange(2 * 8 * 8).reshape(2, 8, 8, 1) % 17, jnp.float32)
    t = jnp.array([0.5, 3.0])
    survival = np.exp(-np.array([0.5, 3.0]))[:, None, None, None]
    reference = abstract_model({"input_transform": "reference"}).network_input(counts, t)
    scaled = abstract_model({"input_transform": "scaled"}).network_input(counts, t)
    np.testing.assert_allclose(reference, counts - 8.0 * survival, rtol=1e-6)
    np.testing.assert_allclose(scaled, counts / 8.0 - survival, rtol=1e-6, atol=1e-7)


def test_bounded_output_leaves_no_room_above_max_count():
    model = shared_model({"output_transform": "bounded_sigmoid"})
    counts = jnp.full((2, 8, 8, 1), MAX_COUNT, jnp.int32).at[0, 0, 0, 0].set(0)
    out = forward(model, counts, jnp.array([0.2, 1.0]))
    assert float(out[0, 0, 0, 0]) > 0.0
    np.testing.assert_array_equal(np.asarray(out).ravel()[1:], 0.0)


def test_float_counts_and_scalar_time_are_accepted():
    model = shared_model()
    counts = random_counts((2, 8, 8, 1))
    np.testing.assert_allclose(
        forward(model, counts.astype(jnp.float32), jnp.full((2,), 0.4)),
        forward(model, counts, jnp.array([0.4, 0.4])),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(
        model.embedding_position(jnp.float32(0.4)), model.embedding_position(jnp.array(0.4))
    )


@pytest.mark.parametrize(
    "overrides, image_shape, message",
    [
        ({"ch_mult": ()}, (8, 8, 1), "model.ch_mult"),
        ({}, (8, 5, 1), r"image shape \(8, 5, 1\).*model\.ch_mult"),
        ({"ch_mult": (1, 2, 2, 2)}, (4, 8, 1), r"image shape \(4, 8, 1\).*model\.ch_mult"),
        ({"resblock_type": "resnet"}, (8, 8, 1), "model.resblock_type"),
        ({"bogus_field": 1}, (8, 8, 1), "model.bogus_field"),
        ({"nf": 6}, (8, 8, 1), "model.nf"),
        ({"nf": 0}, (8, 8, 1), "model.nf"),
        ({"attn_resolutions": (16,)}, (8, 8, 1), "model.attn_resolutions"),
        ({"conv_size": 4}, (8, 8, 1), "model.conv_size"),
        ({"dropout": 1.0}, (8, 8, 1), "model.dropout"),
        ({"fir_kernel": (1, -1)}, (8, 8, 1), "model.fir_kernel"),
        ({"progressive": "skip"}, (8, 8, 1), "model.progressive"),
        ({"time_input": "index"}, (8, 8, 1), "model.time_input"),
        ({"output_transform": "exp"}, (8, 8, 1), "model.output_transform"),
        ({"dtype": "float16"}, (8, 8, 1), "model.dtype"),
        ({"skip_rescale": 1}, (8, 8, 1), "model.skip_rescale"),
    ],
)
def test_bad_configs_name_the_field(overrides, image_shape, message):
    with pytest.raises(ValueError, match=message):
        nnx.eval_shape(lambda: build(overrides, image_shape=image_shape))


def test_bad_arguments_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="max_count"):
        build(max_count=0)
    with pytest.raises(ValueError, match="image_shape"):
        build(image_shape=(8, 8))
    model = abstract_model()
    with pytest.raises(ValueError, match="counts must have shape"):
        model(jnp.zeros((2, 8, 8, 3)), jnp.ones((2,)))
    with pytest.raises(ValueError, match="t must have shape"):
        model(jnp.zeros((2, 8, 8, 1)), jnp.ones((3,)))


# Gradient checks and the overfitting run share one network shape, one batch and one compiled
# loss gradient. init_scale only affects initialisation, so parameters drawn with different
# init_scale values run through the same graph.
TRAIN_CONFIG = {"dropout": 0.0, "attn_resolutions": (4,)}


def fixed_batch():
    rng = np.random.default_rng(7)
    n0 = rng.integers(0, MAX_COUNT + 1, (8, 8, 8, 1))
    t = np.linspace(0.1, 3.0, 8).astype(np.float32)
    nt = rng.binomial(n0, np.exp(-t)[:, None, None, None])
    return jnp.asarray(nt), jnp.asarray(t), jnp.asarray(n0 - nt, jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def loss_and_gradient(graphdef, params, counts, t, target):
    def loss_fn(params):
        pred = nnx.merge(graphdef, params)(counts, t)
        return jnp.mean(poisson_divergence(pred, target))

    return jax.value_and_grad(loss_fn)(params)


def test_every_parameter_receives_a_gradient():
    # With init_scale = 0 the last layer of every branch starts at a ~1e-10 variance scale (not
    # exactly zero, as in the reference), so gradients still reach every parameter, only
    # smaller; init_scale = 1 checks the wiring with ordinary magnitudes.
    graphdef, params_unit = nnx.split(build(TRAIN_CONFIG | {"init_scale": 1.0}), nnx.Param)
    _, params_zero = nnx.split(build(TRAIN_CONFIG | {"init_scale": 0.0}), nnx.Param)
    batch = fixed_batch()
    for params in (params_unit, params_zero):
        _, grads = loss_and_gradient(graphdef, params, *batch)
        flat = jax.tree_util.tree_flatten_with_path(grads)[0]
        assert len(flat) == len(jax.tree.leaves(params))
        for path, grad in flat:
            grad = np.asarray(grad)
            assert np.all(np.isfinite(grad)), path
            assert np.any(grad != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_tiny_model_overfits_one_fixed_batch():
    graphdef, _ = nnx.split(build(TRAIN_CONFIG | {"init_scale": 1.0}), nnx.Param)
    _, params = nnx.split(build(TRAIN_CONFIG | {"init_scale": 0.0}), nnx.Param)
    batch = fixed_batch()
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)
    update = jax.jit(optimizer.update)

    losses = []
    for _ in range(200):
        loss, grads = loss_and_gradient(graphdef, params, *batch)
        updates, opt_state = update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
        if losses[-1] < 0.5 * losses[0]:
            break
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-5:], len(losses))
