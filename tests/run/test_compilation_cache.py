"""The persistent compilation cache: the folder chosen by the environment, and a cache hit."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest

from blackout_jax.run import compilation_cache


def test_default_folder_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compilation_cache.cache_dir_from_environment({}) == os.path.join(
        str(tmp_path), ".cache", "blackout_jax", "xla"
    )


def test_environment_overrides_the_folder(tmp_path):
    environ = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")}
    assert compilation_cache.cache_dir_from_environment(environ) == str(tmp_path / "mine")


@pytest.mark.parametrize("value", ["", "off", "OFF", "none", "0", "  off "])
def test_environment_turns_it_off(value):
    environ = {"JAX_COMPILATION_CACHE_DIR": value}
    assert compilation_cache.cache_dir_from_environment(environ) is None


def test_a_run_writes_its_programs_to_the_folder(tmp_path):
    """In a fresh process (JAX opens its cache once, at the first compilation)."""
    folder = tmp_path / "xla"
    script = (
        "import jax, jax.numpy as jnp\n"
        "from blackout_jax.run import compilation_cache\n"
        "print(compilation_cache.enable_persistent_cache())\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)\n"
        "jax.jit(lambda x: jnp.sin(x) * 3.0 + 0.25).lower(jnp.ones(7)).compile()\n"
    )
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(folder), JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == str(folder)
    assert any(folder.iterdir())


def test_off_leaves_jax_config_alone():
    previous = jax.config.jax_compilation_cache_dir
    assert compilation_cache.enable_persistent_cache({"JAX_COMPILATION_CACHE_DIR": "off"}) is None
    assert jax.config.jax_compilation_cache_dir == previous
