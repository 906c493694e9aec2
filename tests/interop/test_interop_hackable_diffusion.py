"""Tests of the hackable_diffusion corruption process (blackout_jax/interop/hackable_diffusion.py).

The adapter's own arithmetic is checked everywhere; the tests that drive it through
``hackable_diffusion`` itself skip where that package (Python >= 3.12) is not installed.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import blackout_jax
from blackout_jax.interop.hackable_diffusion import BlackoutProcess, BlackoutSchedule

T_END = 15.0
MAX_COUNT = 20


@pytest.fixture
def hackable():
    """``hackable_diffusion.hd``, or a skip where the package is not installed."""
    return pytest.importorskip("hackable_diffusion.hd")


def test_the_schedule_is_the_continuous_blackout_schedule():
    u = jnp.linspace(0.0, 1.0, 11)
    info = BlackoutSchedule(t_end=T_END).evaluate(u)
    big_l = np.log(np.expm1(T_END))
    # p_t = sigmoid(L (1 - 2u)): logit(p_t) linear in u, t(1) = t_end, t(0) = log1p(e^-L)
    np.testing.assert_allclose(
        info["alpha"], 1.0 / (1.0 + np.exp(-big_l * (1.0 - 2.0 * np.asarray(u)))), rtol=2e-5
    )
    np.testing.assert_allclose(info["blackout_time"][-1], T_END, rtol=1e-6)
    np.testing.assert_allclose(info["blackout_time"][0], np.log1p(np.exp(-big_l)), rtol=1e-5)
    np.testing.assert_array_equal(info["time"], u)


def test_corrupt_draws_the_binomial_marginal():
    process = BlackoutProcess(max_count=MAX_COUNT)
    x0 = jnp.full((4000, 3), 12, jnp.int32)
    u = jnp.full((4000,), 0.55, jnp.float32)
    xt, targets = jax.jit(process.corrupt)(jax.random.key(0), x0, u)
    assert xt.shape == x0.shape and xt.dtype == x0.dtype
    np.testing.assert_array_equal(targets["x0"], x0)
    np.testing.assert_array_equal(targets["missing"], (x0 - xt).astype(np.float32))
    p = float(process.schedule.alpha(jnp.float32(0.55)))
    observed = np.bincount(np.asarray(xt).ravel(), minlength=13)
    expected = stats.binom.pmf(np.arange(13), 12, p) * xt.size
    keep = expected > 5
    chi2 = np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep])
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3


def test_corrupt_takes_one_time_per_example():
    process = BlackoutProcess(max_count=MAX_COUNT)
    x0 = jnp.full((2, 500, 2, 1), 20, jnp.int32)
    xt, _ = process.corrupt(jax.random.key(1), x0, jnp.array([0.0, 1.0]))
    assert int(xt[0].min()) == 20  # u = 0: p ~ 1 - 3e-7, every unit alive
    assert int(xt[1].max()) <= 1  # u = 1: p = e^-15


def test_sample_from_invariant_is_the_prior():
    process = BlackoutProcess(max_count=MAX_COUNT, schedule=BlackoutSchedule(t_end=1.0))
    draws = process.sample_from_invariant(jax.random.key(2), jnp.zeros((20000, 4)))
    assert draws.shape == (20000, 4) and draws.dtype == jnp.int32
    assert int(draws.min()) >= 0 and int(draws.max()) <= MAX_COUNT
    rate = MAX_COUNT / 2 * np.exp(-1.0)
    assert float(draws.mean()) == pytest.approx(rate, rel=0.02)


@pytest.mark.parametrize("kind", ["missing", "x0", "rate"])
def test_convert_predictions_from_each_kind_to_all(kind):
    process = BlackoutProcess(max_count=MAX_COUNT)
    xt = jnp.array([[0, 3], [5, 1]], jnp.int32)
    u = jnp.array([0.2, 0.7], jnp.float32)
    missing = jnp.array([[1.5, 0.25], [4.0, 2.0]], jnp.float32)
    t = np.asarray(process.schedule.blackout_time(u), np.float64)[:, None]
    expected = {
        "missing": np.asarray(missing),
        "x0": np.asarray(xt + missing),
        "rate": np.asarray(missing) * np.exp(-t) / -np.expm1(-t),  # yhat p_t / (1 - p_t)
    }
    converted = process.convert_predictions({kind: jnp.asarray(expected[kind])}, xt, u)
    assert sorted(converted) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(converted[name], value, rtol=2e-5, err_msg=name)


def test_time_inverts_the_blackout_time():
    schedule = BlackoutSchedule(t_end=T_END)
    u = jnp.linspace(0.02, 1.0, 50)
    np.testing.assert_allclose(schedule.time(schedule.blackout_time(u)), u, atol=2e-5)


MEMBERS = jnp.array([[0, 16, 3, 7], [9, 2, 16, 0], [5, 5, 1, 12]], jnp.int32)


def _u_time_oracle(process: BlackoutProcess, kind: str, seen_u: list):
    """A network on u-time predicting ``kind``, made of the dataset oracle of MEMBERS."""
    oracle = blackout_jax.dataset_oracle(MEMBERS)

    def network_fn(xt, u):
        seen_u.append(u)
        missing = oracle(xt, process.schedule.blackout_time(u))
        return process.convert_predictions({"missing": missing}, xt, u)[kind]

    return network_fn


@pytest.mark.parametrize("kind", ["missing", "x0", "rate"])
def test_predict_fn_gives_back_the_yhat_of_a_u_time_network(kind):
    process = BlackoutProcess(max_count=16, schedule=BlackoutSchedule(t_end=10.0))
    seen_u = []
    predict_fn = process.predict_fn(_u_time_oracle(process, kind, seen_u), kind)
    xt = jnp.array([[0, 3, 1, 2], [4, 0, 9, 0]], jnp.int32)
    t = jnp.full((2,), 1.3, jnp.float32)
    expected = blackout_jax.dataset_oracle(MEMBERS)(xt, t)
    np.testing.assert_allclose(predict_fn(xt, t), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(seen_u[-1], process.schedule.time(t), rtol=1e-6)


def test_the_samplers_grow_members_with_an_adapted_network():
    process = BlackoutProcess(max_count=16, schedule=BlackoutSchedule(t_end=10.0))
    predict_fn = process.predict_fn(_u_time_oracle(process, "rate", []), "rate")
    times = blackout_jax.observation_times(200, 10.0)
    samples = blackout_jax.sample(jax.random.key(0), predict_fn, (64, 4), times, max_count=16)
    is_member = (samples[:, None, :] == MEMBERS[None]).all(-1).any(-1)
    assert float(is_member.mean()) > 0.9


def test_predict_fn_names_an_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        BlackoutProcess(max_count=3).predict_fn(lambda xt, u: xt, "epsilon")


@pytest.mark.parametrize("prediction", [{}, {"epsilon": 1.0}, {"missing": 1.0, "x0": 1.0}])
def test_convert_predictions_needs_exactly_one_known_kind(prediction):
    with pytest.raises(KeyError, match="exactly one of"):
        BlackoutProcess(max_count=3).convert_predictions(prediction, jnp.zeros((1, 2)), 0.5)


@pytest.mark.parametrize("max_count", [0, 2.5, True])
def test_max_count_must_be_a_positive_int(max_count):
    with pytest.raises(ValueError, match="max_count"):
        BlackoutProcess(max_count=max_count)


def test_t_end_must_be_positive():
    with pytest.raises(ValueError, match="t_end"):
        BlackoutSchedule(t_end=0.0)


def test_methods_match_the_corruption_process_protocol(hackable):
    protocol = hackable.corruption.CorruptionProcess
    for name in ("corrupt", "sample_from_invariant", "convert_predictions", "get_schedule_info"):
        expected = list(inspect.signature(getattr(protocol, name)).parameters)
        assert list(inspect.signature(getattr(BlackoutProcess, name)).parameters) == expected


def test_time_broadcasts_as_hackable_diffusion_does(hackable):
    from blackout_jax.interop.hackable_diffusion import _right_broadcast  # noqa: PLC0415

    time = jnp.array([0.1, 0.9])
    np.testing.assert_array_equal(
        _right_broadcast(time, 4), hackable.jax_helpers.bcast_right(time, 4)
    )


def test_a_nested_process_drives_counts_beside_a_gaussian_image(hackable):
    nested = hackable.multimodal.NestedProcess(
        processes={
            "counts": BlackoutProcess(max_count=MAX_COUNT),
            "image": hackable.corruption.GaussianProcess(
                schedule=hackable.corruption.CosineSchedule()
            ),
        }
    )
    x0 = {
        "counts": jnp.full((3, 5), 7, jnp.int32),
        "image": jnp.zeros((3, 4, 4, 1), jnp.float32),
    }
    time = {"counts": jnp.array([0.0, 0.5, 1.0]), "image": jnp.array([0.1, 0.5, 0.9])}
    xt, targets = nested.corrupt(jax.random.key(3), x0, time)
    assert xt["counts"].shape == (3, 5) and int(xt["counts"][0].min()) == 7
    np.testing.assert_array_equal(targets["counts"]["missing"], 7 - xt["counts"])
    prior = nested.sample_from_invariant(jax.random.key(4), x0)
    assert prior["counts"].dtype == jnp.int32 and prior["counts"].shape == (3, 5)
    converted = nested.convert_predictions(
        {"counts": {"missing": jnp.ones((3, 5))}, "image": {"epsilon": jnp.zeros((3, 4, 4, 1))}},
        xt,
        time,
    )
    np.testing.assert_allclose(converted["counts"]["x0"], xt["counts"] + 1.0)
    info = nested.get_schedule_info(time)
    np.testing.assert_allclose(info["counts"]["alpha"], BlackoutSchedule().alpha(time["counts"]))
