"""Passing model functions into compiled code without baking their arrays in as constants."""

from __future__ import annotations

from collections.abc import Callable

import jax


def as_partial(function: Callable[..., jax.Array]) -> jax.tree_util.Partial:
    """``function`` as a ``jax.tree_util.Partial`` (unchanged if it already is one).

    A ``Partial`` is a pytree: its bound arguments (for example network parameters) are leaves
    that a jitted function receives as arguments, while the wrapped callable is static and
    keys the compilation cache. A plain function is wrapped with no bound arguments.
    """
    if isinstance(function, jax.tree_util.Partial):
        return function
    return jax.tree_util.Partial(function)
