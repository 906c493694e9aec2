"""The mixture student of blackout_jax.distill: exact laws, draws against them, and a student
distilled from the dataset oracle that reproduces members where the one-call sampler cannot."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from blackout_jax import dataset_oracle, distill, observation_times, process, sample

N = 4


def _log_births_reference(births, room, rate, r):
    """``log((1 - f) Binomial(b; m, r) + f Binomial(b; m + 1, r))`` with scipy."""
    y = np.clip(rate, 0.0, room)
    m = np.floor(y)
    f = y - m
    return np.log((1 - f) * stats.binom.pmf(births, m, r) + f * stats.binom.pmf(births, m + 1, r))


def test_births_log_prob_matches_scipy():
    births = np.array([0, 1, 2, 3, 2, 0, 4])
    room = np.array([4, 4, 3, 3, 2, 0, 4])
    rate = np.array([0.3, 1.7, 2.0, 2.4, 5.0, 1.0, 3.999])
    s, t = 0.4, 1.3
    log_r, log_one_minus_r = distill._log_bridge_terms(jnp.asarray(s), jnp.asarray(t), 1)
    got = distill.births_log_prob(births, room, rate, log_r, log_one_minus_r)
    r = float(process.bridge_probability(s, t))
    np.testing.assert_allclose(got, _log_births_reference(births, room, rate, r), rtol=1e-5)


def test_one_component_student_is_the_teacher_bridge_step():
    """J = 1 and yhat_1 = the teacher's (whole-number) prediction: the student's one-step law is
    the binomial_bridge step's, for every outcome of a small state."""
    nt = jnp.array([[0, 1, 3]])
    yhat = jnp.array([[2.0, 3.0, 1.0]])  # rounds to itself; the last one is clipped to room 1
    s, t = 0.3, 0.9
    outcomes = jnp.array(list(itertools.product(range(3), range(1, 5), range(3, 5))))
    nts = jnp.broadcast_to(nt, outcomes.shape)
    yhats = jnp.broadcast_to(yhat, outcomes.shape)
    teacher = distill.bridge_step_log_prob(outcomes, nts, yhats, s, t, max_count=N)
    student = distill.student_log_prob(
        outcomes, nts, yhats[:, None], jnp.zeros((len(outcomes), 1)), s, t, max_count=N
    )
    np.testing.assert_allclose(student, teacher, rtol=1e-6, atol=1e-6)
    bridge = process.bridge_log_prob(outcomes, nts, nts + jnp.minimum(yhats, N - nts), s, t)
    np.testing.assert_allclose(teacher, bridge.sum(axis=1), rtol=1e-6, atol=1e-6)
    assert float(jax.scipy.special.logsumexp(teacher)) == pytest.approx(0.0, abs=1e-5)


def test_unbiased_bridge_step_sums_to_one_and_equal_components_change_nothing():
    nt = jnp.array([[0, 2]])
    yhat = jnp.array([[1.3, 0.6]])
    outcomes = jnp.array(list(itertools.product(range(N + 1), range(2, N + 1))))
    nts, yhats = jnp.broadcast_to(nt, outcomes.shape), jnp.broadcast_to(yhat, outcomes.shape)
    one = distill.bridge_step_log_prob(outcomes, nts, yhats, 0.0, 2.0, max_count=N)
    assert float(jnp.sum(jnp.exp(one))) == pytest.approx(1.0, abs=1e-5)
    one = distill.bridge_step_log_prob(
        outcomes, nts, yhats, 0.2, 2.0, max_count=N, rounding="unbiased"
    )
    assert float(jnp.sum(jnp.exp(one))) == pytest.approx(1.0, abs=1e-5)
    three = distill.student_log_prob(
        outcomes,
        nts,
        jnp.repeat(yhats[:, None], 3, axis=1),
        jnp.broadcast_to(jnp.array([0.3, -1.0, 2.0]), (len(outcomes), 3)),
        0.2,
        2.0,
        max_count=N,
    )
    np.testing.assert_allclose(three, one, rtol=1e-5, atol=1e-6)


