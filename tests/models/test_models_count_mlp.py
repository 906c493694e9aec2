"""Tests of the count-vector MLP: the negative-binomial posterior mean against a brute-force sum,
the untrained nb_corrected network equal to it, shapes and positivity, determinism, jit vs
eager, labels, gradients, dropout, compute dtypes, argument errors and the predict_fn adapter."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from blackout_jax import poisson_loss
from blackout_jax.models import (
    CountMLPConfig,
    check_example_shape,
    count_parameters,
    create_count_mlp,
    make_predict_fn,
)
from blackout_jax.models.count_mlp import log_nb_posterior_mean, nb_prior_from_moments

T_END = 15.0
NUM_STEPS = 100
MAX_COUNT = 5000
D = 6
TINY = dict(width=16, num_blocks=2, embedding_dim=8)
MEAN = np.array([0.0, 0.2, 1.0, 3.0, 10.0, 40.0])
VARIANCE = np.array([0.0, 0.1, 3.0, 20.0, 10.0, 900.0])
COUNTS = jnp.array(
    [[0, 0, 1, 2, 9, 30], [0, 1, 0, 7, 12, 0], [0, 0, 0, 0, 0, 0], [0, 3, 2, 1, 40, 120]],
    jnp.int32,
)
TIMES = jnp.array([0.01, 0.5, 3.0, 12.0], jnp.float32)


def build(overrides=None, *, seed=0, moments=True):
    kwargs = dict(feature_mean=MEAN, feature_variance=VARIANCE) if moments else {}
    return create_count_mlp(
        TINY | (overrides or {}),
        example_shape=(D,),
        max_count=MAX_COUNT,
        t_end=T_END,
        num_steps=NUM_STEPS,
        seed=seed,
        **kwargs,
    )


@functools.cache
def _cached(overrides_items):
    return build(dict(overrides_items))


def shared_model(overrides=None):
    """A model built once per configuration and shared by tests that only read it."""
    return _cached(tuple(sorted((overrides or {}).items())))


def with_random_head(model, seed=1):
    """A copy (new variables, the original untouched) whose zero-initialised output layer is
    replaced by random weights."""
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf, state))
    kernel = copy.output_dense.kernel
    kernel[...] = 0.3 * jax.random.normal(jax.random.key(seed), kernel[...].shape)
    return copy


def params_of(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


# ---- the negative-binomial posterior mean ----------------------------------------------------


def brute_force_posterior_mean(nt: int, t: float, mu: float, theta: float) -> float:
    """``sum_{n0} (n0 - nt) NB(n0) Bin(nt; n0, p) / sum_{n0} NB(n0) Bin(nt; n0, p)``."""
    n0 = np.arange(nt, 20_000)
    p = np.exp(-t)
    weights = scipy.stats.nbinom.pmf(n0, mu / theta, 1.0 / (1.0 + theta))
    weights = weights * scipy.stats.binom.pmf(nt, n0, p)
    return float(np.sum((n0 - nt) * weights) / np.sum(weights))


@pytest.mark.parametrize(
    "nt, t, mu, theta",
    [
        (0, 0.3, 2.0, 1.5),
        (3, 0.3, 2.0, 1.5),
        (0, 4.0, 50.0, 10.0),
        (12, 1.0, 5.0, 0.2),
        (1, 8.0, 0.5, 3.0),
        (40, 0.05, 30.0, 2.0),
    ],
)
def test_nb_posterior_mean_matches_brute_force(nt, t, mu, theta):
    closed = jnp.exp(
        log_nb_posterior_mean(
            jnp.array([[nt]]), jnp.array([t]), jnp.log(jnp.array([mu])), jnp.log(jnp.array([theta]))
        )
    )
    np.testing.assert_allclose(
        float(closed[0, 0]), brute_force_posterior_mean(nt, t, mu, theta), rtol=2e-5
    )


def test_prior_from_moments_matches_the_formula_and_floors():
    log_mu, log_theta = nb_prior_from_moments(MEAN, VARIANCE, D)
    np.testing.assert_allclose(np.exp(log_mu), np.maximum(MEAN, 1e-6), rtol=1e-6)
    expected_theta = [1e-4, 1e-4, 2.0, 17.0 / 3.0, 1e-4, 860.0 / 40.0]
    np.testing.assert_allclose(np.exp(log_theta), expected_theta, rtol=1e-6)
    assert np.all(np.isfinite(log_mu)) and np.all(np.isfinite(log_theta))


def test_untrained_nb_corrected_network_is_the_nb_posterior_mean():
    model = shared_model()
    yhat = np.asarray(model(COUNTS, TIMES))
    mu = np.maximum(MEAN, 1e-6)
    theta = np.maximum((VARIANCE - MEAN) / mu, 1e-4)
    p = np.exp(-np.asarray(TIMES, np.float64))[:, None]
    counts = np.asarray(COUNTS, np.float64)
    expected = (1.0 - p) * (mu / theta + counts) * theta / (1.0 + theta * p)
    np.testing.assert_allclose(yhat, expected, rtol=2e-5)


def test_predictions_are_capped_at_the_max_count():
    capped = create_count_mlp(
        TINY,
        example_shape=(D,),
        max_count=100,
        t_end=T_END,
        num_steps=NUM_STEPS,
        seed=0,
        feature_mean=MEAN,
        feature_variance=VARIANCE,
    )
    uncapped = np.asarray(shared_model()(COUNTS, TIMES))
    assert uncapped.max() > 1000.0  # the last gene at t = 12 with 120 survivors
    np.testing.assert_allclose(capped(COUNTS, TIMES), np.minimum(uncapped, 100.0), rtol=1e-5)


def test_default_moments_are_mean_one_variance_two():
    model = build(moments=False)
    np.testing.assert_allclose(np.exp(model.log_mean[...]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.exp(model.log_scale[...]), 1.0, rtol=1e-6)


# ---- shapes, determinism, jit ----------------------------------------------------------------


@pytest.mark.parametrize("output", ["nb_corrected", "log_rate"])
def test_shape_dtype_positivity(output):
    model = with_random_head(shared_model({"output": output}))
    for counts in (COUNTS, COUNTS.astype(jnp.float32)):
        yhat = model(counts, TIMES)
        assert yhat.shape == (4, D) and yhat.dtype == jnp.float32
        assert bool(jnp.all(yhat > 0)) and bool(jnp.all(yhat <= MAX_COUNT * (1 + 1e-6)))
    scalar = model(COUNTS, 0.5)
    np.testing.assert_array_equal(scalar, model(COUNTS, jnp.full((4,), 0.5)))


def test_untrained_log_rate_is_one_everywhere():
    yhat = shared_model({"output": "log_rate"})(COUNTS, TIMES)
    np.testing.assert_array_equal(yhat, np.ones((4, D), np.float32))
    assert shared_model({"output": "log_rate"}).log_mean is None


def test_same_seed_same_parameters_other_seed_other_parameters():
    first, again, other = build(seed=3), build(seed=3), build(seed=4)
    for a, b in zip(params_of(first), params_of(again), strict=True):
        np.testing.assert_array_equal(a, b)
    pairs = zip(params_of(first), params_of(other), strict=True)
    assert any(not np.array_equal(a, b) for a, b in pairs)
    assert count_parameters(first) == count_parameters(other)


def test_jit_equals_eager():
    model = with_random_head(shared_model({"num_classes": 2}))
    labels = jnp.array([0, 1, 2, 1])
    eager = model(COUNTS, TIMES, labels)

    @nnx.jit
    def run(model, counts, t, labels):
        return model(counts, t, labels)

    np.testing.assert_allclose(run(model, COUNTS, TIMES, labels), eager, rtol=1e-5, atol=1e-6)


# ---- labels ----------------------------------------------------------------------------------


def test_labels_change_the_output_of_a_conditional_network_only():
    model = with_random_head(shared_model({"num_classes": 3}))
    assert model.config.null_label == 3
    by_label = [model(COUNTS, TIMES, jnp.full((4,), label)) for label in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.allclose(by_label[a], by_label[b])
    np.testing.assert_array_equal(model(COUNTS, TIMES), by_label[3])  # omitted = null label
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        model(COUNTS, TIMES, jnp.zeros((3,), jnp.int32))

    unconditional = shared_model()
    assert unconditional.label_embedding is None and unconditional.config.null_label == 0
    with pytest.raises(ValueError, match="unconditional network"):
        unconditional(COUNTS, TIMES, jnp.zeros((4,), jnp.int32))


def test_the_label_embedding_adds_parameters_and_leaves_the_others_alone():
    plain, conditional = shared_model(), shared_model({"num_classes": 3})
    extra = count_parameters(conditional) - count_parameters(plain)
    assert extra == 4 * TINY["embedding_dim"]
    without = nnx.state(conditional, nnx.Param)
    del without["label_embedding"]
    for a, b in zip(jax.tree.leaves(without), params_of(plain), strict=True):
        np.testing.assert_array_equal(a, b)


# ---- gradients and dropout -------------------------------------------------------------------


def loss_gradients(model, labels=None):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    target = jnp.asarray(COUNTS, jnp.float32) + 1.0

    def loss(params):
        network = nnx.merge(graphdef, params, rest)
        labelled = () if labels is None else (labels,)
        return jnp.sum(poisson_loss(network(COUNTS, TIMES, *labelled, train=True), target))

    return jax.grad(loss)(params)


@pytest.mark.parametrize("output", ["nb_corrected", "log_rate"])
def test_gradients_reach_every_parameter(output):
    model = with_random_head(shared_model({"output": output, "num_classes": 2}))
    grads = loss_gradients(model, jnp.array([0, 1, 2, 0]))
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(grad)), path
        assert np.any(np.asarray(grad) != 0.0), jax.tree_util.keystr(path)


def test_the_zero_head_of_the_untrained_network_gets_a_gradient():
    grads = loss_gradients(shared_model())
    assert np.any(np.asarray(grads["output_dense"]["kernel"][...]) != 0.0)
    assert np.any(np.asarray(grads["log_mean"][...]) != 0.0)


def test_dropout_is_active_only_in_training():
    model = with_random_head(shared_model({"dropout": 0.5}))
    key = jax.random.key(7)
    evaluation = model(COUNTS, TIMES)
    np.testing.assert_array_equal(model(COUNTS, TIMES, train=False, dropout_key=key), evaluation)
    trained = model(COUNTS, TIMES, train=True, dropout_key=key)
    assert not np.allclose(trained, evaluation)
    np.testing.assert_array_equal(model(COUNTS, TIMES, train=True, dropout_key=key), trained)
    other = model(COUNTS, TIMES, train=True, dropout_key=jax.random.key(8))
    assert not np.allclose(other, trained)
    with pytest.raises(ValueError, match="dropout_key is required"):
        model(COUNTS, TIMES, train=True)
    no_dropout = with_random_head(shared_model())
    np.testing.assert_array_equal(no_dropout(COUNTS, TIMES, train=True), no_dropout(COUNTS, TIMES))


# ---- compute dtypes --------------------------------------------------------------------------


def test_bfloat16_runs_and_stays_close_to_float32():
    reference = with_random_head(shared_model())
    half = with_random_head(shared_model({"dtype": "bfloat16"}))
    for a, b in zip(params_of(reference), params_of(half), strict=True):
        np.testing.assert_array_equal(a, b)  # float32 parameters either way
    for train in (False, True):
        yhat = half(COUNTS, TIMES, train=train)
        assert yhat.dtype == jnp.float32 and bool(jnp.all(yhat > 0))
        np.testing.assert_allclose(yhat, reference(COUNTS, TIMES), rtol=0.1)
    assert not np.array_equal(half(COUNTS, TIMES), reference(COUNTS, TIMES))


def test_inference_dtype_applies_to_evaluation_only():
    reference = with_random_head(shared_model())
    mixed = with_random_head(shared_model({"inference_dtype": "bfloat16"}))
    assert mixed.config.evaluation_dtype == "bfloat16"
    evaluation = mixed(COUNTS, TIMES)
    assert not np.array_equal(evaluation, reference(COUNTS, TIMES))
    np.testing.assert_allclose(evaluation, reference(COUNTS, TIMES), rtol=0.1)
    np.testing.assert_array_equal(  # the evaluation call left the network in float32
        mixed(COUNTS, TIMES, train=True), reference(COUNTS, TIMES, train=True)
    )


# ---- argument errors -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (0,), (4, 3), (2.0,), (True,)])
def test_check_example_shape_rejects_non_vectors(shape):
    with pytest.raises(ValueError, match=r"example shape"):
        check_example_shape(CountMLPConfig(), shape)
    assert check_example_shape(CountMLPConfig(), (7,)) == (7,)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"output": "softplus"}, "model.output"),
        ({"width": 0}, "model.width"),
        ({"embedding_dim": 2}, "model.embedding_dim"),
        ({"nf": 8}, "model.nf is unknown"),
        ({"name": "ncsnpp"}, "model.name"),
    ],
)
def test_bad_config_fields_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        build(overrides)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"feature_mean must have shape \(6,\)"):
        create_count_mlp(
            TINY,
            example_shape=(D,),
            max_count=9,
            t_end=1.0,
            num_steps=10,
            seed=0,
            feature_mean=MEAN[:5],
            feature_variance=VARIANCE[:5],
        )
    with pytest.raises(ValueError, match="feature_variance must be finite and >= 0; index 2"):
        create_count_mlp(
            TINY,
            example_shape=(D,),
            max_count=9,
            t_end=1.0,
            num_steps=10,
            seed=0,
            feature_mean=MEAN,
            feature_variance=VARIANCE * np.array([1, 1, -1, 1, 1, 1]),
        )
    with pytest.raises(ValueError, match="given together"):
        create_count_mlp(
            TINY,
            example_shape=(D,),
            max_count=9,
            t_end=1.0,
            num_steps=10,
            seed=0,
            feature_mean=MEAN,
        )
    for name, value in (("max_count", 0), ("t_end", 0.0), ("num_steps", 0), ("seed", 1.5)):
        arguments = dict(max_count=9, t_end=1.0, num_steps=10, seed=0) | {name: value}
        with pytest.raises(ValueError, match=name):
            create_count_mlp(TINY, example_shape=(D,), **arguments)
    with pytest.raises(ValueError, match=r"counts must have shape \(B, 6\)"):
        shared_model()(COUNTS[:, :5], TIMES)


# ---- the predict_fn adapter ------------------------------------------------------------------


def test_predict_fn_adapter_with_dropout_and_guidance():
    model = with_random_head(shared_model({"num_classes": 2, "dropout": 0.3}))
    graphdef, state = nnx.split(model)
    np.testing.assert_array_equal(
        make_predict_fn(graphdef, state)(COUNTS, TIMES), model(COUNTS, TIMES)
    )
    keyed = make_predict_fn(graphdef, state, dropout_key=jax.random.key(0))(COUNTS, TIMES)
    assert keyed.shape == (4, D) and bool(jnp.all(keyed > 0))
    labels = jnp.array([0, 1, 0, 1])
    guided = make_predict_fn(graphdef, state, labels=labels, guidance_scale=1.0)(COUNTS, TIMES)
    conditional, null = model(COUNTS, TIMES, labels), model(COUNTS, TIMES)
    np.testing.assert_allclose(guided, jnp.minimum(conditional**2 / null, MAX_COUNT), rtol=1e-4)
