"""Tests of the adapter from a network to the ``predict_fn`` of the samplers and the bound."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from blackout_jax import nll_bound, observation_times, sample
from blackout_jax.models import create_model, example_dropout_keys, make_predict_fn

T_END = 10.0
NUM_STEPS = 50
MAX_COUNT = 16
CONFIG = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), init_scale=1.0)


def build(seed):
    return create_model(
        CONFIG,
        image_shape=(8, 8, 1),
        max_count=MAX_COUNT,
        t_end=T_END,
        num_steps=NUM_STEPS,
        seed=seed,
    )


@pytest.fixture(scope="module")
def model():
    return build(0)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    counts = jnp.asarray(rng.integers(0, MAX_COUNT + 1, (2, 8, 8, 1)), jnp.int32)
    return counts, jnp.array([0.2, 3.0], jnp.float32)


traces = []


@jax.jit
def call(predict_fn, counts, t):
    traces.append(1)  # runs once per compilation
    return predict_fn(counts, t)


def test_predict_fn_equals_the_model_in_evaluation_mode(model, batch):
    counts, t = batch
    graphdef, state = nnx.split(model)
    predict_fn = make_predict_fn(graphdef, state)
    expected = nnx.jit(lambda m, c, s: m(c, s, train=False))(model, counts, t)
    np.testing.assert_allclose(call(predict_fn, counts, t), expected, rtol=1e-6)
    # No dropout: repeated calls agree.
    np.testing.assert_array_equal(call(predict_fn, counts, t), call(predict_fn, counts, t))


def test_predict_fn_carries_parameters_as_arguments_so_one_compilation_serves_all(model, batch):
    counts, t = batch
    first = make_predict_fn(*nnx.split(model))
    second = make_predict_fn(*nnx.split(build(1)))
    assert len(jax.tree.leaves(first)) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    before = len(traces)
    out_first = call(first, counts, t)
    out_second = call(second, counts, t)
    assert len(traces) - before <= 1
    assert not np.allclose(out_first, out_second)


def test_several_states_from_a_filtered_split(model, batch):
    counts, t = batch
    is_kernel = nnx.PathContains("kernel")
    graphdef, kernels, rest = nnx.split(model, is_kernel, ...)
    assert jax.tree.leaves(kernels) and jax.tree.leaves(rest)
    np.testing.assert_allclose(
        call(make_predict_fn(graphdef, kernels, rest), counts, t),
        call(make_predict_fn(*nnx.split(model)), counts, t),
        rtol=1e-6,
    )


def test_predict_fn_is_a_snapshot_of_the_state(batch):
    counts, t = batch
    live = build(0)
    predict_fn = make_predict_fn(*nnx.split(live))
    before = np.asarray(call(predict_fn, counts, t))
    live.output_conv.bias[...] = live.output_conv.bias[...] + 5.0
    np.testing.assert_array_equal(call(predict_fn, counts, t), before)
    after = call(make_predict_fn(*nnx.split(live)), counts, t)
    assert np.all(np.asarray(after) > before)


@pytest.mark.parametrize("guidance_scale, labels", [(-1.0, jnp.zeros(2, jnp.int32)), (1.0, None)])
def test_guidance_needs_labels_and_a_scale_of_at_least_zero(model, guidance_scale, labels):
    with pytest.raises(ValueError, match="guidance_scale"):
        make_predict_fn(*nnx.split(model), labels=labels, guidance_scale=guidance_scale)


def test_samplers_and_bound_run_on_the_network(model):
    predict_fn = make_predict_fn(*nnx.split(model))
    times = observation_times(4, T_END)
    samples = sample(jax.random.key(0), predict_fn, (2, 8, 8, 1), times, max_count=MAX_COUNT)
    assert samples.shape == (2, 8, 8, 1)
    assert samples.dtype == jnp.int32
    assert int(samples.min()) >= 0 and int(samples.max()) <= MAX_COUNT

    n0 = jnp.asarray(np.random.default_rng(2).integers(0, MAX_COUNT + 1, (2, 8, 8, 1)))
    nats = nll_bound(
        jax.random.key(1),
        predict_fn,
        n0,
        t_end=T_END,
        max_count=MAX_COUNT,
        num_time_samples=2,
    )
    assert nats.shape == (2,)
    assert bool(jnp.all(jnp.isfinite(nats))) and bool(jnp.all(nats > 0))


def test_dropout_predict_fn_draws_per_example_masks_reproducibly(model, batch):
    counts, t = batch
    same = jnp.stack([counts[0], counts[0], counts[1]])  # rows 0 and 1 identical
    times = jnp.stack([t[0], t[0], t[1]])
    predict_fn = make_predict_fn(*nnx.split(model), dropout_key=jax.random.key(7))
    out = np.asarray(call(predict_fn, same, times))
    assert out.shape == same.shape and np.all(out >= 0)
    np.testing.assert_array_equal(np.asarray(call(predict_fn, same, times)), out)  # same key
    assert not np.allclose(out[0], out[1])  # same input, its own mask
    # An example's masks do not depend on the other examples of the batch.
    changed = np.asarray(call(predict_fn, same.at[2].set(counts[0]), times))
    np.testing.assert_array_equal(changed[:2], out[:2])
    other_key = make_predict_fn(*nnx.split(model), dropout_key=jax.random.key(8))
    assert not np.allclose(np.asarray(call(other_key, same, times)), out)
    evaluation = np.asarray(call(make_predict_fn(*nnx.split(model)), same, times))
    np.testing.assert_allclose(evaluation[0], evaluation[1], rtol=1e-6)
    assert not np.allclose(out, evaluation)


def test_example_dropout_keys_differ_by_row_time_and_state():
    def data(keys):
        return np.asarray(jax.random.key_data(keys))

    key = jax.random.key(3)
    counts = jnp.zeros((3, 4, 4, 1), jnp.int32)
    t = jnp.full((3,), 0.5, jnp.float32)
    base = data(example_dropout_keys(key, counts, t))
    assert len({row.tobytes() for row in base}) == 3  # identical states, distinct rows
    np.testing.assert_array_equal(data(example_dropout_keys(key, counts, t)), base)
    later = data(example_dropout_keys(key, counts, t.at[1].set(0.25)))
    np.testing.assert_array_equal(later[[0, 2]], base[[0, 2]])
    assert not np.array_equal(later[1], base[1])
    grown = data(example_dropout_keys(key, counts.at[2, 1, 3, 0].set(1), t))
    np.testing.assert_array_equal(grown[:2], base[:2])
    assert not np.array_equal(grown[2], base[2])
    other = data(example_dropout_keys(jax.random.key(4), counts, t))
    assert not np.any(np.all(other == base, axis=1))


def test_sampling_with_dropout_is_reproducible_and_differs_from_no_dropout(model):
    graphdef, state = nnx.split(model)
    times = observation_times(4, T_END)  # the shapes of the test above: no new compilation

    def draw(predict_fn):
        return np.asarray(
            sample(jax.random.key(0), predict_fn, (2, 8, 8, 1), times, max_count=MAX_COUNT)
        )

    with_dropout = draw(make_predict_fn(graphdef, state, dropout_key=jax.random.key(1)))
    np.testing.assert_array_equal(
        draw(make_predict_fn(graphdef, state, dropout_key=jax.random.key(1))), with_dropout
    )
    assert not np.array_equal(draw(make_predict_fn(graphdef, state)), with_dropout)
    other_key = draw(make_predict_fn(graphdef, state, dropout_key=jax.random.key(2)))
    assert not np.array_equal(other_key, with_dropout)


class TinyCountNet(nnx.Module):
    """A network of no package's making: ``yhat = softplus(a n_t + b t + c_label)``, any shape.

    It has neither ``config`` nor ``max_count``; ``with_null_label`` and ``max_count`` add
    them, for the guidance tests.
    """

    def __init__(self, *, num_classes=0, with_null_label=False, max_count=None, seed=0):
        keys = jax.random.split(jax.random.key(seed), 3)
        self.scale = nnx.Param(jax.random.normal(keys[0], ()))
        self.time_scale = nnx.Param(jax.random.normal(keys[1], ()))
        self.label_bias = nnx.Param(jax.random.normal(keys[2], (num_classes + 1,)))
        if with_null_label:
            self.config = TinyConfig(null_label=num_classes)
        if max_count is not None:
            self.max_count = max_count

    def __call__(self, counts, t, *labels, train=False):
        label = labels[0] if labels else jnp.full(counts.shape[:1], -1, jnp.int32)
        per_example = self.time_scale * jnp.asarray(t, jnp.float32) + self.label_bias[label]
        per_example = per_example.reshape((-1,) + (1,) * (counts.ndim - 1))
        return jax.nn.softplus(self.scale * counts.astype(jnp.float32) + per_example)


class TinyConfig:
    def __init__(self, null_label):
        self.null_label = null_label


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 4, 1), (2, 3, 2, 2, 2)])
def test_any_module_without_config_or_max_count_is_served(shape):
    module = TinyCountNet()
    counts = jnp.arange(np.prod(shape), dtype=jnp.int32).reshape(shape) % 7
    t = jnp.linspace(0.1, 2.0, shape[0], dtype=jnp.float32)
    predict_fn = make_predict_fn(*nnx.split(module))
    assert isinstance(predict_fn, jax.tree_util.Partial)
    expected = jax.nn.softplus(
        module.scale[...] * counts
        + (module.time_scale[...] * t + module.label_bias[...][-1]).reshape(
            (-1,) + (1,) * (len(shape) - 1)
        )
    )
    np.testing.assert_allclose(jax.jit(predict_fn)(counts, t), expected, rtol=1e-6)
    samples = sample(jax.random.key(0), predict_fn, shape, observation_times(3, T_END), max_count=9)
    assert samples.shape == shape and int(samples.min()) >= 0 and int(samples.max()) <= 9


def test_labels_reach_a_module_without_config():
    module = TinyCountNet(num_classes=3)
    counts = jnp.ones((3, 4), jnp.int32)
    t = jnp.full((3,), 0.5, jnp.float32)
    labels = jnp.array([0, 2, 1], jnp.int32)
    predict_fn = make_predict_fn(*nnx.split(module), labels=labels, guidance_scale=0.0)
    np.testing.assert_allclose(predict_fn(counts, t), module(counts, t, labels), rtol=1e-6)


@pytest.mark.parametrize(
    "module, missing",
    [
        (TinyCountNet(num_classes=3, max_count=9), "model.config.null_label"),
        (TinyCountNet(num_classes=3, with_null_label=True), "model.max_count"),
    ],
)
def test_guidance_of_a_module_without_its_attributes_names_the_missing_one(module, missing):
    labels = jnp.zeros((2,), jnp.int32)
    with pytest.raises(AttributeError, match=missing.replace(".", r"\.")):
        make_predict_fn(*nnx.split(module), labels=labels, guidance_scale=1.0)


def test_guidance_of_a_custom_module_with_its_attributes():
    module = TinyCountNet(num_classes=3, with_null_label=True, max_count=4)
    counts = jnp.array([[0, 1, 5], [2, 0, 1]], jnp.int32)
    t = jnp.array([0.3, 1.5], jnp.float32)
    labels = jnp.array([1, 2], jnp.int32)
    w = 2.0
    predict_fn = make_predict_fn(*nnx.split(module), labels=labels, guidance_scale=w)
    conditional = module(counts, t, labels)
    null = module(counts, t, jnp.full((2,), 3, jnp.int32))
    expected = np.minimum((1 + w) * np.log(conditional) - w * np.log(null), np.log(4.0))
    np.testing.assert_allclose(np.log(predict_fn(counts, t)), expected, rtol=1e-5, atol=1e-6)
