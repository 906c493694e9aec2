"""Tests of blackout_jax.metrics.count_imputation against brute-force posterior sums."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from blackout_jax.metrics.count_baselines import PerGeneNegativeBinomial
from blackout_jax.metrics.count_imputation import (
    count_errors,
    impute_gene_mean,
    impute_mixture_posterior_mean,
    impute_nb_posterior_mean,
    impute_zero,
    mask_nonzero_entries,
    thin_counts,
    unthin_nb_posterior_mean,
    unthin_rescale,
)
from blackout_jax.metrics.count_mixture import NegativeBinomialMixture


def _counts(num_cells: int = 200, num_genes: int = 15, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.exp(rng.normal(0.5, 1.0, size=num_genes))
    return rng.negative_binomial(2.0, 2.0 / (2.0 + means), size=(num_cells, num_genes))


def test_mask_hides_the_given_share_of_nonzero_entries_only():
    counts = _counts()
    observed, mask = mask_nonzero_entries(counts, 0.1, seed=3)
    num_nonzero = np.count_nonzero(counts)
    assert mask.sum() == round(0.1 * num_nonzero)
    assert np.all(counts[mask] > 0)
    assert np.all(observed[mask] == 0)
    np.testing.assert_array_equal(observed[~mask], counts[~mask])
    _, same_mask = mask_nonzero_entries(counts, 0.1, seed=3)
    np.testing.assert_array_equal(same_mask, mask)
    _, other_mask = mask_nonzero_entries(counts, 0.1, seed=4)
    assert np.any(other_mask != mask)
    assert not mask_nonzero_entries(counts, 0.0, seed=0)[1].any()
    with pytest.raises(ValueError, match="fraction"):
        mask_nonzero_entries(counts, 1.5, seed=0)


def test_simple_imputations_fill_only_the_masked_entries():
    counts = _counts()
    train = _counts(seed=1)
    observed, mask = mask_nonzero_entries(counts, 0.2, seed=0)
    model = PerGeneNegativeBinomial.fit(train)
    zero = impute_zero(observed, mask)
    gene_mean = impute_gene_mean(observed, mask, train)
    posterior = impute_nb_posterior_mean(observed, mask, model)
    for imputed in (zero, gene_mean, posterior):
        np.testing.assert_array_equal(imputed[~mask], counts[~mask])
    assert np.all(zero[mask] == 0)
    columns = np.nonzero(mask)[1]
    np.testing.assert_allclose(gene_mean[mask], train.mean(axis=0)[columns])
    np.testing.assert_allclose(posterior[mask], model.mean[columns])
    with pytest.raises(ValueError, match="mask must be a bool array"):
        impute_zero(observed, mask.astype(int))


def test_mixture_posterior_uses_only_the_visible_entries():
    mean = np.array([[0.5, 6.0, 1.0], [5.0, 0.5, 3.0]])
    size = np.array([[2.0, np.inf, 1.0], [3.0, 1.5, np.inf]])
    weights = np.array([0.4, 0.6])
    mixture = NegativeBinomialMixture(log_weights=np.log(weights), mean=mean, size=size)
    observed = np.array([[4, 0, 2], [0, 7, 0], [1, 1, 1]])
    mask = np.array([[False, True, False], [True, False, True], [False, False, False]])
    imputed = impute_mixture_posterior_mean(observed, mask, mixture)
    for cell in range(3):
        log_joint = np.log(weights).copy()
        for component in range(2):
            for gene in np.flatnonzero(~mask[cell]):
                mu, r = mean[component, gene], size[component, gene]
                y = observed[cell, gene]
                if np.isinf(r):
                    log_joint[component] += stats.poisson.logpmf(y, mu)
                else:
                    log_joint[component] += stats.nbinom.logpmf(y, r, r / (r + mu))
        posterior = np.exp(log_joint - special.logsumexp(log_joint))
        for gene in np.flatnonzero(mask[cell]):
            assert imputed[cell, gene] == pytest.approx(posterior @ mean[:, gene], rel=1e-10)
    np.testing.assert_array_equal(imputed[~mask], observed[~mask])


@pytest.mark.parametrize(
    "mu, size, keep",
    [(3.0, 0.7, 0.3), (12.0, 4.0, 0.1), (1.5, 20.0, 0.5), (5.0, np.inf, 0.3)],
)
def test_unthinning_posterior_mean_matches_brute_force_sum(mu, size, keep):
    model = PerGeneNegativeBinomial(mean=np.array([mu]), size=np.array([size]))
    thinned = np.arange(0, 12)[:, None]
    estimate = unthin_nb_posterior_mean(thinned, keep, model)[:, 0]
    totals = np.arange(0, 2000)
    if np.isinf(size):
        prior = stats.poisson.pmf(totals, mu)
    else:
        prior = stats.nbinom.pmf(totals, size, size / (size + mu))
    for y, value in zip(thinned[:, 0], estimate, strict=True):
        joint = prior * stats.binom.pmf(y, totals, keep)
        assert value == pytest.approx(np.sum(totals * joint) / np.sum(joint), rel=1e-9)


def test_posterior_mean_beats_rescaling_on_negative_binomial_data():
    counts = _counts(num_cells=2000, num_genes=10, seed=5)
    model = PerGeneNegativeBinomial.fit(counts)
    thinned = thin_counts(counts, 0.2, seed=0)
    assert np.all(thinned <= counts)
    rescaled = count_errors(unthin_rescale(thinned, 0.2), counts)
    posterior = count_errors(unthin_nb_posterior_mean(thinned, 0.2, model), counts)
    assert posterior["rmse"] < rescaled["rmse"]
    assert posterior["num_entries"] == counts.size
    np.testing.assert_array_equal(unthin_rescale(thinned, 1.0), thinned)


def test_count_errors_closed_form():
    estimate = np.array([[0.0, 3.0], [np.e - 1.0, 5.0]])
    truth = np.array([[1.0, 3.0], [0.0, 1.0]])
    mask = np.array([[True, False], [True, True]])
    errors = count_errors(estimate, truth, mask)
    assert errors["mae"] == pytest.approx((1.0 + (np.e - 1.0) + 4.0) / 3.0)
    assert errors["rmse"] == pytest.approx(np.sqrt((1.0 + (np.e - 1.0) ** 2 + 16.0) / 3.0))
    log_gaps = np.array([np.log(2.0), 1.0, np.log(6.0) - np.log(2.0)])
    assert errors["log1p_mae"] == pytest.approx(log_gaps.mean())
    assert errors["log1p_rmse"] == pytest.approx(np.sqrt(np.mean(log_gaps**2)))
    assert errors["num_entries"] == 3
    assert count_errors(truth, truth)["rmse"] == 0.0
    with pytest.raises(ValueError, match="no entry"):
        count_errors(estimate, truth, np.zeros((2, 2), bool))
