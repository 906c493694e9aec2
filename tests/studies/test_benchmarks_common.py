"""The benchmark helpers that read compiled programs (importable without sys.path edits)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.benchmarks import common


def test_kernel_counts_of_a_small_program():
    a = jnp.ones((16, 16))
    compiled = jax.jit(lambda a, b: (a @ b, jnp.sum(jnp.sin(a)))).lower(a, a).compile()
    counts = common.hlo_op_counts(compiled)
    assert counts["parameter"] == 2
    assert counts["dot"] + counts["fusion"] >= 2
    summary = common.kernel_summary(counts)
    kernels = sum(n for op, n in counts.items() if op not in common.NOT_KERNELS)
    assert summary.startswith(f"{kernels} kernels (")
    assert "parameter" not in summary


def test_xla_flops_of_a_matmul():
    a = jnp.ones((8, 4))
    compiled = jax.jit(lambda a, b: a @ b).lower(a, a.T).compile()
    assert common.xla_flops(compiled) == 2 * 8 * 4 * 8
