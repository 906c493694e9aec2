"""Floating-point operations of a network, counted from its shapes on any backend.

XLA's ``compiled.cost_analysis()["flops"]`` is exact on CPU but misses the convolutions that a
GPU backend hands to cuDNN (custom calls), so it cannot measure model FLOP utilisation there.
This module counts the multiply-adds of every convolution and matrix product of a traced
function (its jaxpr, the same on every backend), following XLA's own convention:

* **convolution** ``conv_general_dilated``: ``2 * B * (C_in / groups) * C_out * V`` where
  ``V = prod_d V_d`` and ``V_d`` counts, along spatial axis ``d``, the (output position, kernel
  tap) pairs whose tap lands on a real input element: not on padding, and not on a hole left by
  ``lhs_dilation`` (a transposed convolution). A ``"SAME"`` 3x3 convolution on a 4x4 map thus
  counts ``10 * 10`` taps per channel pair, not ``16 * 9``; on 32x32 the difference is 6%.
* **dense** (``dot_general`` without batch axes, the dense and 1x1 layers):
  ``2 * prod(free lhs) * prod(free rhs) * prod(contracted)``;
* **attention** (``dot_general`` with batch axes, ``q k^T`` and ``a v``): the same formula
  times ``prod(batch axes)``.

Element-wise work (normalisation, activations, sums, FIR filters written as shifted slices) is
not counted: XLA counts it as one FLOP per element, a few percent of the total for these
networks. Forward+backward: :func:`network_flops` with ``backward=True`` counts the traced
gradient program itself (for a convolution or dense layer, the backward pass is about twice
the forward, the usual "3 x forward" rule; the first layer needs no input gradient, so the
count is slightly below 3 x forward).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from blackout_jax.models import ncsnpp


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs by kind of operation; ``total`` is their sum."""

    convolution: int = 0
    dense: int = 0
    attention: int = 0

    @property
    def total(self) -> int:
        return self.convolution + self.dense + self.attention

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(
            self.convolution + other.convolution,
            self.dense + other.dense,
            self.attention + other.attention,
        )

    def scaled(self, factor: int) -> FlopCount:
        return FlopCount(self.convolution * factor, self.dense * factor, self.attention * factor)


def valid_taps(
    input_size: int,
    kernel_size: int,
    output_size: int,
    *,
    stride: int = 1,
    padding: tuple[int, int] = (0, 0),
    lhs_dilation: int = 1,
    rhs_dilation: int = 1,
) -> int:
    """Number of (output position, kernel tap) pairs along one axis that read a real input.

    Output ``o`` and tap ``k`` read position ``p = o stride + k rhs_dilation - padding[0]`` of
    the zero-inserted input (length ``(input_size - 1) lhs_dilation + 1``); the pair counts when
    ``0 <= p`` and ``p`` is a multiple of ``lhs_dilation`` within that length.
    """
    outputs = np.arange(output_size)[:, None]
    taps = np.arange(kernel_size)[None, :]
    position = outputs * stride + taps * rhs_dilation - padding[0]
    length = (input_size - 1) * lhs_dilation + 1
    real = (position >= 0) & (position < length) & (position % lhs_dilation == 0)
    return int(real.sum())


def convolution_flops(
    lhs_shape: Sequence[int], rhs_shape: Sequence[int], out_shape: Sequence[int], params: Mapping
) -> int:
    """FLOPs of one ``conv_general_dilated`` with the given operand shapes and jaxpr params."""
    numbers = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec
    batch = lhs_shape[lhs_spec[0]] // params.get("batch_group_count", 1)
    in_features = rhs_shape[rhs_spec[1]]  # already C_in / feature_group_count
    out_features = rhs_shape[rhs_spec[0]]
    rank = len(lhs_spec) - 2
    lhs_dilation = params["lhs_dilation"] or (1,) * rank
    rhs_dilation = params["rhs_dilation"] or (1,) * rank
    taps = math.prod(
        valid_taps(
            lhs_shape[lhs_spec[2 + i]],
            rhs_shape[rhs_spec[2 + i]],
            out_shape[out_spec[2 + i]],
            stride=params["window_strides"][i],
            padding=tuple(params["padding"][i]),
            lhs_dilation=lhs_dilation[i],
            rhs_dilation=rhs_dilation[i],
        )
        for i in range(rank)
    )
    return 2 * batch * in_features * out_features * taps


