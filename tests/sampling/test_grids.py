"""Optimised sampling grids: the measured variance, the exact subset search, the grid files."""

from __future__ import annotations

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blackout_jax import grids, observation_times, process
from blackout_jax.run import grid_files

MAX_COUNT = 16
RHO = 0.37
T_END = 10.0


def product_mean(counts, t):
    """Exact ``E[n_0 - n_t | n_t]`` for data with iid ``Binomial(N, rho)`` counts."""
    p = jnp.exp(-t).reshape((-1,) + (1,) * (counts.ndim - 1))
    return (MAX_COUNT - counts).astype(jnp.float32) * RHO * (1.0 - p) / (1.0 - RHO * p)


def product_examples(num: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).binomial(MAX_COUNT, RHO, (num, size))


def test_missing_variance_matches_the_closed_form() -> None:
    """``V(t) = D E[N - n_t] q_t (1 - q_t)``: ``n_0 - n_t | n_t ~ Binomial(N - n_t, q_t)``."""
    times = jnp.array([0.05, 0.4, 1.0, 3.0])
    estimate = np.asarray(
        grids.missing_variance(jax.random.key(0), product_mean, product_examples(2000), times)
    )
    p = np.exp(-np.asarray(times, np.float64))
    q = RHO * (1 - p) / (1 - RHO * p)
    exact = 16 * MAX_COUNT * (1 - RHO * p) * q * (1 - q)
    np.testing.assert_allclose(estimate, exact, rtol=0.05)


def _brute_force(times: np.ndarray, variance: np.ndarray, num_steps: int) -> float:
    last = len(times) - 1
    best = np.inf
    for inner in itertools.combinations(range(1, last), num_steps - 1):
        chosen = np.array((0, *inner, last))
        best = min(best, float(np.sum(grids.step_errors(times[chosen], variance[chosen]))))
    return best


@pytest.mark.parametrize("num_steps", [1, 3, 5])
def test_best_subset_is_the_least_proxy_of_all_subsets(num_steps: int) -> None:
    times = np.asarray(observation_times(9, T_END))
    variance = np.random.default_rng(num_steps).uniform(0.0, 50.0, times.shape).astype(np.float32)
    chosen = np.asarray(grids.best_subset(times, variance, num_steps))
    assert chosen[0] == 0 and chosen[-1] == 9 and len(chosen) == num_steps + 1
    assert np.all(np.diff(chosen) > 0)
    found = float(np.sum(grids.step_errors(times[chosen], variance[chosen])))
    np.testing.assert_allclose(found, _brute_force(times, variance, num_steps), rtol=1e-5)


def test_optimised_grid_is_valid_and_deterministic() -> None:
    def optimise(seed: int) -> np.ndarray:
        times, variance = grids.optimised_grid(
            jax.random.key(seed),
            product_mean,
            product_examples(300),
            8,
            t_end=T_END,
            num_candidates=200,
            num_probes=16,
        )
        assert variance.shape == times.shape
        return np.asarray(times)

    times = optimise(1)
    assert times.shape == (9,)
    assert times[0] == 0.0 and times[-1] == pytest.approx(T_END)
    assert np.all(np.diff(times) > 0)
    assert np.all(np.isin(times, np.asarray(observation_times(200, T_END))))
    np.testing.assert_array_equal(times, optimise(1))
    # Spending its steps where V is large, it beats the logit grid on its own proxy.
    assert proxy(times) < proxy(np.asarray(observation_times(8, T_END)))


def proxy(times: np.ndarray) -> float:
    """``sum_k r_k^2 V(t_k)`` of a grid, ``V`` measured at its own points."""
    variance = grids.missing_variance(
        jax.random.key(2), product_mean, product_examples(300), times[1:]
    )
    return float(np.sum(grids.step_errors(times, jnp.concatenate([jnp.zeros(1), variance]))))


def test_step_errors_last_step_has_r_one() -> None:
    times = jnp.array([0.0, 0.5, 2.0])
    errors = np.asarray(grids.step_errors(times, jnp.array([0.0, 3.0, 7.0])))
    r = float(process.bridge_probability(0.5, 2.0))
    np.testing.assert_allclose(errors, [3.0, r**2 * 7.0], rtol=1e-6)


def test_bad_arguments_name_the_argument() -> None:
    times = observation_times(5, T_END)
    with pytest.raises(ValueError, match="num_steps"):
        grids.best_subset(times, jnp.ones(6), 6)
    with pytest.raises(ValueError, match="num_probes"):
        grids.optimised_grid(
            jax.random.key(0), product_mean, product_examples(4), 2, t_end=T_END, num_probes=1
        )
    with pytest.raises(ValueError, match="examples"):
        grids.missing_variance(jax.random.key(0), product_mean, -np.ones((3, 2)), times[1:])


def test_grid_file_round_trip_and_errors(tmp_path) -> None:
    times = np.asarray(observation_times(7, T_END))
    path = tmp_path / "grid.json"
    grid_files.save_grid(path, times, {"step": 1000, "proxy": 1.5})
    loaded, info = grid_files.load_grid(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, times)
    assert info == {"step": 1000, "proxy": 1.5}
    with pytest.raises(ValueError, match="times"):
        grid_files.save_grid(tmp_path / "bad.json", times[::-1])
    (tmp_path / "no_times.json").write_text(json.dumps({"info": {}}))
    with pytest.raises(ValueError, match="'times'"):
        grid_files.load_grid(tmp_path / "no_times.json")
    (tmp_path / "decreasing.json").write_text(json.dumps({"times": [0.0, 2.0, 1.0]}))
    with pytest.raises(ValueError, match="increasing"):
        grid_files.load_grid(tmp_path / "decreasing.json")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not a JSON grid file"),
        (b"{times", "not a JSON grid file"),
        (bytes(range(256)), "not a JSON grid file"),
        (b'{"times": [0.0, 3.0, 1.0, 7.0, 10.0]}', "strictly increasing"),
        (b'{"times": [0.0, 1.0, 1.0, 5.0, 10.0]}', "strictly increasing"),
        (b'{"times": [0.0, NaN, 2.0, 5.0, 10.0]}', "must be finite"),
        (b'{"times": [0.0, {}, 2.0, 5.0, 10.0]}', "times"),
        (b'{"times": [1.0, 2.0, 3.0, 5.0, 10.0]}', "must start at 0"),
        (b'{"times": [0.0, 0.5, 1.0, 2.0, 5.0]}', "ends at 5.0, not at t_end = 10.0"),
        (b'{"times": [0.0, 1.0, 10.0]}', "a grid of 2 steps, not of sampling.num_steps = 4"),
    ],
    ids=[
        "empty",
        "not JSON",
        "binary junk",
        "random values",
        "not increasing",
        "NaN",
        "not numbers",
        "not from 0",
        "another t_end",
        "another length",
    ],
)
def test_a_grid_file_of_another_grid_is_one_line_naming_it(tmp_path, content, expected) -> None:
    path = tmp_path / "grid.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        grid_files.load_grid(path, num_steps=4, t_end=10.0)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message
    grid_files.save_grid(path, observation_times(4, 10.0))
    assert len(grid_files.load_grid(path, num_steps=4, t_end=10.0)[0]) == 5
