"""Tests of the count baselines (count_likelihood, count_mixture, count_baselines) against SciPy
pmfs and simulated data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from blackout_jax.metrics.count_baselines import (
    PerGeneNegativeBinomial,
    PerGenePoisson,
    baseline_bits_per_entry,
)
from blackout_jax.metrics.count_likelihood import count_matrix
from blackout_jax.metrics.count_mixture import (
    NegativeBinomialMixture,
    fit_nb_mixture,
    select_mixture_components,
)


def _nb_mixture_counts(num_cells: int, num_genes: int, num_components: int, seed: int):
    """Cells from a mixture of per-gene NB components with well separated means."""
    rng = np.random.default_rng(seed)
    means = np.exp(rng.normal(-1.0, 1.5, size=(num_components, num_genes)))
    sizes = np.exp(rng.normal(0.5, 0.5, size=(num_components, num_genes)))
    labels = rng.integers(num_components, size=num_cells)
    rates = rng.gamma(sizes[labels], means[labels] / sizes[labels])
    return rng.poisson(rates)


def test_poisson_log_prob_equals_scipy_sum_with_floor_for_an_all_zero_gene():
    rng = np.random.default_rng(0)
    train = rng.poisson([0.3, 2.0, 7.5, 0.0], size=(50, 4))
    model = PerGenePoisson.fit(train, seed=0)
    np.testing.assert_allclose(model.rate[:3], train[:, :3].mean(axis=0))
    assert model.rate[3] == 0.5 / 50
    test = rng.poisson([0.3, 2.0, 7.5, 1.0], size=(20, 4))
    expected = stats.poisson.logpmf(test, model.rate[None, :]).sum(axis=1)
    np.testing.assert_allclose(model.log_prob(test), expected, rtol=1e-12)
    assert np.all(np.isfinite(model.log_prob(test)))


def test_negative_binomial_log_prob_equals_scipy_sum_and_falls_back_to_poisson():
    rng = np.random.default_rng(1)
    overdispersed = rng.negative_binomial(2.0, 2.0 / (2.0 + 3.0), size=(400, 3))
    underdispersed = rng.binomial(4, 0.5, size=(400, 1))  # variance < mean
    train = np.concatenate([overdispersed, underdispersed], axis=1)
    model = PerGeneNegativeBinomial.fit(train, seed=0)
    mean, variance = train.mean(axis=0), train.var(axis=0)
    np.testing.assert_allclose(model.size[:3], mean[:3] ** 2 / (variance[:3] - mean[:3]))
    assert np.isinf(model.size[3])
    test = rng.negative_binomial(2.0, 0.4, size=(30, 4))
    size, mean = model.size[:3], model.mean[:3]
    expected = stats.nbinom.logpmf(test[:, :3], size, size / (size + mean)).sum(axis=1)
    expected += stats.poisson.logpmf(test[:, 3], model.mean[3])
    np.testing.assert_allclose(model.log_prob(test), expected, rtol=1e-10)


def test_mixture_log_prob_equals_logsumexp_of_scipy_sums():
    rng = np.random.default_rng(2)
    mean = np.array([[0.5, 4.0, 2.0], [3.0, 0.2, 2.0]])
    size = np.array([[1.5, np.inf, 0.7], [10.0, 2.0, np.inf]])
    weights = np.array([0.3, 0.7])
    mixture = NegativeBinomialMixture(log_weights=np.log(weights), mean=mean, size=size)
    counts = rng.poisson(3.0, size=(25, 3))
    per_component = []
    for component in range(2):
        total = np.log(weights[component]) * np.ones(25)
        for gene in range(3):
            mu, r = mean[component, gene], size[component, gene]
            if np.isinf(r):
                total += stats.poisson.logpmf(counts[:, gene], mu)
            else:
                total += stats.nbinom.logpmf(counts[:, gene], r, r / (r + mu))
        per_component.append(total)
    expected = special.logsumexp(np.stack(per_component, axis=1), axis=1)
    np.testing.assert_allclose(mixture.log_prob(counts), expected, rtol=1e-10)
    responsibilities = mixture.responsibilities(counts)
    np.testing.assert_allclose(responsibilities.sum(axis=1), 1.0)


def test_em_never_lowers_the_training_log_likelihood():
    counts = _nb_mixture_counts(600, 40, 3, seed=3)
    for num_components in (2, 3, 5):
        _, log_likelihoods = fit_nb_mixture(
            counts, num_components, seed=0, tolerance=0.0, max_iterations=40
        )
        assert len(log_likelihoods) > 5
        gains = np.diff(log_likelihoods)
        assert np.all(gains >= -1e-9 * np.abs(log_likelihoods[1:])), gains.min()
        assert log_likelihoods[-1] > log_likelihoods[0]


def test_one_component_mixture_is_the_moment_negative_binomial():
    counts = _nb_mixture_counts(300, 20, 1, seed=4)
    mixture, _ = fit_nb_mixture(counts, 1, seed=0)
    single = PerGeneNegativeBinomial.fit(counts)
    np.testing.assert_allclose(mixture.mean[0], single.mean)
    np.testing.assert_allclose(mixture.log_prob(counts), single.log_prob(counts), rtol=1e-9)


def test_mixture_beats_single_negative_binomial_on_three_component_data():
    counts = _nb_mixture_counts(1500, 60, 3, seed=5)
    train, test = counts[:1200], counts[1200:]
    result = baseline_bits_per_entry(train, test, seed=0, candidates=(1, 2, 3, 5))
    assert result["baseline_nb_mixture_num_components"] >= 2
    assert result["baseline_nb_mixture_bits_per_dim"] < 0.95 * result["baseline_nb_bits_per_dim"]
    assert result["baseline_nb_bits_per_dim"] < result["baseline_poisson_bits_per_dim"]
    validation = result["baseline_nb_mixture_validation_bits_per_dim"]
    assert set(validation) == {"1", "2", "3", "5"}


def test_poisson_and_negative_binomial_agree_on_poisson_data():
    rng = np.random.default_rng(6)
    rates = np.exp(rng.normal(0.0, 1.0, size=50))
    train, test = rng.poisson(rates, size=(2000, 50)), rng.poisson(rates, size=(500, 50))
    result = baseline_bits_per_entry(train, test, seed=0, candidates=(1,))
    poisson, negative_binomial = (
        result["baseline_poisson_bits_per_dim"],
        result["baseline_nb_bits_per_dim"],
    )
    assert negative_binomial == pytest.approx(poisson, rel=2e-3)
    # The exact entropy rate of the true model, for scale: the fits are close to it.
    exact = -stats.poisson.logpmf(test, rates).sum() / (test.size * np.log(2))
    assert poisson == pytest.approx(exact, rel=5e-3)


def test_bits_per_entry_is_the_mean_negative_log2_probability():
    counts = _nb_mixture_counts(400, 10, 1, seed=7)
    train, test = counts[:300], counts[300:]
    result = baseline_bits_per_entry(train, test, seed=0, candidates=(1,))
    model = PerGenePoisson.fit(train)
    expected = -model.log_prob(test).sum() / (test.size * np.log(2))
    assert result["baseline_poisson_bits_per_dim"] == pytest.approx(expected, rel=1e-6)


def test_fits_are_deterministic_for_a_seed():
    counts = _nb_mixture_counts(300, 20, 2, seed=8)
    first, _ = fit_nb_mixture(counts, 3, seed=11)
    second, _ = fit_nb_mixture(counts, 3, seed=11)
    np.testing.assert_array_equal(first.mean, second.mean)
    np.testing.assert_array_equal(first.size, second.size)


def test_bad_counts_are_named_in_the_error():
    with pytest.raises(ValueError, match=r"train\[\(1, 0\)\] = -1"):
        PerGenePoisson.fit(np.array([[1, 2], [-1, 0]]))
    with pytest.raises(ValueError, match="whole numbers"):
        count_matrix(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        count_matrix(np.zeros(3))
    with pytest.raises(ValueError, match="same genes"):
        baseline_bits_per_entry(np.ones((4, 2), int), np.ones((4, 3), int))


def test_mixture_fit_refits_the_selected_number_of_components_on_all_cells():
    counts = _nb_mixture_counts(500, 30, 2, seed=9)
    mixture = NegativeBinomialMixture.fit(counts, seed=0, candidates=(1, 2, 4))
    best, validation_bits = select_mixture_components(counts, seed=0, candidates=(1, 2, 4))
    refitted, _ = fit_nb_mixture(counts, best, seed=0)
    assert mixture.num_components == best >= 2
    assert validation_bits[best] == min(validation_bits.values())
    np.testing.assert_array_equal(mixture.mean, refitted.mean)
    np.testing.assert_allclose(np.exp(mixture.log_weights).sum(), 1.0)