def dot_flops(lhs_shape: Sequence[int], rhs_shape: Sequence[int], params: Mapping) -> int:
    """FLOPs of one ``dot_general``: ``2 * batch * free_lhs * free_rhs * contracted``."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = params["dimension_numbers"]
    contracted = math.prod(lhs_shape[d] for d in lhs_contract)
    batch = math.prod(lhs_shape[d] for d in lhs_batch)
    free_lhs = math.prod(
        s for d, s in enumerate(lhs_shape) if d not in lhs_contract and d not in lhs_batch
    )
    free_rhs = math.prod(
        s for d, s in enumerate(rhs_shape) if d not in rhs_contract and d not in rhs_batch
    )
    return 2 * batch * free_lhs * free_rhs * contracted


def _sub_jaxprs(value: Any) -> list[Any]:
    if hasattr(value, "eqns"):
        return [value]
    if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        return [value.jaxpr]
    if isinstance(value, (tuple, list)):
        return [jaxpr for item in value for jaxpr in _sub_jaxprs(item)]
    return []


def jaxpr_flops(jaxpr: Any) -> FlopCount:
    """Count the convolutions and matrix products of a (closed) jaxpr, nested ones included.

    A ``scan`` body counts ``length`` times; of the branches of a ``cond`` the largest counts;
    a ``while`` loop without matrix products or convolutions (e.g. a sampler's rejection loop)
    counts nothing.

    Raises:
      ValueError: a ``while`` loop with matrix products or convolutions in it (its trip count
        is not known from the shapes).
    """
    jaxpr = jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") and hasattr(jaxpr.jaxpr, "eqns") else jaxpr
    count = FlopCount()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        shapes = [tuple(var.aval.shape) for var in eqn.invars]
        if name == "conv_general_dilated":
            out_shape = tuple(eqn.outvars[0].aval.shape)
            flops = convolution_flops(shapes[0], shapes[1], out_shape, eqn.params)
            count += FlopCount(convolution=flops)
        elif name == "dot_general":
            flops = dot_flops(shapes[0], shapes[1], eqn.params)
            if eqn.params["dimension_numbers"][1][0]:
                count += FlopCount(attention=flops)
            else:
                count += FlopCount(dense=flops)
        elif name == "while":
            body = jaxpr_flops(eqn.params["body_jaxpr"]) + jaxpr_flops(eqn.params["cond_jaxpr"])
            if body.total:
                raise ValueError(
                    "cannot count FLOPs through a while loop with matrix products or "
                    "convolutions in it (unknown trip count)"
                )
        elif name == "cond":
            branches = [jaxpr_flops(branch) for branch in eqn.params["branches"]]
            count += max(branches, key=lambda c: c.total)
        else:
            inner = FlopCount()
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    inner += jaxpr_flops(sub)
            count += inner.scaled(int(eqn.params["length"])) if name == "scan" else inner
    return count


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FlopCount:
    """FLOPs of ``fn(*args, **kwargs)`` from its jaxpr (traced with shapes only; no compute).

    ``args`` may be arrays or ``jax.ShapeDtypeStruct``.
    """
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))


def network_flops(
    model_config: Mapping[str, Any] | ncsnpp.NCSNppConfig,
    *,
    image_shape: Sequence[int],
    batch_size: int,
    max_count: int = 255,
    t_end: float = 15.0,
    num_steps: int = 1000,
    backward: bool = False,
) -> FlopCount:
    """FLOPs of the NCSN++ of ``model_config`` on a batch ``(batch_size, *image_shape)``.

    ``backward=False``: one forward pass (evaluation mode). ``backward=True``: the forward
    pass and the gradient of the summed output with respect to every parameter (training mode
    without dropout, which adds no FLOPs counted here). The network is built abstractly
    (``nnx.eval_shape``): no parameters are allocated.

    Raises:
      ValueError: ``batch_size`` not a positive int, or a bad model config / image shape (as
        :func:`blackout_jax.models.create_model`).
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    model = ncsnpp.abstract_network(
        model_config, image_shape=image_shape, max_count=max_count, t_end=t_end, num_steps=num_steps
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    counts = jax.ShapeDtypeStruct((int(batch_size), *image_shape), jnp.int32)
    t = jax.ShapeDtypeStruct((int(batch_size),), jnp.float32)

    def forward(params: Any, counts: jax.Array, t: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, rest)(counts, t)

    if not backward:
        return count_flops(forward, params, counts, t)

    def forward_backward(params: Any, counts: jax.Array, t: jax.Array) -> Any:
        return jax.value_and_grad(lambda p: jnp.sum(forward(p, counts, t)))(params)

    return count_flops(forward_backward, params, counts, t)
