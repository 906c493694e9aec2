"""The FLOP counter against XLA's own cost analysis on the CPU.

Single operations must agree exactly: both count the multiply-adds that read real input
elements (padding and zero-inserted holes excluded). For a whole network XLA also counts the
element-wise operations (one FLOP per element) that the counter leaves out, so its figure lies
between the counter's and the counter's plus an upper bound on the element-wise work (the
largest operand or result size of every other operation in the jaxpr, summed).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from blackout_jax import models
from experiments.benchmarks import flops

NHWC = ("NHWC", "HWIO", "NHWC")
TINY = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)


def xla_flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis["flops"])


def conv(**kwargs):
    return lambda x, w: jax.lax.conv_general_dilated(x, w, dimension_numbers=NHWC, **kwargs)


@pytest.mark.parametrize(
    "fn, lhs, rhs",
    [
        (conv(window_strides=(1, 1), padding="SAME"), (2, 4, 4, 3), (3, 3, 3, 5)),
        (conv(window_strides=(1, 1), padding="SAME"), (1, 7, 5, 2), (3, 3, 2, 4)),
        (conv(window_strides=(2, 2), padding="VALID"), (2, 9, 9, 3), (3, 3, 3, 5)),
        (
            conv(window_strides=(1, 1), padding=[(2, 2), (2, 2)], lhs_dilation=(2, 2)),
            (2, 4, 4, 3),
            (3, 3, 3, 5),
        ),
        (
            conv(window_strides=(1, 1), padding="SAME", feature_group_count=3),
            (2, 5, 5, 3),
            (4, 4, 1, 3),
        ),
        (lambda x, w: x @ w, (2, 7, 3), (3, 5)),
        (lambda q, k: jnp.einsum("bic,bjc->bij", q, k), (2, 16, 8), (2, 16, 8)),
    ],
)
def test_single_operations_match_xla_exactly(fn, lhs, rhs):
    x, w = jnp.ones(lhs), jnp.ones(rhs)
    assert flops.count_flops(fn, x, w).total == xla_flops(fn, x, w)


def test_valid_taps_closed_forms():
    # 'SAME' 3x3 on n positions: 3n taps minus the two that fall on the padding.
    assert flops.valid_taps(4, 3, 4, padding=(1, 1)) == 10
    assert flops.valid_taps(32, 3, 32, padding=(1, 1)) == 94
    # Stride 2 'VALID' on 9 positions: 4 outputs, every tap real.
    assert flops.valid_taps(9, 3, 4, stride=2) == 12
    # Transposed: each of the 4 real inputs meets each of the 3 taps once.
    assert flops.valid_taps(4, 3, 9, padding=(2, 2), lhs_dilation=2) == 12


def test_kinds_of_a_dense_layer_and_attention():
    count = flops.count_flops(
        lambda x, w: jnp.einsum("bic,bjc->bij", x @ w, x), jnp.ones((2, 4, 3)), jnp.ones((3, 3))
    )
    assert count == flops.FlopCount(convolution=0, dense=2 * 8 * 3 * 3, attention=2 * 2 * 16 * 3)


def elementwise_bound(fn, *args) -> int:
    """Sum over non-matmul operations of their largest operand or result size."""

    def walk(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                continue
            subs = [s for v in eqn.params.values() for s in flops._sub_jaxprs(v)]
            if subs:
                total += sum(walk(s) for s in subs)
                continue
            sizes = [
                math.prod(v.aval.shape)
                for v in (*eqn.invars, *eqn.outvars)
                if hasattr(v.aval, "shape")
            ]
            total += max(sizes, default=0)
        return total

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.fixture(scope="module")
def tiny_network():
    model = models.create_model(
        TINY, image_shape=(8, 8, 1), max_count=16, t_end=10.0, num_steps=1000, seed=0
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    counts = jnp.asarray(np.random.default_rng(0).integers(0, 17, (2, 8, 8, 1)), jnp.int32)
    t = jnp.asarray([0.5, 3.0], jnp.float32)

    def forward(params, counts, t):
        return nnx.merge(graphdef, params, rest)(counts, t)

    def forward_backward(params, counts, t):
        return jax.value_and_grad(lambda p: jnp.sum(forward(p, counts, t)))(params)

    return {False: forward, True: forward_backward}, (params, counts, t)


@pytest.mark.parametrize("backward", [False, True])
def test_network_count_brackets_xla(tiny_network, backward):
    """XLA's count of the lowered program lies in [counted, counted + element-wise bound].

    The lowered (not yet optimised) program is used for the upper end: after optimisation,
    XLA's CPU fusion may copy a cheap element-wise producer into several consumers, and the
    compiled program's count then includes those copies.
    """
    functions, args = tiny_network
    fn = functions[backward]
    counted = flops.network_flops(
        TINY, image_shape=(8, 8, 1), batch_size=2, max_count=16, t_end=10.0, backward=backward
    )
    assert counted == flops.count_flops(fn, *args)
    analysis = jax.jit(fn).lower(*args).cost_analysis()
    lowered = float(analysis["flops"])
    assert counted.total <= lowered <= counted.total + elementwise_bound(fn, *args)


def test_network_count_is_below_compiled_xla(tiny_network):
    functions, args = tiny_network
    counted = flops.count_flops(functions[False], *args)
    assert counted.convolution > 0 and counted.dense > 0 and counted.attention > 0
    assert counted.total <= xla_flops(functions[False], *args)


def test_backward_is_about_three_forward():
    kwargs = dict(image_shape=(8, 8, 1), batch_size=2, max_count=16, t_end=10.0)
    forward = flops.network_flops(TINY, **kwargs).total
    both = flops.network_flops(TINY, backward=True, **kwargs).total
    # Backward = 2 x forward for every layer, except that the layers reading only the inputs
    # need no input gradient: the input convolution (3x3, 1 -> nf at 8x8), the residual
    # pyramid's strided convolution (3x3, stride 2, 1 -> nf, 4x4 outputs) and the first time
    # embedding layer (nf -> 4 nf).
    nf, batch = TINY["nf"], 2
    input_conv = 2 * batch * 1 * nf * flops.valid_taps(8, 3, 8, padding=(1, 1)) ** 2
    pyramid_conv = 2 * batch * 1 * nf * flops.valid_taps(9, 3, 4, stride=2) ** 2
    time_dense = 2 * batch * nf * 4 * nf
    assert both == 3 * forward - (input_conv + pyramid_conv + time_dense)


def test_bad_batch_size_is_named():
    with pytest.raises(ValueError, match="batch_size"):
        flops.network_flops(TINY, image_shape=(8, 8, 1), batch_size=0)


def test_while_loop_with_matmuls_is_refused():
    def loop(x):
        return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] @ c[1]), (0, x))

    with pytest.raises(ValueError, match="while"):
        flops.count_flops(loop, jnp.ones((2, 2)))


def test_while_loop_without_matmuls_counts_nothing():
    def loop(x, w):
        _, y = jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 2.0), (0, x))
        return y @ w

    assert flops.count_flops(loop, jnp.ones((2, 3)), jnp.ones((3, 4))).total == 2 * 2 * 3 * 4
