"""A sampling grid as a small JSON file (for example an optimised grid beside a checkpoint).

The file holds ``{"times": [t_0 = 0, t_1, ..., t_K = t_end], "info": {...}}``: the increasing
grid that :func:`blackout_jax.sample` walks from the end, and free JSON-ready facts about how it
was made (the checkpoint step, ``t_end``, the proxy values).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from blackout_jax import argument_checks
from blackout_jax.run import reporting


def save_grid(path: str | os.PathLike[str], times: Any, info: dict[str, Any] | None = None) -> None:
    """Write ``times`` ``(K + 1,)`` (checked as a sampling grid) and ``info`` to ``path``.

    Written with :func:`blackout_jax.run.reporting.write_json` (a temporary file and an atomic
    rename), so readers never see half of it.

    Raises:
      ValueError: ``times`` is not a valid grid (1-D, starts at 0, strictly increasing).
      TypeError: ``info`` is not JSON-ready.
    """
    values = np.asarray(times, np.float64)
    argument_checks.check_time_grid(values)
    reporting.write_json(path, {"times": values.tolist(), "info": dict(info or {})})


def load_grid(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a grid file: ``(times (K + 1,) float32, info)``.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the file has no ``times`` list or its grid is not valid.
    """
    with open(path, encoding="utf-8") as file:
        content = json.load(file)
    if not isinstance(content, dict) or not isinstance(content.get("times"), list):
        raise ValueError(f"{os.fspath(path)}: expected an object with a 'times' list")
    times = np.asarray(content["times"], np.float32)
    argument_checks.check_time_grid(times)
    return times, dict(content.get("info", {}))
