"""The chunked sampler driver: reuse of finished chunks, labels per chunk, device independence."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import blackout_jax as bj
from blackout_jax.run import chunked
from tests.cli import REPO_ROOT, cpu_environment

DATA = np.random.default_rng(5).integers(0, 5, size=(6, 2, 2, 1))
TIMES = bj.observation_times(40, 10.0)


def _generate(chunk_dir=None, num_samples=10):
    oracle = bj.dataset_oracle(DATA)
    return chunked.generate_samples(
        jax.random.key(7),
        lambda labels: oracle,
        num_samples=num_samples,
        example_shape=(2, 2, 1),
        times=TIMES,
        max_count=4,
        chunk_size=4,
        chunk_dir=chunk_dir,
    )


def test_chunks_are_written_and_reused(tmp_path):
    fresh = _generate()
    assert fresh.shape == (10, 2, 2, 1) and fresh.dtype == np.int32
    assert fresh.min() >= 0 and fresh.max() <= 4
    first = _generate(tmp_path)
    np.testing.assert_array_equal(first, fresh)  # writing chunks does not change the draws
    assert sorted(os.listdir(tmp_path)) == [f"chunk_0000{i}.npy" for i in range(3)]

    # An interrupted run left chunks 0 and 1: they are read back, chunk 2 is drawn again.
    os.remove(tmp_path / "chunk_00002.npy")
    marked = np.load(tmp_path / "chunk_00000.npy")
    marked[0] = 3  # a mark that only a reused chunk can carry
    np.save(tmp_path / "chunk_00000.npy", marked)
    resumed = _generate(tmp_path)
    np.testing.assert_array_equal(resumed[0], np.full((2, 2, 1), 3))
    np.testing.assert_array_equal(resumed[1:], fresh[1:])


def test_a_damaged_chunk_is_named_and_drawn_again(tmp_path, capsys):
    fresh = _generate()
    _generate(tmp_path)
    (tmp_path / "chunk_00001.npy").write_bytes(b"\x93NUMPY truncated")
    resumed = _generate(tmp_path)
    np.testing.assert_array_equal(resumed, fresh)  # the same key draws the same chunk
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "chunk_00001.npy" in warnings[0]
    np.testing.assert_array_equal(np.load(tmp_path / "chunk_00001.npy"), fresh[4:8])


@pytest.mark.parametrize(
    ("value", "shown"),
    [(-7.5, "-7.5"), (np.nan, "nan"), (2.5, "2.5"), (5.0, "5.0"), (-1, "-1")],
)
def test_a_chunk_that_holds_no_counts_is_named_and_drawn_again(tmp_path, capsys, value, shown):
    """A chunk is read back only if it holds whole numbers in 0..max_count (4 here)."""
    fresh = _generate()
    _generate(tmp_path)
    bad = np.load(tmp_path / "chunk_00001.npy").astype(np.float64 if value != -1 else np.int64)
    bad[2, 1, 0, 0] = value
    np.save(tmp_path / "chunk_00001.npy", bad)
    resumed = _generate(tmp_path)
    np.testing.assert_array_equal(resumed, fresh)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), warnings
    assert "chunk_00001.npy" in warnings[0] and f"holds {shown} at (2, 1, 0, 0)" in warnings[0]
    assert "0..4" in warnings[0]
    np.testing.assert_array_equal(np.load(tmp_path / "chunk_00001.npy"), fresh[4:8])


def test_chunk_of_another_size_is_refused(tmp_path):
    np.save(tmp_path / "chunk_00000.npy", np.zeros((3, 2, 2, 1), np.int32))
    try:
        _generate(tmp_path)
    except ValueError as error:
        assert "chunk_00000.npy" in str(error) and "(3, 2, 2, 1)" in str(error)
    else:
        raise AssertionError("a chunk of the wrong shape was accepted")


def test_run_in_chunks_pads_keys_and_trims():
    inputs = np.arange(10 * 3).reshape(10, 3)
    key = jax.random.key(3)

    def compute(chunk_key, rows):
        noise = jax.random.randint(chunk_key, (rows.shape[0], 1), 0, 1000)
        return rows * 2 + 1000 * noise

    out = chunked.run_in_chunks(key, compute, num_examples=10, chunk_size=4, inputs=(inputs,))
    assert out.shape == (10, 3)
    for index in range(3):
        rows = slice(4 * index, min(4 * index + 4, 10))
        noise = np.asarray(jax.random.randint(jax.random.fold_in(key, index), (4, 1), 0, 1000))
        expected = inputs[rows] * 2 + 1000 * noise[: len(inputs[rows])]
        np.testing.assert_array_equal(out[rows], expected)


def test_run_in_chunks_refuses_inputs_of_another_length():
    try:
        chunked.run_in_chunks(
            jax.random.key(0), lambda k, x: x, num_examples=5, chunk_size=2, inputs=(np.ones(4),)
        )
    except ValueError as error:
        assert "inputs[0] has 4 rows" in str(error)
    else:
        raise AssertionError("inputs of the wrong length were accepted")


LABELS = np.arange(10) % 3


def _labelled_samples(sharding=None, labels=LABELS) -> np.ndarray:
    """Class-conditional chunks on ``sharding``.

    The label adds that many expected births (capped at the room left), so a label that
    reached another row than its own would change the draws.
    """
    oracle = bj.dataset_oracle(DATA)

    def labelled(chunk_labels, counts, t):
        return jnp.minimum(oracle(counts, t) + chunk_labels[:, None, None, None], 4 - counts)

    return chunked.generate_samples(
        jax.random.key(9),
        lambda labels: Partial(labelled, labels),
        num_samples=10,
        example_shape=(2, 2, 1),
        times=TIMES,
        max_count=4,
        chunk_size=4,
        sharding=sharding,
        labels=labels,
    )


def _unthinned(sharding=None) -> np.ndarray:
    """Un-thinning of 8 examples, each with its own survival (and so its own grid)."""
    survival = np.linspace(0.2, 1.0, 8)
    truth = np.tile(DATA, (2, 1, 1, 1))[:8]
    observed = np.random.default_rng(3).binomial(truth, survival[:, None, None, None])
    return np.asarray(
        bj.unthin(
            jax.random.key(10),
            bj.dataset_oracle(DATA),
            observed,
            survival,
            max_count=4,
            num_steps=20,
            sharding=sharding,
        )
    )


def test_labelled_samples_and_unthinning_sharded_over_four_devices_equal_one_device():
    script = textwrap.dedent(
        """
        import json, jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from tests.run.test_chunked import _labelled_samples, _unthinned
        assert jax.device_count() == 4
        sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
        for array in (_labelled_samples(sharding), _unthinned(sharding)):
            print(json.dumps(array.ravel().tolist()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=cpu_environment(num_devices=4),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    labelled, unthinned = (np.array(json.loads(line)) for line in result.stdout.splitlines()[-2:])
    one_device = _labelled_samples()
    np.testing.assert_array_equal(labelled, one_device.ravel())
    np.testing.assert_array_equal(unthinned, _unthinned().ravel())
    # the labels reach the draws: other labels, same key, other samples
    assert not np.array_equal(one_device, _labelled_samples(labels=np.zeros(10, int)))


def test_samples_and_imputations_sharded_over_four_devices_equal_one_device():
    script = textwrap.dedent(
        """
        import json, jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import blackout_jax as bj
        from blackout_jax.run import chunked
        data = np.random.default_rng(5).integers(0, 5, size=(6, 2, 2, 1))
        mesh = Mesh(np.array(jax.devices()), ("data",))
        oracle = bj.dataset_oracle(data)
        out = chunked.generate_samples(
            jax.random.key(7), lambda labels: oracle, num_samples=10, example_shape=(2, 2, 1),
            times=bj.observation_times(40, 10.0), max_count=4, chunk_size=4,
            sharding=NamedSharding(mesh, P("data")))
        assert jax.device_count() == 4
        counts = np.tile(data, (2, 1, 1, 1))[:8]
        observed = np.arange(counts.size).reshape(counts.shape) % 3 == 0
        imputed = [
            bj.impute(
                jax.random.key(8), bj.dataset_oracle(data), counts, observed,
                bj.observation_times(40, 10.0), max_count=4, **conditioning,
                sharding=NamedSharding(mesh, P("data")))
            for conditioning in ({"resamples": 3}, {"particles": 3})
        ]
        print(json.dumps(out.ravel().tolist()))
        print(json.dumps(np.concatenate(imputed).ravel().tolist()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=cpu_environment(num_devices=4),
        capture_output=True,
        text=True,
        check=True,
    )
    sampled, imputed = (np.array(json.loads(line)) for line in result.stdout.splitlines()[-2:])
    np.testing.assert_array_equal(sampled, _generate().ravel())
    counts = np.tile(DATA, (2, 1, 1, 1))[:8]
    observed = np.arange(counts.size).reshape(counts.shape) % 3 == 0
    one_device = [
        bj.impute(
            jax.random.key(8), bj.dataset_oracle(DATA), counts, observed, TIMES, max_count=4, **kw
        )
        for kw in ({"resamples": 3}, {"particles": 3})
    ]
    np.testing.assert_array_equal(imputed, np.concatenate(one_device).ravel())
