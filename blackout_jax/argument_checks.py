"""Checks of the public functions' inputs.

Every check runs only on *concrete* values (NumPy arrays, Python numbers, committed JAX arrays
whose values this process holds; a global array of a multi-process job, spread over other
processes' devices, is not checked). Counts on a device are checked there, by one reduction
whose single boolean comes back to the host; only counts that fail are copied to the host, to
name the first bad value.
Under ``jax.jit``, ``jax.vmap`` or ``jax.grad`` the inputs are tracers whose values are unknown at
trace time, so the checks are skipped and the functions compute on whatever they are given
(out-of-range counts then give meaningless numbers, not errors). Validate data once, outside the
compiled code, for example by calling the function eagerly on a first batch.

Each failure raises ``ValueError`` naming the argument, the first bad value and its index.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def concrete_value(x: Any) -> np.ndarray | None:
    """``x`` as a NumPy array, or ``None`` when ``x`` is (or contains) a JAX tracer or is a
    global array partly held by other processes."""
    if isinstance(x, jax.core.Tracer):
        return None
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _first_bad(name: str, values: np.ndarray, bad: np.ndarray, problem: str) -> None:
    if bad.any():
        index = np.unravel_index(int(np.argmax(bad)), bad.shape) if bad.ndim else ()
        value = (values[index] if values.ndim else values).item()
        where = f" at index {tuple(int(i) for i in index)}" if bad.ndim else ""
        raise ValueError(f"{name} {problem}; found {value!r}{where}")


def check_counts(
    name: str, counts: Any, max_count: int | None = None, *, where: Any = None
) -> None:
    """Counts must be finite, non-negative whole numbers (and ``<= max_count`` when given).

    A boolean mask ``where`` restricts the check to its true entries.
    """
    if _pass_on_device(counts, max_count, where):
        return
    values = concrete_value(counts)
    mask = None if where is None else concrete_value(where)
    if values is None or (where is not None and mask is None):
        return
    if mask is not None:
        values = np.where(mask, values, 0)
    if values.dtype == np.bool_:
        values = values.astype(np.int64)
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise ValueError(f"{name} must hold numbers, got dtype {values.dtype}")
    if np.issubdtype(values.dtype, np.floating):
        _first_bad(name, values, ~np.isfinite(values), "must be finite")
        _first_bad(name, values, values != np.round(values), "must hold whole numbers")
    _first_bad(name, values, values < 0, "must be non-negative")
    if max_count is not None:
        _first_bad(name, values, values > max_count, f"must be <= max_count={max_count}")


def _pass_on_device(counts: Any, max_count: int | None, where: Any) -> bool:
    """Whether concrete JAX ``counts`` (and mask ``where``) of a number dtype pass every check
    of :func:`check_counts`, found by :func:`_valid_counts` on their device; ``False`` for
    anything else, and inside a trace (:func:`check_counts` then checks on the host, or
    skips)."""
    arrays = (counts,) if where is None else (counts, where)
    on_device = all(
        isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) and a.is_fully_addressable
        for a in arrays
    )
    if not on_device or not jnp.issubdtype(counts.dtype, jnp.number):
        return False
    valid = _valid_counts(counts, True if where is None else where, max_count=max_count)
    return not isinstance(valid, jax.core.Tracer) and bool(valid)  # inside a trace: not known


@functools.partial(jax.jit, static_argnames="max_count")
def _valid_counts(counts: jax.Array, mask: jax.Array | bool, max_count: int | None) -> jax.Array:
    """``all(mask => (n finite, whole, >= 0, <= max_count))``, a boolean scalar."""
    valid = (counts >= 0) if max_count is None else (counts >= 0) & (counts <= max_count)
    if jnp.issubdtype(counts.dtype, jnp.floating):
        valid = valid & jnp.isfinite(counts) & (counts == jnp.round(counts))
    return jnp.all(valid | ~jnp.asarray(mask, bool))


def check_times(name: str, t: Any) -> None:
    """Times must be finite and ``>= 0``."""
    values = concrete_value(t)
    if values is None:
        return
    values = values.astype(np.float64)
    _first_bad(name, values, ~np.isfinite(values), "must be finite")
    _first_bad(name, values, values < 0, "must be >= 0")


def check_positive_scalar(name: str, value: Any) -> None:
    """A finite scalar ``> 0`` (for example ``t_end``)."""
    values = concrete_value(value)
    if values is None:
        return
    if values.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {values.shape}")
    if not (np.isfinite(values) and values > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {values.item()!r}")


def check_survival(name: str, value: Any) -> None:
    """Survival probabilities: finite, ``0 < q <= 1`` (a scalar or any shape). A JAX array is
    checked on its device; it is copied to the host only to name a bad value."""
    if (
        isinstance(value, jax.Array)
        and not isinstance(value, jax.core.Tracer)
        and value.is_fully_addressable
        and jnp.issubdtype(value.dtype, jnp.floating)
        and bool(_valid_survival(value))
    ):
        return
    values = concrete_value(value)
    if values is None:
        return
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise ValueError(f"{name} must hold real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64)
    _first_bad(name, values, ~np.isfinite(values), "must be finite")
    _first_bad(name, values, ~((values > 0) & (values <= 1)), "must be in (0, 1]")


@jax.jit
def _valid_survival(q: jax.Array) -> jax.Array:
    """``all(0 < q <= 1)`` (false for NaN), a boolean scalar."""
    return jnp.all((q > 0) & (q <= 1))


def check_earlier(s: Any, t: Any) -> None:
    """``s < t`` everywhere (after broadcasting); names ``s`` and the first offending pair."""
    s_values, t_values = concrete_value(s), concrete_value(t)
    if s_values is None or t_values is None:
        return
    s_b, t_b = np.broadcast_arrays(s_values.astype(np.float64), t_values.astype(np.float64))
    bad = ~(s_b < t_b)
    if bad.any():
        index = np.unravel_index(int(np.argmax(bad)), bad.shape) if bad.ndim else ()
        where = f" at index {tuple(int(i) for i in index)}" if bad.ndim else ""
        raise ValueError(
            f"s must be < t; found s={s_b[index].item()!r} >= t={t_b[index].item()!r}{where}"
        )


def check_max_count(max_count: Any) -> None:
    """``max_count`` must be an integer ``>= 1``."""
    if isinstance(max_count, (bool, np.bool_)) or not isinstance(max_count, (int, np.integer)):
        raise ValueError(f"max_count must be an int >= 1, got {max_count!r}")
    if max_count < 1:
        raise ValueError(f"max_count must be an int >= 1, got {max_count}")


def check_time_grid(times: Any) -> None:
    """A sampling grid: 1-D, at least two points, ``times[0] == 0``, strictly increasing, finite."""
    values = concrete_value(times)
    if values is None:
        return
    if values.ndim != 1 or values.shape[0] < 2:
        raise ValueError(
            f"times must be a 1-D grid of at least 2 points (0 and t_end), got shape {values.shape}"
        )
    values = values.astype(np.float64)
    _first_bad("times", values, ~np.isfinite(values), "must be finite")
    if values[0] != 0:
        raise ValueError(f"times must start at 0; found {values[0].item()!r} at index (0,)")
    steps = np.diff(values)
    bad = steps <= 0
    if bad.any():
        k = int(np.argmax(bad)) + 1
        raise ValueError(
            f"times must be strictly increasing; found {values[k].item()!r} at index ({k},) "
            f"after {values[k - 1].item()!r}"
        )
