"""Tests of blackout_jax.run.network: the data of a config, checked against its network."""

from __future__ import annotations

import numpy as np
import pytest

from blackout_jax.run import config as config_lib
from blackout_jax.run import network


def _config(ch_mult: tuple[int, ...], **data: object) -> config_lib.ExperimentConfig:
    values = config_lib.default_dict()
    values["data"].update(data)
    values["model"].update(ch_mult=list(ch_mult), attn_resolutions=[], num_res_blocks=1, nf=8)
    return config_lib.parse(values)


def _counts_file(tmp_path, shape: tuple[int, ...]) -> str:
    path = tmp_path / f"counts_{'x'.join(map(str, shape))}.npy"
    np.save(path, np.random.default_rng(0).integers(0, 10, size=shape))
    return str(path)


def test_data_the_network_fits_loads(tmp_path):
    path = _counts_file(tmp_path, (10, 12, 8, 1))
    dataset = network.load_data(_config((1, 2, 2), name="counts", path=path, num_test=2))
    assert dataset.shape.example_shape == (12, 8, 1)


@pytest.mark.parametrize(
    ("shape", "ch_mult", "message"),
    [
        (
            (10, 12, 8, 1),
            (1, 2, 2, 2),
            r"counts_10x12x8x1\.npy.*height 12 is not divisible by .* 8",
        ),
        ((10, 8, 6, 1), (1, 2, 2), r"counts_10x8x6x1\.npy.*width 6 is not divisible by .* 4"),
    ],
)
def test_sizes_the_network_cannot_halve_name_the_file(tmp_path, shape, ch_mult, message):
    path = _counts_file(tmp_path, shape)
    with pytest.raises(ValueError, match=message):
        network.load_data(_config(ch_mult, name="counts", path=path, num_test=2))


def test_digits_too_small_for_the_network_name_the_source():
    with pytest.raises(ValueError, match=r"load_digits \(digits\).*height 8 .* 16"):
        network.load_data(_config((1, 2, 2, 2, 2)))


def test_a_max_count_the_samplers_cannot_handle_is_refused_naming_the_file(tmp_path):
    counts = np.random.default_rng(0).integers(0, 10, size=(10, 8, 8, 1))
    counts[3, 2, 1, 0] = 2**30
    path = tmp_path / "huge.npy"
    np.save(path, counts)
    config = _config((1, 2), name="counts", path=str(path), num_test=2, max_count=0)
    with pytest.raises(ValueError, match=r"huge\.npy.*max count is 1073741824.* up to 16777216"):
        network.load_data(config)
    counts[3, 2, 1, 0] = network.LARGEST_MAX_COUNT
    np.save(path, counts)
    assert network.load_data(config).shape.max_count == network.LARGEST_MAX_COUNT


def test_the_split_is_one_line_and_more_than_half_held_out_is_refused(tmp_path):
    path = _counts_file(tmp_path, (10, 4, 4, 1))
    dataset = network.load_data(_config((1,), name="counts", path=path, num_test=3, max_count=0))
    line = network.split_summary(_config((1,), name="counts", path=path, num_test=3), dataset)
    assert line == (
        "data: 7 training and 3 held-out examples (data.num_test, 30% held out); max count 9 "
        "(inferred from the data; declare it with data.max_count)"
    )
    half = network.load_data(_config((1,), name="counts", path=path, num_test=5))
    assert "5 held-out examples (data.num_test, 50% held out)" in network.split_summary(
        _config((1,), name="counts", path=path, num_test=5), half
    )
    values = {"name": "counts", "path": path, "num_test": 6}
    large = network.load_data(_config((1,), **values))
    message = f"data.num_test = 6 holds out 60% of the 10 examples of {path}, leaving 4 for"
    with pytest.raises(ValueError, match=message):
        network.split_summary(_config((1,), **values), large)
    allowed = _config((1,), **values, allow_large_test_share=True)
    assert network.split_summary(allowed, large).startswith("data: 4 training and 6 held-out")
    digits = _config((1,))
    assert network.split_summary(digits, network.load_data(digits)) == (
        "data: 1500 training and 297 held-out examples (data.num_test, 17% held out); max count "
        "16 (fixed by digits)"
    )
