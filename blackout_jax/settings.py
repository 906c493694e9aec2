"""Declared settings: a field's default, its meaning and its allowed values, checked in one place.

A settings dataclass declares each field with :func:`setting`; :func:`build` turns a mapping of
values into the frozen dataclass, checking each value against the field's annotation (``bool``,
``int``, ``float``, ``str``, ``tuple[int, ...]``, ``tuple[float, ...]``) and its bounds. The
run layer's experiment config and the networks' configs (``models/``) are declared this way, so
each field's default, meaning and check are written once, next to each other. This module
imports nothing of JAX, Flax or the run layer.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Check = tuple[Callable[[Any], bool], str]
"""An extra check of a field's (normalised) value: ``(predicate, requirement in words)``."""


def setting(
    default: Any,
    doc: str,
    *,
    choices: Sequence[str] | None = None,
    minimum: float | None = None,
    strictly_above: float | None = None,
    below: float | None = None,
    maximum: float | None = None,
    check: Check | None = None,
) -> Any:
    """A dataclass field: its default, its meaning and the bounds :func:`check_value` applies.

    For a tuple field the bounds apply to every entry. ``check`` is a further test of the whole
    normalised value (an odd size, a non-empty tuple).
    """
    metadata = {
        "doc": doc,
        "choices": None if choices is None else tuple(choices),
        "minimum": minimum,
        "strictly_above": strictly_above,
        "below": below,
        "maximum": maximum,
        "check": check,
    }
    return dataclasses.field(default=default, metadata=metadata)


def fail(name: str, requirement: str, value: Any) -> None:
    """Raise the ``ValueError`` that names a field, what it must be and the value it got."""
    raise ValueError(f"config field {name} must be {requirement}, got {value!r}")


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}
_TUPLES = {"tuple[int, ...]": int, "tuple[float, ...]": float}


def _number_requirement(kind: type, meta: Mapping[str, Any]) -> str:
    bounds = [
        f"{word} {meta[key]}"
        for key, word in (
            ("minimum", ">="),
            ("strictly_above", ">"),
            ("below", "<"),
            ("maximum", "<="),
        )
        if meta[key] is not None
    ]
    return " ".join(["an int" if kind is int else "a finite number", " and ".join(bounds)]).strip()


def _number_fits(kind: type, meta: Mapping[str, Any], value: Any) -> bool:
    numeric = numbers.Integral if kind is int else numbers.Real
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return False
    if not isinstance(value, numeric) or not math.isfinite(value):
        return False
    return not (
        (meta["minimum"] is not None and value < meta["minimum"])
        or (meta["strictly_above"] is not None and value <= meta["strictly_above"])
        or (meta["below"] is not None and value >= meta["below"])
        or (meta["maximum"] is not None and value > meta["maximum"])
    )


def _check_scalar(name: str, kind: type, meta: Mapping[str, Any], value: Any) -> Any:
    if kind is bool:
        if not isinstance(value, bool) and type(value).__name__ != "bool_":
            fail(name, "True or False", value)
        return bool(value)
    if kind is str:
        if not isinstance(value, str):
            fail(name, "a string", value)
        if meta["choices"] is not None and value not in meta["choices"]:
            fail(name, f"one of {meta['choices']}", value)
        return value
    if not _number_fits(kind, meta, value):
        fail(name, _number_requirement(kind, meta), value)
    return kind(value)


def _check_tuple(name: str, kind: type, meta: Mapping[str, Any], value: Any) -> tuple:
    requirement = f"a tuple of {_number_requirement(kind, meta).replace('an int', 'ints')}"
    requirement = requirement.replace("a finite number", "finite numbers")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        fail(name, requirement, value)
    for index, item in enumerate(value):
        if not _number_fits(kind, meta, item):
            raise ValueError(
                f"config field {name} must be {requirement}; entry {index} is {item!r} "
                f"(in {value!r})"
            )
    return tuple(kind(item) for item in value)


def check_value(name: str, field: dataclasses.Field, value: Any) -> Any:
    """One field's value checked against its annotation, bounds and check; returned normalised
    (an ``int`` for ``int`` fields, a tuple for tuple fields).

    Raises:
      ValueError: ``config field <name> must be <requirement>, got <value>``.
    """
    meta = field.metadata
    if field.type in _TUPLES:
        normalised = _check_tuple(name, _TUPLES[field.type], meta, value)
    else:
        normalised = _check_scalar(name, _SCALARS[field.type], meta, value)
    if meta["check"] is not None:
        predicate, requirement = meta["check"]
        if not predicate(normalised):
            fail(name, requirement, value)
    return normalised


def plain(values: Any) -> dict[str, Any]:
    """A ConfigDict, a mapping or a settings dataclass as a plain (shallow) dict."""
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        return {field.name: getattr(values, field.name) for field in dataclasses.fields(values)}
    if hasattr(values, "to_dict"):
        return dict(values.to_dict())
    if isinstance(values, Mapping):
        return dict(values)
    raise ValueError(f"config must be a ConfigDict or a mapping, got {type(values).__name__}")


def build(defaults: Any, values: Mapping[str, Any], *, section: str) -> Any:
    """``defaults`` (a settings dataclass instance) with the fields of ``values`` replaced, each
    checked; names in errors read ``<section>.<field>``.

    Raises:
      ValueError: an unknown field (naming the known ones) or a bad value.
    """
    known = {field.name: field for field in dataclasses.fields(defaults)}
    for key in values:
        if key not in known:
            raise ValueError(
                f"config field {section}.{key} is unknown; the fields of {section} are "
                f"{sorted(known)}"
            )
    checked = {
        key: check_value(f"{section}.{key}", known[key], value) for key, value in values.items()
    }
    return dataclasses.replace(defaults, **checked)


def describe(name: str, field: dataclasses.Field, value: Any) -> str:
    """``name = value  # meaning``: one line of ``--mode=show_config``."""
    return f"{name} = {value!r}  # {field.metadata['doc']}"
