"""Speed and memory of blackout_jax beside a reference-style sampler, in one table.

    python -m experiments.benchmarks.performance [--quick] [--sample-steps 100]
        [--sample-batch 64] [--cifar-batch B] [--train-batch B] [--train-dtypes float32,bfloat16]
        [--repeats 3] [--cifar-sampler] [--seed 0]

Prints one Markdown table (and progress lines on stderr). The rows:

1. Sampler overhead: :func:`blackout_jax.sample` driven by a network, per step, against the
   same network called in a bare ``lax.scan`` over the same grid (same loop, no draws); the
   ratio is the sampler's overhead. Network: the NCSN++ of ``configs/digits.py`` (8x8x1,
   ``N = 16``) on every backend, and the NCSN++ of ``configs/cifar10.py`` (32x32x3,
   ``N = 255``) on an accelerator (or with ``--cifar-sampler``).
2. Draw cost: ``sample`` with a trivial ``predict_fn`` (``yhat = (N - n) / 2``), in ns per count
   per step, for digits-shaped (``N = 16``) and CIFAR-shaped (``N = 255``) states; beside it
   one step's draws of the same counts on the host with ``scipy.stats`` and on the device with
   ``jax.random.binomial`` / ``jax.random.poisson`` and with blackout_jax's own draws.
3. Reference-style loop: the loop of the reference implementation (a jitted network call per
   step, the state and the prediction copied to the host, ``scipy.stats.binom.rvs`` there, the
   new state copied back), whole run against ``sample(binomial_bridge)`` on the same batch and
   grid. The reference also keeps float64 tables of ``(T + 1) x 256 x 256`` entries on the
   device; their size is given by arithmetic beside the ``(N + 1)^2`` float32 table that
   blackout_jax builds inside each step.
4. Training step: the exact step of :func:`blackout_jax.run.train_step.make_train_step`, jitted as
   training jits it, for the ``configs/cifar10.py`` network at ``--train-batch`` (default 256
   on an accelerator, 4 on a CPU) in float32 and bfloat16 compute: compile time, images/s and
   achieved TFLOP/s from the FLOP count of the step's jaxpr (:mod:`experiments.benchmarks.flops`;
   XLA's ``cost_analysis()`` beside it, which on a GPU misses the cuDNN convolutions), and the
   fraction of the device's published dense bf16 peak where it is known.
5. Memory: XLA's buffer sizes of each compiled program (``compiled.memory_analysis()``:
   arguments + outputs + temporaries - aliased) and the device's peak bytes in use
   (``memory_stats()``, accelerators) or the process's peak resident memory (``ru_maxrss``,
   CPU, where JAX reports no device statistics).

Timed figures are medians over ``--repeats`` runs after a warm-up (compiling) run, with the
runs of one comparison interleaved so that a change in the machine's load hits all alike.
``--quick`` is a smoke test: 10 sampler steps, small batches, one repeat, and the digits
network instead of the CIFAR-10 one for the training step.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import stats

import blackout_jax as bj
from blackout_jax import draws, models
from configs import cifar10 as cifar10_config
from configs import digits as digits_config
from experiments.benchmarks import common
from experiments.benchmarks import flops as flop_count
from experiments.benchmarks.common import Row, median_seconds, megabytes, program_bytes

REFERENCE_TABLE_STEPS = 1000  # T of the reference grid whose (T + 1) x 256 x 256 tables it keeps


@dataclasses.dataclass(frozen=True)
class Problem:
    """A network (or a trivial predictor) with its state shape, count range and time grid."""

    name: str
    predict_fn: jax.tree_util.Partial
    shape: tuple[int, ...]
    max_count: int
    times: jax.Array

    @property
    def num_counts(self) -> int:
        return math.prod(self.shape)

    @property
    def num_steps(self) -> int:
        return int(self.times.shape[0]) - 1


def log(message: str) -> None:
    common.log("performance", message)


def half_room(max_count: jax.Array, counts: jax.Array, t: jax.Array) -> jax.Array:
    """A trivial ``predict_fn`` (bound as ``Partial(half_room, N)``): ``(N - n) / 2``."""
    del t
    return 0.5 * (max_count - counts.astype(jnp.float32))


def trivial_problem(name: str, shape: tuple[int, ...], max_count: int, t_end: float, steps: int):
    predict_fn = jax.tree_util.Partial(half_room, jnp.float32(max_count))
    return Problem(name, predict_fn, shape, max_count, bj.observation_times(steps, t_end))


def network_problem(config: Any, image_shape: tuple[int, ...], batch: int, steps: int) -> Problem:
    """The NCSN++ of ``config`` (random initialisation, evaluation mode) as a ``Problem``.

    Evaluation mode computes in ``config.model.inference_dtype`` (or ``model.dtype``).
    """
    max_count = int(config.data.max_count)
    t_end = float(config.diffusion.t_end)
    model = models.create_model(
        config.model,
        image_shape=image_shape,
        max_count=max_count,
        t_end=t_end,
        num_steps=int(config.diffusion.num_steps),
        seed=0,
    )
    graphdef, state = nnx.split(model)
    dtype = models.parse_config(config.model).evaluation_dtype
    return Problem(
        f"NCSN++ {config.data.name} ({models.count_parameters(state):,} parameters, {dtype})",
        models.make_predict_fn(graphdef, state),
        (batch, *image_shape),
        max_count,
        bj.observation_times(steps, t_end),
    )


def sampler_run(problem: Problem, method: str, seed: int) -> Callable[[], jax.Array]:
    key = jax.random.key(seed)

    def run() -> jax.Array:
        return bj.sample(
            key,
            problem.predict_fn,
            problem.shape,
            problem.times,
            max_count=problem.max_count,
            method=method,
        )

    return run


@jax.jit
def _network_scan(predict_fn: jax.tree_util.Partial, start: jax.Array, times: jax.Array):
    """The network alone in the sampler's loop: ``lax.scan`` over the grid, no draws."""
    batch = start.shape[0]

    def step(state: jax.Array, t: jax.Array) -> tuple[jax.Array, None]:
        pred = predict_fn(state, jnp.full((batch,), t, jnp.float32))
        keep_live = (pred > 1e9).astype(state.dtype)  # makes every call needed, changes nothing
        return state + keep_live, None

    final, _ = jax.lax.scan(step, start, times[1:][::-1])
    return final


