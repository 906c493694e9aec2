"""Why the tests release compiled programs (tests/conftest.py): each holds memory mappings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from tests.conftest import mapping_limit, memory_mappings


def _program(x: jax.Array, scale: int) -> jax.Array:
    return jnp.cumsum(jnp.sin(x) * scale) + jnp.sort(x)


def _compile_and_run(scales: range) -> None:
    for scale in scales:  # one program per scale
        jax.jit(_program, static_argnums=1)(jnp.arange(8.0), scale).block_until_ready()


def test_compiled_programs_hold_memory_mappings_until_the_caches_are_cleared():
    if memory_mappings() is None:
        pytest.skip("the system does not list memory mappings (/proc/self/maps)")
    assert mapping_limit() > 0
    _compile_and_run(range(1, 3))  # what the first compilations of a process set up for good
    jax.clear_caches()
    before = memory_mappings()
    _compile_and_run(range(3, 23))
    held = memory_mappings()
    assert held >= before + 20 * 3  # code, constants and data of each program's kernels
    jax.clear_caches()
    assert memory_mappings() <= before + (held - before) // 4
