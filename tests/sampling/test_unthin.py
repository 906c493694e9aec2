"""Un-thinning with the dataset oracle: samples of x given y ~ Binomial(x, q) follow the exact
posterior over the dataset's members, w_j ∝ prod_i Binomial(y_i; x_{j,i}, q)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import blackout_jax as bj
from blackout_jax import schedule

MAX_COUNT = 8
NUM_SAMPLES = 1500  # draws of x for one observation
NUM_STEPS = 200


@pytest.fixture(scope="module")
def data():
    """Eight count vectors of six entries in 0..8: small enough that a thinned observation
    leaves several members plausible."""
    return np.random.default_rng(0).integers(0, MAX_COUNT + 1, (8, 6))


def _posterior(data, observed, q):
    """The exact posterior ``w_j ∝ prod_i Binomial(y_i; x_{j,i}, q)`` over the members."""
    log_weights = stats.binom.logpmf(observed[None, :], data, q).sum(axis=1)
    weights = np.exp(log_weights - log_weights.max())
    return weights / weights.sum()


def _uncertain_observation(data, q):
    """Of 20 thinnings of random members (fixed seed), the one whose posterior is widest."""
    rng = np.random.default_rng(1)
    candidates = [rng.binomial(data[rng.integers(len(data))], q) for _ in range(20)]

    def entropy(y):
        w = _posterior(data, y, q)
        w = w[w > 0]
        return -(w * np.log(w)).sum()

    return max(candidates, key=entropy)


def _member_frequencies(data, samples, weights):
    """``(share of samples that are members of weight >= 5 / S, chi-square p-value)``.

    The chi-square compares how often each such member is drawn, among the samples that are
    one, with its renormalised posterior weight; the rest (non-members and members too
    unlikely to be expected five times) is what the first number leaves out.
    """
    matches = (samples[:, None, :] == data[None, :, :]).all(axis=-1)  # (S, J)
    likely = weights >= 5.0 / len(samples)
    counts = matches[:, likely].sum(axis=0)
    expected = weights[likely] / weights[likely].sum() * counts.sum()
    return counts.sum() / len(samples), stats.chisquare(counts, expected).pvalue


def _unthin(data, observed, q, *, method="trapezoidal_bridge", seed=0, steps=NUM_STEPS):
    return np.asarray(
        bj.unthin(
            jax.random.key(seed),
            bj.dataset_oracle(data),
            jnp.asarray(observed),
            q,
            max_count=MAX_COUNT,
            num_steps=steps,
            method=method,
        )
    )


@pytest.mark.parametrize("q", [0.5, 0.1])
def test_samples_follow_the_exact_posterior_over_members(data, q):
    observed = _uncertain_observation(data, q)
    weights = _posterior(data, observed, q)
    assert weights.max() < 0.9  # several members are plausible: the test can fail
    samples = _unthin(data, np.tile(observed, (NUM_SAMPLES, 1)), q)
    assert (samples >= observed).all() and samples.max() <= MAX_COUNT
    share, pvalue = _member_frequencies(data, samples, weights)
    assert share >= 0.98
    assert pvalue > 1e-3


def test_each_example_follows_the_law_of_its_own_survival(data):
    # One observation, half the batch thinned with q = 0.5 and half with q = 0.1: the two
    # posteriors differ (the halves would fail each other's test), each half matches its own.
    observed = np.array([2, 2, 2, 2, 1, 0])
    half = NUM_SAMPLES // 2
    survival = np.repeat([0.5, 0.1], half)
    samples = _unthin(data, np.tile(observed, (2 * half, 1)), survival, steps=100)
    for rows, q, other in ((slice(None, half), 0.5, 0.1), (slice(half, None), 0.1, 0.5)):
        share, pvalue = _member_frequencies(data, samples[rows], _posterior(data, observed, q))
        assert share >= 0.98 and pvalue > 1e-3
        _, wrong = _member_frequencies(data, samples[rows], _posterior(data, observed, other))
        assert wrong < 1e-6


@pytest.mark.parametrize("method", bj.METHODS)
def test_every_method_only_adds_units_and_is_deterministic(data, method):
    observed = np.stack([np.minimum(data[j], 3) for j in range(4)])
    survival = np.array([0.5, 0.1, 0.05, 0.9])
    first = _unthin(data, observed, survival, method=method, steps=20)
    assert first.dtype == np.int32 and first.shape == observed.shape
    assert (first >= observed).all() and first.max() <= MAX_COUNT
    np.testing.assert_array_equal(first, _unthin(data, observed, survival, method=method, steps=20))


def test_bridge_methods_draw_dataset_members(data):
    # The reference bridge too lands on members; its rounding to the nearest whole number is
    # what biases the frequencies (see the docstring of blackout_jax.unthin).
    rng = np.random.default_rng(2)
    truth = data[rng.integers(len(data), size=200)]
    samples = _unthin(data, rng.binomial(truth, 0.1), 0.1, method="binomial_bridge")
    members = (samples[:, None, :] == data[None, :, :]).all(axis=-1).any(axis=-1)
    assert members.mean() >= 0.98


def test_survival_one_returns_the_input_without_calling_the_network(data):
    def no_network(counts, t):
        raise AssertionError("predict_fn must not be called")

    observed = data[:3].astype(np.int64)
    for survival in (1.0, np.ones(3)):
        result = bj.unthin(
            jax.random.key(0), no_network, observed, survival, max_count=MAX_COUNT, num_steps=5
        )
        assert result.dtype == jnp.int32
        np.testing.assert_array_equal(result, observed)
    # Mixed with thinned examples, the unthinned ones come back as given.
    survival = np.array([1.0, 0.2, 1.0])
    result = _unthin(data, np.minimum(observed, 2), survival, steps=20)
    np.testing.assert_array_equal(result[[0, 2]], np.minimum(observed, 2)[[0, 2]])


def test_unthin_under_jit_matches_eager(data):
    observed = jnp.asarray(np.minimum(data[:4], 2))

    def run(q):
        return bj.unthin(
            jax.random.key(3),
            bj.dataset_oracle(data),
            observed,
            q,
            max_count=MAX_COUNT,
            num_steps=10,
            method="binomial_bridge",
        )

    np.testing.assert_array_equal(jax.jit(run)(jnp.float32(0.3)), run(np.float32(0.3)))


def test_unthin_checks_its_arguments(data):
    observed = np.minimum(data[:2], 2)

    def call(observed=observed, survival=0.5, **options):
        arguments = {"max_count": MAX_COUNT, "num_steps": 5} | options
        oracle = bj.dataset_oracle(data)
        return bj.unthin(jax.random.key(0), oracle, observed, survival, **arguments)

    cases = [
        ({"survival": 0.0}, r"survival must be in \(0, 1\]; found 0.0"),
        ({"survival": 1.5}, r"survival must be in \(0, 1\]; found 1.5"),
        ({"survival": np.array([0.5, -0.1])}, r"must be in \(0, 1\]; found -0.1 at index \(1,\)"),
        ({"survival": np.array([0.5, np.nan])}, r"survival must be finite; found nan"),
        ({"survival": np.full(3, 0.5)}, r"one value per example, shape \(2,\), got shape \(3,\)"),
        ({"survival": np.full((2, 1), 0.5)}, r"got shape \(2, 1\)"),
        ({"observed": observed + 7}, r"observed must be <= max_count=8; found 9 at index"),
        ({"observed": observed - 3}, r"observed must be non-negative; found -1 at index \(0, 0\)"),
        ({"observed": observed + 0.5}, r"observed must hold whole numbers; found"),
        ({"observed": np.zeros((0, 6))}, r"shape must be a non-empty tuple"),
        ({"method": "euler"}, r"method must be one of"),
        ({"grid": "subgrid"}, r"grid must be one of \('logit',\), got 'subgrid'"),
        ({"num_steps": 0}, r"num_steps must be an integer >= 1, got 0"),
        ({"max_count": 0}, r"max_count must be an int >= 1"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message):
            call(**arguments)


@pytest.mark.parametrize("q", [0.99, 0.5, 0.1, 1e-4])
def test_unthinning_grid_runs_from_the_observation_time_to_zero(q):
    times = np.asarray(schedule.unthinning_times(q, 6), np.float64)
    assert times.shape == (7,) and times[0] == 0.0
    np.testing.assert_allclose(times[-1], -np.log(q), rtol=1e-6)
    assert (np.diff(times) > 0).all()
    # logit(p_t) evenly spaced over k = 1..K; at t_1 all but exp(-15) of the missing units born.
    logits = -np.log(np.expm1(times[1:]))
    np.testing.assert_allclose(np.diff(logits), np.diff(logits)[0], rtol=1e-3)
    np.testing.assert_allclose(-np.expm1(-times[1]), np.exp(-15.0) * (1 - q), rtol=1e-4)
    per_example = np.asarray(schedule.unthinning_times(np.array([q, 0.3]), 6))
    np.testing.assert_allclose(per_example[0], times, rtol=1e-6)
    np.testing.assert_allclose(per_example[1], schedule.unthinning_times(0.3, 6), rtol=1e-6)
    np.testing.assert_allclose(schedule.unthinning_times(q, 1), [0.0, -np.log(q)], rtol=1e-6)
