"""What every network in ``models/`` shares: the compute dtypes and activations, the config
fields every network declares (compute dtypes, activation, class labels), the argument checks
and the PRNG setting of the initialisation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from blackout_jax.models import layers
from blackout_jax.settings import setting

ModuleT = TypeVar("ModuleT", bound=nnx.Module)

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
NONLINEARITIES = tuple(layers.ACTIVATIONS)


def dtype_setting() -> Any:
    """The ``dtype`` field: the compute dtype of training."""
    return setting("float32", "compute dtype of training", choices=tuple(COMPUTE_DTYPES))


def inference_dtype_setting() -> Any:
    """The ``inference_dtype`` field: the compute dtype of sampling and evaluation."""
    return setting(
        "",
        "compute dtype of sampling and evaluation ('' = model.dtype)",
        choices=("", *COMPUTE_DTYPES),
    )


def nonlinearity_setting() -> Any:
    """The ``nonlinearity`` field: the activation function."""
    return setting("swish", "activation function", choices=NONLINEARITIES)


def num_classes_setting() -> Any:
    """The ``num_classes`` field: class-conditional with this many classes, 0 = none."""
    return setting(0, "class-conditional with this many classes (0 = unconditional)", minimum=0)


class ConditionalDtypes:
    """The properties every network config derives from its ``dtype``, ``inference_dtype`` and
    ``num_classes`` fields."""

    dtype: str
    inference_dtype: str
    num_classes: int

    @property
    def evaluation_dtype(self) -> str:
        """Compute dtype in evaluation mode: ``inference_dtype``, or ``dtype`` when empty."""
        return self.inference_dtype or self.dtype

    @property
    def null_label(self) -> int:
        """The label of "no class" (classifier-free guidance): ``num_classes``."""
        return self.num_classes


def with_compute_dtype(
    network: ModuleT, dtype: Any, *, float32_modules: tuple[type, ...]
) -> ModuleT:
    """``network`` itself when it computes in ``dtype`` already, else a copy sharing its arrays
    in which every module with a compute ``dtype`` takes ``dtype``, except the instances of
    ``float32_modules`` (normalisations, whose statistics stay float32)."""
    if dtype == network.dtype:
        return network
    copy = nnx.merge(*nnx.split(network))
    for _, module in nnx.iter_modules(copy):
        if hasattr(module, "dtype") and not isinstance(module, float32_modules):
            module.dtype = dtype
    return copy


def embed_labels(
    embedding: Callable[[jax.Array], jax.Array] | None,
    labels: jax.Array | None,
    batch: int,
    null_label: int,
) -> jax.Array | None:
    """``embedding(y)`` of class labels ``y`` ``(B,)`` (``None``: ``null_label`` for every
    example), or ``None`` for an unconditional network (``embedding`` ``None``).

    Raises:
      ValueError: labels for an unconditional network, or of a shape other than (B,).
    """
    if embedding is None:
        if labels is not None:
            raise ValueError(
                "labels were given to an unconditional network (model.num_classes = 0)"
            )
        return None
    if labels is None:
        labels = jnp.full((batch,), null_label, jnp.int32)
    labels = jnp.asarray(labels)
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {labels.shape}")
    return embedding(labels.astype(jnp.int32))


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return (is_int(value) or isinstance(value, (float, np.floating))) and np.isfinite(value)


def check_factory_arguments(max_count: Any, t_end: Any, num_steps: Any, seed: Any) -> None:
    """The arguments every network factory takes besides its config and data shape.

    Raises:
      ValueError: ``max_count`` or ``num_steps`` not an int >= 1, ``t_end`` not a finite
        number > 0, or ``seed`` not an int; naming the argument and the value.
    """
    if not is_int(max_count) or max_count < 1:
        raise ValueError(f"max_count must be an int >= 1, got {max_count!r}")
    if not is_number(t_end) or t_end <= 0:
        raise ValueError(f"t_end must be a finite number > 0, got {t_end!r}")
    if not is_int(num_steps) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if not is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")


def initialisation_prng() -> contextlib.AbstractContextManager:
    """PRNG setting used while drawing the initial parameters.

    The non-partitionable threefry variant gives the same kind of deterministic draws from the
    seed and compiles several times faster on CPU for programs with hundreds of small draws
    (about 2 s instead of 14 s for a tiny network). Where a JAX version no longer offers the
    switch, the default variant is used.
    """
    switch = getattr(jax, "threefry_partitionable", None)
    return switch(False) if switch is not None else contextlib.nullcontext()
