"""What compiling a sampler costs: XLA compile seconds (CPU and wall) of each method's program.

    python -m experiments.benchmarks.sampler_compile [--methods m1,m2] [--repeats R]
        [--steps K] [--start prior|zeros] [--json]

For every method of :data:`blackout_jax.METHODS` it lowers the sampler loop driven by the
dataset oracle of 400 distinct digits (batch ``(40, 8, 8, 1)``, ``K`` steps, ``max_count`` 16),
then compiles it ``R`` times, each after ``jax.clear_caches()``, and reports the median
compile time in CPU seconds of the process (XLA compiles on several threads, so this is what
the program costs a busy machine) and in wall seconds, with the lines of the optimised HLO.
Compile time does not depend on ``K`` (the loop is a ``lax.scan``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import jax
import numpy as np

import blackout_jax as bj
from blackout_jax import sampling
from blackout_jax.data import digits
from experiments.benchmarks import common

SHAPE = (40, 8, 8, 1)
MAX_COUNT = 16


def cpu_seconds() -> float:
    """User and system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def compile_seconds(method: str, steps: int, start: str, repeats: int) -> dict[str, float]:
    """Median CPU and wall seconds of compiling one method's sampler, and its HLO lines."""
    images, _ = digits.load_digits_with_labels()
    members = np.unique(images.reshape(len(images), -1), axis=0)[:400].reshape(-1, 8, 8, 1)
    arguments = (jax.random.key(0), bj.dataset_oracle(members), bj.observation_times(steps, 15.0))
    options = dict(shape=SHAPE, max_count=MAX_COUNT, method=method, start=start, resamples=1)
    cpu, wall = [], []
    for _ in range(repeats):
        jax.clear_caches()
        lowered = sampling._run_sampler.lower(
            *arguments, None, None, **options, particles=1, progress=None, sharding=None
        )
        cpu_start, wall_start = cpu_seconds(), time.perf_counter()
        compiled = lowered.compile()
        cpu.append(cpu_seconds() - cpu_start)
        wall.append(time.perf_counter() - wall_start)
    return {
        "compile_cpu_s": round(statistics.median(cpu), 2),
        "compile_wall_s": round(statistics.median(wall), 2),
        "hlo_lines": compiled.as_text().count("\n"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(bj.METHODS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--start", choices=("prior", "zeros"), default="prior")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = {}
    for method in args.methods.split(","):
        rows[method] = compile_seconds(method, args.steps, args.start, args.repeats)
        figures = rows[method]
        common.log(
            method,
            f"compile {figures['compile_cpu_s']:.2f} CPU-s, {figures['compile_wall_s']:.2f} s "
            f"wall; {figures['hlo_lines']} HLO lines",
        )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
