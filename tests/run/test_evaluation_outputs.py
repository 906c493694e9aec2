"""The names of the results of ``--mode=evaluate``."""

from __future__ import annotations

from blackout_jax.run import folder

SAMPLES = "binomial_bridge_100steps_logit_seed0_3f9a0c12"


def test_the_keyed_name_follows_the_samples_and_hashes_the_bound_settings():
    name = folder.evaluation_draws(seed=0, settings={"num_time_samples": 16}, sample_draws=SAMPLES)
    assert name.startswith("binomial_bridge_100steps_logit_seed0_") and name != SAMPLES
    assert len(name.rsplit("_", 1)[1]) == 8
    other_bound = folder.evaluation_draws(
        seed=0, settings={"num_time_samples": 8}, sample_draws=SAMPLES
    )
    other_samples = folder.evaluation_draws(
        seed=0, settings={"num_time_samples": 16}, sample_draws=SAMPLES.replace("3f9a", "3f9b")
    )
    assert len({name, other_bound, other_samples}) == 3


def test_without_samples_the_name_says_bound_and_seed():
    name = folder.evaluation_draws(seed=7, settings={"num_time_samples": 16})
    assert name.startswith("bound_seed7_") and len(name) == len("bound_seed7_") + 8
    assert name == folder.evaluation_draws(seed=7, settings={"num_time_samples": 16})


def test_the_outputs_are_the_keyed_file_and_the_latest_copy(tmp_path):
    keyed, latest = folder.evaluation_outputs(tmp_path, 6, SAMPLES)
    assert keyed == tmp_path / "eval" / f"metrics_6_{SAMPLES}.json"
    assert latest == tmp_path / "eval" / "metrics_6.json"
