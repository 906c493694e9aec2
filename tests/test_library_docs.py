"""docs/library.md runs as written and its results are what the text says they are.

The ```python blocks of the page are executed in order in one namespace (once per module);
each test checks one claim of the text against that namespace.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import blackout_jax as bj

LIBRARY_PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "library.md"
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
    """The bodies of the page's ```python blocks, in order."""
    return _PYTHON_BLOCK.findall(text)


@pytest.fixture(scope="module")
def page() -> dict:
    """The namespace after running every python block of docs/library.md."""
    namespace: dict = {"__name__": "library_md"}
    blocks = python_blocks(LIBRARY_PAGE.read_text())
    assert len(blocks) >= 8, f"expected the page's 8 python blocks, found {len(blocks)}"
    for index, block in enumerate(blocks):
        code = compile(block, f"{LIBRARY_PAGE}:python block {index}", "exec")
        exec(code, namespace)  # noqa: S102 - the page's own code
    return namespace


def test_python_blocks_are_found_in_order():
    text = "```python\na = 1\n```\ntext\n```\nnot python\n```\n```python\nb = a\n```\n"
    blocks = python_blocks(text)
    assert blocks == ["a = 1\n", "b = a\n"]


def test_the_data_has_the_stated_shape_and_range(page):
    counts = page["counts"]
    assert counts.shape == (600, 20) and counts.dtype == np.int32
    assert counts.min() >= 0 and page["max_count"] == 2 * counts.max()
    assert page["train"].shape == (500, 20) and page["held_out"].shape == (100, 20)
    # overdispersed: every gene's variance exceeds its mean, so a Poisson model fits badly
    assert np.all(counts.var(axis=0) > counts.mean(axis=0))


def held_out_poisson_bits(page: dict) -> float:
    """Per-gene Poisson with the training means: held-out -log-likelihood in bits per count."""
    rates = page["train"].mean(axis=0)
    return float(-stats.poisson.logpmf(page["held_out"], rates).mean() / np.log(2.0))


def test_the_page_scores_the_poisson_baseline_right(page):
    assert page["poisson_bits"] == pytest.approx(held_out_poisson_bits(page), rel=1e-6)


def test_the_baseline_bound_is_the_poisson_likelihood(page):
    # yhat = lam (1 - p_t) is the exact conditional mean of independent Poisson genes: the
    # bound equals their log-likelihood up to Monte Carlo noise and the prior term
    nats = bj.nll_bound(
        jax.random.key(5),
        page["baseline_fn"],
        jnp.asarray(page["held_out"]),
        t_end=page["T_END"],
        max_count=page["max_count"],
        num_time_samples=64,
    )
    bits = float(bj.bits_per_dim(nats, num_dims=20).mean())
    assert bits == pytest.approx(held_out_poisson_bits(page), abs=0.03)


def test_the_trained_bound_is_below_the_poisson_baseline(page):
    poisson = held_out_poisson_bits(page)
    assert np.isfinite(page["network_bits"])
    assert 0.0 < page["network_bits"] < poisson - 0.3, (page["network_bits"], poisson)


def test_training_lowered_the_loss(page):
    keys = bj.example_keys(jax.random.key(7), jnp.arange(500))
    untrained_params = page["nnx"].split(
        page["CountPredictor"](20, hidden=64, rngs=page["nnx"].Rngs(0))
    )[1]
    loss = page["batch_loss"]
    before = float(loss(untrained_params, keys, page["train_counts"]))
    after = float(loss(page["params"], keys, page["train_counts"]))
    assert after < before


def test_predict_fn_honours_the_contract(page):
    counts = jnp.asarray(page["held_out"][:5])
    t = jnp.array([1e-4, 0.1, 1.0, 5.0, 10.0], jnp.float32)
    yhat = page["predict_fn"](counts, t)
    assert yhat.shape == counts.shape and yhat.dtype == jnp.float32
    assert bool(jnp.all(yhat > 0)) and bool(jnp.all(jnp.isfinite(yhat)))
    assert isinstance(page["predict_fn"], jax.tree_util.Partial)


def test_samples_have_the_shape_and_range(page):
    samples = np.asarray(page["samples"])
    assert samples.shape == (64, 20) and samples.dtype == np.int32
    assert samples.min() >= 0 and samples.max() <= page["max_count"]
    # grown from zeros into counts of the data's scale
    assert 0.5 * page["counts"].mean() < samples.mean() < 2.0 * page["counts"].mean()


def test_imputation_keeps_the_observed_entries(page):
    imputed = np.asarray(page["imputed"])
    observed, held_out = page["observed"], page["held_out"]
    assert imputed.shape == held_out.shape and observed[:, :10].all() and not observed[:, 10:].any()
    np.testing.assert_array_equal(imputed[observed], held_out[observed])
    assert imputed.min() >= 0 and imputed.max() <= page["max_count"]


def test_unthinned_draws_are_at_least_the_observation(page):
    unthinned, thinned = np.asarray(page["unthinned"]), page["thinned"]
    assert unthinned.shape == thinned.shape
    assert np.all(unthinned >= thinned) and unthinned.max() <= page["max_count"]
    # the draws restore the units lost to thinning: their mean is near the data's
    assert unthinned.mean() == pytest.approx(page["held_out"].mean(), rel=0.25)
