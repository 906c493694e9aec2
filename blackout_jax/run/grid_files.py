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

from blackout_jax import argument_checks, schedule
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


def load_grid(
    path: str | os.PathLike[str], *, num_steps: int | None = None, t_end: float | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a grid file: ``(times (K + 1,) float32, info)``.

    Args:
      path: the file.
      num_steps: when given, the grid must have ``num_steps + 1`` points.
      t_end: when given, the grid must end where the reference grid
        (:func:`blackout_jax.schedule.observation_times`) of this ``t_end`` ends.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the file is not UTF-8 JSON, has no ``times`` list of numbers, or its grid is
        not valid (or not of ``num_steps`` steps ending at ``t_end``); one line naming ``path``.
    """
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except ValueError as error:  # not JSON, or not UTF-8 text
        raise ValueError(f"{name}: not a JSON grid file ({' '.join(str(error).split())})") from None
    if not isinstance(content, dict) or not isinstance(content.get("times"), list):
        raise ValueError(f"{name}: expected an object with a 'times' list")
    try:
        times = np.asarray(content["times"], np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: 'times' must be a list of numbers ({error})") from None
    try:
        argument_checks.check_time_grid(times)
    except ValueError as error:
        raise ValueError(f"{name}: {' '.join(str(error).split())}") from None
    if num_steps is not None and len(times) != num_steps + 1:
        raise ValueError(
            f"{name}: holds a grid of {len(times) - 1} steps, not of sampling.num_steps = "
            f"{num_steps}"
        )
    if t_end is not None:
        end = float(schedule.observation_times(1, t_end)[-1])
        if not np.isclose(float(times[-1]), end, rtol=1e-6, atol=0.0):
            raise ValueError(
                f"{name}: the grid ends at {float(times[-1])!r}, not at t_end = {end!r}"
            )
    info = content.get("info", {})
    return times, dict(info) if isinstance(info, dict) else {}
