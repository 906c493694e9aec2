"""The compilation cache's size bound: set by default, taken from the environment, kept by JAX's
eviction, and safe for processes that share the folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import pytest

from blackout_jax.run import compilation_cache
from tests.cli import REPO_ROOT, cpu_environment, run_main
from tests.conftest import jax_settings

COMPILE_PROGRAMS = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp
    from blackout_jax.run import compilation_cache
    print(compilation_cache.enable_persistent_cache(), jax.config.jax_compilation_cache_max_size)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    for k in range(first, first + int(sys.argv[1])):
        program = jax.jit(lambda x, k=k: jnp.sin(x) * (k + 1.5) + jnp.cos(x) ** k)
        assert float(program(jnp.ones(7 + k)).sum()) == float(program(jnp.ones(7 + k)).sum())
    """
)


def _compile_into(folder, num_programs, max_size=None, first=0):
    env = cpu_environment()
    env["JAX_COMPILATION_CACHE_DIR"] = str(folder)
    env.pop("JAX_COMPILATION_CACHE_MAX_SIZE", None)
    if max_size is not None:
        env["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(max_size)
    return subprocess.Popen(
        [sys.executable, "-c", COMPILE_PROGRAMS, str(num_programs), str(first)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finished(process) -> str:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def _entry_sizes(folder) -> list[int]:
    return [path.stat().st_size for path in folder.iterdir() if path.name.endswith("-cache")]


def test_the_bound_is_two_gib_unless_the_environment_says_otherwise():
    assert compilation_cache.max_size_from_environment({}) == 2 * 2**30
    variable = compilation_cache.MAX_SIZE_VARIABLE
    assert compilation_cache.max_size_from_environment({variable: "4096"}) == 4096
    assert compilation_cache.max_size_from_environment({variable: " -1 "}) == -1
    assert compilation_cache.max_size_from_environment({variable: "0"}) == 0


@pytest.mark.parametrize("value", ["2GB", "-2", "", "1.5"])
def test_a_bound_that_is_not_a_number_of_bytes_is_named(value):
    variable = compilation_cache.MAX_SIZE_VARIABLE
    with pytest.raises(ValueError, match=f"{variable}={value!r} is not a number of bytes"):
        compilation_cache.max_size_from_environment({variable: value})


def test_the_command_names_a_bad_bound_before_jax_reads_it(monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_MAX_SIZE", "2G")
    result = run_main("--config=configs/tiny.py", "--mode=show_config", own_process=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: JAX_COMPILATION_CACHE_MAX_SIZE='2G' is not a number of bytes (an integer >= 0, "
        "or -1 for no bound)"
    ]


def test_enabling_the_cache_sets_the_bound(tmp_path):
    with jax_settings(jax_compilation_cache_dir=None, jax_compilation_cache_max_size=-1):
        folder = compilation_cache.enable_persistent_cache(
            {"JAX_COMPILATION_CACHE_DIR": str(tmp_path)}
        )
        assert folder == str(tmp_path)
        assert jax.config.jax_compilation_cache_max_size == compilation_cache.DEFAULT_MAX_SIZE
        compilation_cache.enable_persistent_cache(
            {"JAX_COMPILATION_CACHE_DIR": str(tmp_path), "JAX_COMPILATION_CACHE_MAX_SIZE": "77"}
        )
        assert jax.config.jax_compilation_cache_max_size == 77


def test_the_folder_stays_under_a_small_bound(tmp_path):
    """Entries of about 2.5 KB each (6 programs, their inputs, their sums): unbounded
    all are kept; under an 8 KB bound the least recently used are evicted."""
    unbounded, bounded, bound = tmp_path / "unbounded", tmp_path / "bounded", 8192
    first, second = _compile_into(unbounded, 6, max_size=-1), _compile_into(bounded, 6, bound)
    _finished(first)
    assert _finished(second).split() == [str(bounded), str(bound)]
    assert sum(_entry_sizes(unbounded)) > bound  # the case the bound is for
    sizes = _entry_sizes(bounded)
    assert 0 < len(sizes) < len(_entry_sizes(unbounded))
    assert sum(sizes) <= bound, sizes
    assert (bounded / ".lockfile").exists()  # JAX's file lock of the folder


def test_two_processes_compiling_into_one_folder_both_succeed(tmp_path):
    folder = tmp_path / "shared"
    processes = [_compile_into(folder, 6) for _ in range(2)]  # the same programs, the default bound
    for process in processes:
        assert _finished(process).split() == [str(folder), str(compilation_cache.DEFAULT_MAX_SIZE)]
    assert _entry_sizes(folder)
    assert (folder / ".lockfile").exists()


def test_entries_written_without_a_bound_do_not_break_the_writes_of_a_bounded_process(tmp_path):
    folder = tmp_path / "mixed"
    _finished(_compile_into(folder, 2, max_size=-1))  # unbounded: no access-time files
    entry, access_time = compilation_cache.ENTRY_SUFFIX, compilation_cache.ACCESS_TIME_SUFFIX
    entries = sorted(path.name for path in folder.iterdir() if path.name.endswith(entry))
    assert len(entries) >= 2 and not list(folder.glob(f"*{access_time}"))
    modified = (folder / entries[0]).stat().st_mtime_ns
    assert compilation_cache.add_missing_access_times(str(folder)) == len(entries)
    stamp = (folder / entries[0].replace(entry, access_time)).read_bytes()
    assert int.from_bytes(stamp, "little") == modified
    assert compilation_cache.add_missing_access_times(str(folder)) == 0
    assert compilation_cache.add_missing_access_times(str(tmp_path / "absent")) == 0

    # Through the command's set-up: a bounded process after an unbounded one writes its own
    # programs without a warning (before, each write failed with a FileNotFoundError warning).
    second = tmp_path / "mixed_again"
    _finished(_compile_into(second, 2, max_size=-1))
    process = _compile_into(second, 2, max_size=2**30, first=2)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "Error writing persistent compilation cache entry" not in stderr
    written = len(list(second.glob(f"*{entry}")))
    assert written > len(entries) and written == len(list(second.glob(f"*{access_time}")))
