"""Tests of blackout_jax.run.digests: checksums of a checkpoint's arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blackout_jax.run import digests


def _state(value: float) -> dict:
    return {
        "step": jnp.asarray(int(value), jnp.int32),
        "params": {"dense": {"kernel": jnp.full((3, 2), value, jnp.float32)}},
        "rng": jax.random.key_data(jax.random.key(7)),
    }


def test_digests_change_with_any_word_and_not_with_the_devices():
    state = _state(2.0)
    saved = digests.digests(state)
    assert set(saved) == {"step", "params.dense.kernel", "rng"}
    assert saved == digests.digests(jax.tree.map(np.asarray, state))
    for index in range(6):  # one word changed, anywhere: one bit, the lowest
        changed = np.array(state["params"]["dense"]["kernel"]).ravel()
        changed.view(np.uint32)[index] ^= 1
        other = {**state, "params": {"dense": {"kernel": changed.reshape(3, 2)}}}
        assert digests.digests(other)["params.dense.kernel"] != saved["params.dense.kernel"]
    swapped = np.array(state["params"]["dense"]["kernel"]).ravel()
    swapped[0], swapped[1] = 1.0, 3.0  # the same words in another order: the plain sum agrees
    base = np.array(swapped)
    base[0], base[1] = 3.0, 1.0
    assert digests.digests({"a": swapped}) != digests.digests({"a": base})


def test_verify_names_the_array_that_differs_and_passes_without_digests():
    saved = {"digests": digests.digests(_state(1.0))}
    digests.verify_digests(_state(1.0), saved, step=4)
    digests.verify_digests(_state(2.0), {}, step=4)  # saved before digests: nothing to check
    with pytest.raises(
        digests.DamagedCheckpointError, match="array params.dense.kernel of checkpoint 4"
    ):
        digests.verify_digests(_state(2.0), saved, step=4)
    ema = {"ema_params": {"float32": jnp.arange(3.0)}}
    stored = {"digests": digests.digests(ema)}
    digests.verify_digests(ema["ema_params"], stored, step=4, prefix="ema_params")
    with pytest.raises(digests.DamagedCheckpointError, match="ema_params.float32"):
        digests.verify_digests({"float32": jnp.ones(3)}, stored, step=4, prefix="ema_params")