def test_student_step_draws_follow_the_student_law():
    """Chi-square of 20,000 draws of a two-component student on two counts against the exact
    joint law; the components make the births correlated."""
    num = 20_000
    nt = jnp.zeros((num, 2), jnp.int32)
    rates = jnp.broadcast_to(jnp.array([[3.0, 0.4], [0.5, 2.6]]), (num, 2, 2))
    logits = jnp.broadcast_to(jnp.log(jnp.array([0.3, 0.7])), (num, 2))
    s, t = 0.5, 1.5
    draws = np.asarray(
        distill.student_step(jax.random.key(3), nt, rates, logits, s, t, max_count=N)
    )
    outcomes = jnp.array(list(itertools.product(range(N + 1), repeat=2)))
    exact = np.exp(
        distill.student_log_prob(
            outcomes,
            jnp.zeros_like(outcomes),
            jnp.broadcast_to(rates[0], (len(outcomes), 2, 2)),
            jnp.broadcast_to(logits[0], (len(outcomes), 2)),
            s,
            t,
            max_count=N,
        )
    )
    assert float(exact.sum()) == pytest.approx(1.0, abs=1e-5)
    observed = np.array([np.sum(np.all(draws == o, axis=1)) for o in np.asarray(outcomes)])
    expected = num * np.asarray(exact, np.float64)
    support = expected > 5
    assert observed[~support].sum() <= 30
    statistic = np.sum((observed[support] - expected[support]) ** 2 / expected[support])
    assert stats.chi2.sf(statistic, support.sum() - 1) > 1e-3
    assert np.corrcoef(draws.T)[0, 1] < -0.3  # one component or the other: correlated births


def test_teacher_trajectories_end_in_the_samplers_draws():
    members = jnp.array([[[1, 4], [0, 2]], [[3, 0], [2, 1]]])
    oracle = dataset_oracle(members)
    times = observation_times(6, 8.0)
    states = distill.teacher_trajectories(jax.random.key(0), oracle, (5, 2, 2), times, max_count=N)
    assert states.shape == (7, 5, 2, 2)
    drawn = sample(jax.random.key(0), oracle, (5, 2, 2), times, max_count=N)
    np.testing.assert_array_equal(states[0], drawn)
    assert np.all(np.diff(np.asarray(states), axis=0) <= 0)  # counts only grow in reverse time


def test_grid_positions_and_refined_grid():
    fine = np.asarray(observation_times(10, 10.0))
    student = np.array([0.0, 1.7, 10.0], np.float32)
    merged = distill.refined_grid(student, fine)
    assert len(merged) == 12
    np.testing.assert_array_equal(merged[distill.grid_positions(merged, student)], student)
    with pytest.raises(ValueError, match=r"times\[1\] = 1.7"):
        distill.grid_positions(fine, student)


def _exact_oracle_student(members, counts, t, s):
    """The exact transition of the dataset ``members (J, D)`` as a mixture student: component
    ``j`` is member ``j`` (``yhat_j = x_j - n_t``) weighted by its posterior given ``n_t``,
    ``log pi_j = sum_i log Binomial(n_{t,i}; x_{j,i}, p_t) + const``."""
    del s
    members = members.astype(jnp.float32)
    log_p = -t[:, None, None]
    log_one_minus_p = process.log_one_minus_survival(t)[:, None, None]
    logits = process.binomial_log_prob(
        counts[:, None, :], members[None], log_p, log_one_minus_p
    ).sum(axis=2)
    return members[None] - counts[:, None, :], jnp.maximum(logits, -1e30)


def _member_fraction(samples, members):
    flat = np.asarray(samples).reshape(len(samples), -1)
    return float(np.mean(np.any(np.all(flat[:, None] == members[None], axis=-1), axis=1)))


@pytest.mark.parametrize("num_calls", [1, 2, 4])
def test_the_oracles_exact_mixture_student_makes_members_in_few_calls(num_calls):
    """50 sklearn digits: the mixture student with one component per member and the exact
    posterior weights draws only members at 1, 2 and 4 calls (from zeros: a prior draw can hold
    a count above every member's), where the one-call bridge driven
    by the same oracle cannot (its births are independent per count); and on the oracle's own
    trajectories its distillation loss is below that of the one-component student driven by
    the oracle's mean."""
    from sklearn.datasets import load_digits

    members = load_digits().images[:50].reshape(50, 64).astype(np.int32)
    oracle = dataset_oracle(members)
    times = np.asarray(observation_times(num_calls, 10.0))
    student = jax.tree_util.Partial(_exact_oracle_student, jnp.asarray(members))
    drawn = distill.sample_student(
        jax.random.key(4), student, (256, 64), times, max_count=16, start="zeros"
    )
    undistilled = sample(jax.random.key(4), oracle, (256, 64), times, max_count=16)
    assert _member_fraction(drawn, members) == 1.0
    assert _member_fraction(undistilled, members) < 0.5

    fine = distill.refined_grid(times, observation_times(50, 10.0))
    trajectories = distill.teacher_trajectories(
        jax.random.key(1), oracle, (64, 64), fine, max_count=16
    )
    states = trajectories[distill.grid_positions(fine, times)]

    def one_component(counts, t, s):
        return oracle(counts, t)[:, None], jnp.zeros((len(counts), 1))

    exact = distill.distillation_loss(student, states, times, max_count=16)
    independent = distill.distillation_loss(one_component, states, times, max_count=16)
    assert float(exact) < float(independent) - 1.0
