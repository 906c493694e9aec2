"""Measuring helpers shared by the benchmarks: timing, XLA program statistics, the training
step exactly as training builds it, and Markdown rows printed the moment they are measured."""

from __future__ import annotations

import collections
import dataclasses
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from blackout_jax.data import DataShape
from blackout_jax.run import config as config_lib
from blackout_jax.run import parallel
from blackout_jax.run import train_step as training_step

# Published dense (no sparsity) bf16 tensor-core peaks in FLOP/s, by device kind.
BF16_PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H200", 989.4e12),
    ("H100", 989.4e12),
    ("A100", 312e12),
)
# HLO instructions of the entry computation that launch no kernel.
NOT_KERNELS = frozenset(
    {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "after-all"}
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a result table."""

    measurement: str
    setting: str
    result: str
    goal: str = ""

    def markdown(self) -> str:
        return f"| {self.measurement} | {self.setting} | {self.result} | {self.goal} |"


TABLE_HEADER = "| measurement | setting | result | goal |\n|---|---|---|---|"


def log(name: str, message: str) -> None:
    """A progress line on stderr, flushed."""
    print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each ``run()`` (blocked until ready) over ``repeats`` timed runs.

    Every run is warmed up (compiled) once first; the timed runs are interleaved (one of each in
    turn) so that a change in the machine's load affects all of them alike.
    """
    for run in runs.values():
        jax.block_until_ready(run())
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def xla_flops(compiled: Any) -> float:
    """FLOPs of a compiled program from XLA's cost analysis (nan when unavailable).

    On a GPU this misses the convolutions run as cuDNN custom calls; use
    :mod:`experiments.benchmarks.flops` for a count that holds on every backend.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", float("nan")))


def program_bytes(compiled: Any) -> int:
    """Arguments + outputs + temporaries - aliased bytes of a compiled program (0 if unknown)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return 0
    return int(
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def megabytes(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.1f} MiB"


def hlo_op_counts(compiled: Any) -> collections.Counter:
    """Instructions of the optimised program's entry computation, by opcode.

    Each ``fusion``, ``convolution``, ``dot``, ``custom-call``, ``copy`` … of the entry
    computation is (at least) one kernel launch on a GPU and one loop nest on a CPU; the
    instructions inside a ``while`` body are not included.
    """
    text = compiled.as_text()
    entry = text[text.index("\nENTRY") :]
    entry = entry[: entry.index("\n}")]
    counts: collections.Counter = collections.Counter()
    for line in entry.splitlines()[1:]:
        match = re.search(r"=\s*\S+\s+([\w-]+)\(", line)
        if match:
            counts[match.group(1)] += 1
    return counts


def kernel_summary(counts: collections.Counter) -> str:
    """``"N kernels (F fusions, C convolutions, D dots, K copies, ...)"``."""
    kernels = sum(n for op, n in counts.items() if op not in NOT_KERNELS)
    parts = ", ".join(f"{n} {op}" for op, n in counts.most_common() if op not in NOT_KERNELS)
    return f"{kernels} kernels ({parts})"


def bf16_peak(device: jax.Device) -> float | None:
    """The published dense bf16 peak of ``device`` in FLOP/s, when its kind is known."""
    kind = getattr(device, "device_kind", "")
    for name, peak in BF16_PEAK_FLOPS:
        if name in kind:
            return peak
    return None


@dataclasses.dataclass
class TrainStep:
    """The training step of :func:`blackout_jax.run.train_step.make_train_step`, jitted as training
    jits it, with the arguments of its first call."""

    jitted: Any
    args: tuple[Any, ...]
    graphdef: Any
    init_seconds: float


def train_step(
    config: ml_collections.ConfigDict,
    image_shape: tuple[int, int, int],
    batch_size: int,
    *,
    max_count: int | None = None,
    optimizer: Any = None,
    seed: int = 0,
) -> TrainStep:
    """Build the train state and the jitted step of ``config`` for random count batches.

    ``optimizer``: an optax transformation in place of ``train_step.make_optimizer`` (for studies).
    """
    typed = config_lib.parse(config)
    config = dataclasses.replace(
        typed, training=dataclasses.replace(typed.training, batch_size=batch_size)
    )
    max_count = int(config.data.max_count if max_count is None else max_count)
    mesh = parallel.create_mesh()
    replicated = parallel.replicated_sharding(mesh)
    batch_sharding = parallel.batch_sharding(mesh)
    shape = DataShape(tuple(image_shape), max_count, config.model.num_classes)
    optimizer = optimizer or training_step.make_optimizer(config.training)
    optimizer = training_step.skipping_nonfinite(optimizer)
    start = time.perf_counter()
    graphdef, state, rest = training_step.init_train_state(config, shape, optimizer, replicated)
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - start
    jitted = training_step.jit_train_step(config, graphdef, optimizer, replicated, batch_sharding)
    rng = np.random.default_rng(seed)
    host_batch = rng.integers(0, max_count + 1, (batch_size, *image_shape)).astype(np.int32)
    batch = parallel.global_batch(host_batch, batch_sharding)
    return TrainStep(jitted, (state, rest, batch), graphdef, init_seconds)


def time_train_steps(compiled: Any, args: tuple[Any, ...], steps: int) -> list[float]:
    """Seconds of ``steps`` chained training steps after one warm-up step."""
    state, rest, batch = args
    state, metrics = compiled(state, rest, batch)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, rest, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return times


def random_counts(shape: tuple[int, ...], max_count: int, seed: int = 0) -> jax.Array:
    """Uniform integer counts in ``0..max_count`` (int32)."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, max_count + 1, shape), jnp.int32)