def compile_seconds_and_bytes(jitted: Any, *args: Any) -> tuple[float, int]:
    """Seconds of ``jitted.lower(*args).compile()`` and XLA's buffer bytes of the program."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - start
    return seconds, program_bytes(compiled)


def sampler_compile(problem: Problem, method: str) -> tuple[float, int]:
    """Compile time and buffer bytes of the sampler program (parameters passed as arguments)."""

    def run(key: jax.Array, predict_fn: jax.tree_util.Partial) -> jax.Array:
        return bj.sample(
            key,
            predict_fn,
            problem.shape,
            problem.times,
            max_count=problem.max_count,
            method=method,
        )

    return compile_seconds_and_bytes(jax.jit(run), jax.random.key(0), problem.predict_fn)


def overhead_rows(problem: Problem, repeats: int, seed: int) -> list[Row]:
    """Per-step time of ``sample`` (both methods) against the bare network scan."""
    start = jnp.zeros(problem.shape, jnp.int32)
    runs = {"network": lambda: _network_scan(problem.predict_fn, start, problem.times)}
    for method in bj.METHODS:
        runs[method] = sampler_run(problem, method, seed)
    seconds = median_seconds(runs, repeats)
    steps = problem.num_steps
    setting = f"{problem.name}, batch {problem.shape[0]}, {steps} steps"
    baseline = seconds["network"] / steps
    rows = [Row("network alone, lax.scan over the grid", setting, f"{baseline * 1e3:.2f} ms/step")]
    for method in bj.METHODS:
        per_step = seconds[method] / steps
        rows.append(
            Row(
                f"sample({method}) / network alone",
                setting,
                f"{per_step / baseline:.3f}x ({per_step * 1e3:.2f} ms/step)",
                "<= 1.05",
            )
        )
    for method in bj.METHODS:
        compile_s, buffer_bytes = sampler_compile(problem, method)
        rows.append(
            Row(
                f"sample({method}) compile time; program buffers",
                setting,
                f"{compile_s:.1f} s; {megabytes(buffer_bytes)}",
            )
        )
    return rows


def draw_cost_rows(problem: Problem, repeats: int, host_repeats: int, seed: int) -> list[Row]:
    """The sampler's own cost per count and step, beside one step's draws done elsewhere."""
    seconds = median_seconds(
        {method: sampler_run(problem, method, seed) for method in bj.METHODS}, repeats
    )
    per_count_step = 1e9 / (problem.num_steps * problem.num_counts)
    setting = (
        f"trivial predict_fn, {problem.num_counts} counts {problem.shape}, N={problem.max_count}"
    )
    rows = [
        Row(
            f"sample({method}), whole run",
            f"{setting}, {problem.num_steps} steps",
            f"{seconds[method] * per_count_step:.1f} ns/count/step",
            "<= 20 (CPU)",
        )
        for method in bj.METHODS
    ]

    # One mid-grid step's draws of the same counts: host scipy, jax.random, blackout_jax.
    rng = np.random.default_rng(seed)
    max_count = problem.max_count
    counts = rng.integers(0, max_count + 1, problem.num_counts)
    room = max_count - counts
    trials = np.round(0.5 * room).astype(np.int64)
    middle = problem.num_steps // 2
    r = float(bj.bridge_probability(problem.times[middle - 1], problem.times[middle]))
    rates = 0.5 * room * r
    key = jax.random.key(seed)
    device_trials = jnp.asarray(trials, jnp.float32)
    device_rates = jnp.asarray(rates, jnp.float32)
    device_room = jnp.asarray(room, jnp.int32)
    jax_binomial = jax.jit(lambda k, n: jax.random.binomial(k, n, jnp.float32(r)))
    jax_poisson = jax.jit(lambda k, lam: jax.random.poisson(k, lam))
    own_binomial = jax.jit(
        lambda k, n: draws.binomial_by_inversion(k, n, jnp.float32(r), max_count)
    )
    own_poisson = jax.jit(draws.capped_poisson)
    own_scaled = jax.jit(
        lambda k, scale, cap: draws.capped_poisson_scaled(k, scale, jnp.float32(r), cap, max_count)
    )
    device_scales = jnp.asarray(0.5 * room, jnp.float32)
    single = median_seconds(
        {
            "host scipy.stats.binom.rvs": lambda: stats.binom.rvs(trials, r, random_state=rng),
            "host scipy.stats.poisson.rvs (capped)": lambda: np.minimum(
                stats.poisson.rvs(rates, random_state=rng), room
            ),
            "jax.random.binomial": lambda: jax_binomial(key, device_trials),
            "jax.random.poisson": lambda: jax_poisson(key, device_rates),
            "draws.binomial_by_inversion": lambda: own_binomial(key, device_trials),
            "draws.capped_poisson": lambda: own_poisson(key, device_rates, device_room),
            "draws.capped_poisson_scaled (tau-leaping's)": lambda: own_scaled(
                key, device_scales, device_room
            ),
        },
        host_repeats,
    )
    step_setting = f"one step's draws of the same {problem.num_counts} counts, r = {r:.3g}"
    for name, value in single.items():
        rows.append(Row(name, step_setting, f"{value / problem.num_counts * 1e9:.1f} ns/count"))
    return rows


def reference_style_sample(
    problem: Problem, predict: Callable[..., jax.Array], seed: int
) -> jax.Array:
    """The reference's loop: device -> host copies and scipy's binomials at every step.

    Same prior, grid and bridge update as ``sample(binomial_bridge)``; the draws are made on
    the host with ``scipy.stats.binom.rvs`` (float64) and the new state is copied back.
    """
    rng = np.random.default_rng(seed)
    times = np.asarray(problem.times, np.float64)
    batch, max_count = problem.shape[0], problem.max_count
    prior_mean = 0.5 * max_count * np.exp(-times[-1])
    state = jax.device_put(
        np.minimum(
            stats.poisson.rvs(prior_mean, size=problem.shape, random_state=rng), max_count
        ).astype(np.int32)
    )
    for k in range(problem.num_steps, 0, -1):
        t, s = times[k], times[k - 1]
        pred = predict(problem.predict_fn, state, jnp.full((batch,), t, jnp.float32))
        counts = np.asarray(state)  # device -> host
        yhat = np.asarray(pred)  # device -> host
        r = np.exp(-s) * np.expm1(-(t - s)) / np.expm1(-t)
        trials = np.clip(np.round(yhat), 0, max_count - counts).astype(np.int64)
        counts = counts + stats.binom.rvs(trials, r, random_state=rng)
        state = jax.device_put(counts.astype(np.int32))  # host -> device
    return state


@jax.jit
def _predict(predict_fn: jax.tree_util.Partial, counts: jax.Array, t: jax.Array) -> jax.Array:
    return predict_fn(counts, t)


def reference_rows(problem: Problem, repeats: int, seed: int) -> list[Row]:
    seconds = median_seconds(
        {
            "reference": lambda: reference_style_sample(problem, _predict, seed),
            "sample": sampler_run(problem, "binomial_bridge", seed),
        },
        repeats,
    )
    steps = problem.num_steps
    return [
        Row(
            "reference-style loop / sample(binomial_bridge), whole run",
            f"{problem.name}, batch {problem.shape[0]}, {steps} steps",
            f"{seconds['reference'] / seconds['sample']:.2f}x faster "
            f"({seconds['reference'] / steps * 1e3:.2f} vs {seconds['sample'] / steps * 1e3:.2f}"
            " ms/step)",
            ">= 5x (GPU)",
        )
    ]


def table_rows(max_count: int) -> list[Row]:
    reference_bytes = (REFERENCE_TABLE_STEPS + 1) * 256 * 256 * 8
    own_bytes = (max_count + 1) ** 2 * 4
    return [
        Row(
            "draw tables (arithmetic, not measured)",
            f"reference: float64 (T+1)x256x256, T={REFERENCE_TABLE_STEPS}; "
            f"blackout_jax: float32 (N+1)^2 per step, N={max_count}",
            f"{megabytes(reference_bytes)} each vs {own_bytes / 2**10:.0f} KiB, built in the step",
            "no O(T N^2) table",
        )
    ]


def training_rows(
    config: Any, image_shape: tuple[int, ...], batch: int, dtypes: list[str], steps: int
) -> list[Row]:
    """The exact training step of ``train_step.make_train_step``, jitted as training jits it.

    TFLOP/s from the FLOP count of the step's own jaxpr (:mod:`experiments.benchmarks.flops`:
    convolutions, dense layers, attention), which holds on every backend; XLA's count beside it.
    """
    peak = common.bf16_peak(jax.devices()[0])
    rows = []
    for dtype in dtypes:
        config = config.copy_and_resolve_references()
        config.model.dtype = dtype
        step = common.train_step(config, image_shape, batch)
        counted = flop_count.count_flops(step.jitted, *step.args).total
        start = time.perf_counter()
        compiled = step.jitted.lower(*step.args).compile()
        compile_s = time.perf_counter() - start
        times = common.time_train_steps(compiled, step.args, steps)
        seconds = statistics.median(times)
        achieved = counted / seconds
        fraction = f"; {achieved / peak:.1%} of bf16 peak" if peak else ""
        setting = (
            f"{config.data.name} NCSN++, batch {batch}, {dtype}, median of {steps} steps "
            f"({', '.join(f'{s:.2f}' for s in times)} s)"
        )
        rows.append(
            Row(
                "training step (train_step.make_train_step)",
                setting,
                f"{batch / seconds:,.2f} images/s; {achieved / 1e12:.4f} TFLOP/s{fraction}",
                ">= 40% of a measured bf16 matmul (GPU, bf16)",
            )
        )
        rows.append(
            Row(
                "training step: init; compile; FLOPs (counted; XLA); program buffers",
                f"{config.data.name} NCSN++, batch {batch}, {dtype}",
                f"init {step.init_seconds:.1f} s; compile {compile_s:.1f} s; "
                f"{counted / 1e9:,.1f}; {common.xla_flops(compiled) / 1e9:,.1f} GFLOP/step; "
                f"{megabytes(program_bytes(compiled))}",
            )
        )
        del step, compiled
    return rows


def peak_memory_row() -> Row:
    stats_ = jax.devices()[0].memory_stats()
    if stats_ and "peak_bytes_in_use" in stats_:
        return Row(
            "peak device memory of the whole run",
            "memory_stats()['peak_bytes_in_use']",
            megabytes(stats_["peak_bytes_in_use"]),
        )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return Row(
        "peak memory of the whole run (no device statistics on this backend)",
        "process peak resident set, getrusage ru_maxrss",
        megabytes(peak_kib * 1024),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny settings")
    parser.add_argument("--sample-steps", type=int, default=100, help="sampler grid steps")
    parser.add_argument("--sample-batch", type=int, default=64, help="digits sampler batch")
    parser.add_argument(
        "--cifar-batch",
        type=int,
        default=0,
        help="CIFAR-shaped sampler batch (0: 256 on GPU/TPU, 16 on CPU)",
    )
    parser.add_argument("--train-batch", type=int, default=0, help="0: 256 on GPU/TPU, 4 on CPU")
    parser.add_argument("--train-dtypes", default="float32,bfloat16")
    parser.add_argument("--train-steps", type=int, default=2, help="timed steps after warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per comparison")
    parser.add_argument("--cifar-sampler", action="store_true", help="also on a CPU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    accelerator = jax.default_backend() != "cpu"
    steps, repeats = args.sample_steps, args.repeats
    sample_batch = args.sample_batch
    cifar_batch = args.cifar_batch or (256 if accelerator else 16)
    train_batch = args.train_batch or (256 if accelerator else 4)
    train_steps, train_config, train_shape = args.train_steps, cifar10_config.get_config(), None
    if args.quick:
        steps, repeats, sample_batch, cifar_batch = 10, 1, 32, 2
        train_batch, train_steps = 8, 1
        train_config, train_shape = digits_config.get_config(), (8, 8, 1)
    train_shape = train_shape or (32, 32, 3)
    host_repeats = max(5, 3 * repeats)
    digits = digits_config.get_config()
    cifar = cifar10_config.get_config()
    device = jax.devices()[0]
    start_all = time.perf_counter()
    rows: list[Row] = []

    log("sampler overhead with the digits network")
    digits_net = network_problem(digits, (8, 8, 1), sample_batch, steps)
    rows += overhead_rows(digits_net, repeats, args.seed)
    cifar_net = None
    if accelerator or args.cifar_sampler:
        log("sampler overhead with the CIFAR-10 network")
        cifar_net = network_problem(cifar, (32, 32, 3), cifar_batch, steps)
        rows += overhead_rows(cifar_net, repeats, args.seed)
    else:
        rows.append(
            Row(
                "sample(...) / network alone, CIFAR-10 NCSN++",
                "accelerator only (or --cifar-sampler)",
                f"not measured (backend {jax.default_backend()})",
                "<= 1.05 (GPU)",
            )
        )

    log("draw cost per count and step")
    digits_trivial = trivial_problem("digits-shaped", (256, 8, 8, 1), 16, 10.0, steps)
    cifar_trivial = trivial_problem("CIFAR-shaped", (cifar_batch, 32, 32, 3), 255, 15.0, steps)
    for problem in (digits_trivial, cifar_trivial):
        rows += draw_cost_rows(problem, repeats, host_repeats, args.seed)

    log("reference-style loop")
    rows += reference_rows(digits_net, repeats, args.seed)
    rows += reference_rows(
        dataclasses.replace(cifar_trivial, name="trivial predict_fn, CIFAR-shaped, N=255"),
        repeats,
        args.seed,
    )
    if cifar_net is not None:
        rows += reference_rows(cifar_net, repeats, args.seed)
    rows += table_rows(255)

    log(f"training step, batch {train_batch}")
    dtypes = [d.strip() for d in args.train_dtypes.split(",") if d.strip()]
    rows += training_rows(train_config, train_shape, train_batch, dtypes, train_steps)
    rows.append(peak_memory_row())
    log(f"done in {time.perf_counter() - start_all:.0f} s")

    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, device "
        f"{device.device_kind}, {jax.device_count()} device(s), host {platform.machine()}; "
        f"sampler grid observation_times({steps}, t_end); median of {repeats} interleaved runs "
        f"(host draws: {host_repeats}); total {time.perf_counter() - start_all:.0f} s"
    )
    print()
    print("| measurement | setting | result | goal |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row.measurement} | {row.setting} | {row.result} | {row.goal} |")


if __name__ == "__main__":
    main()
