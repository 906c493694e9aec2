"""The accelerator benchmark: every speed figure of the project in one time-boxed run.

    python -m experiments.benchmarks.accelerator [--quick] [--output table.md]

Runs each section below in its own process (so a section that overruns its time box is ended
and the run goes on), prints every Markdown row the moment it is measured and appends it to
``--output``. A full run is sized for one H200 in under 8 minutes; ``--quick`` is a CPU dry run
with tiny settings (a tiny digits-shaped network in place of CIFAR-10's, a few steps) that
exercises every code path.

Sections (time box in seconds, full run):

* ``matmul`` (30): the device: a bf16 ``n x n x n`` matrix product (``n = 8192``), the
  measured rate beside the datasheet dense bf16 peak (989 TFLOP/s for H100/H200 SXM).
* ``cifar_bf16`` (190): the CIFAR-10 NCSN++ training step of ``train_step.make_train_step`` in
  bfloat16 at batch 256: compile time, ms/step, images/s; FLOPs counted from the step's jaxpr
  (:mod:`experiments.benchmarks.flops`) beside XLA's count, TFLOP/s and MFU against the datasheet
  peak and the measured matmul. (The network's FLOPs per image do not depend on the device:
  :func:`experiments.benchmarks.flops.network_flops`, figures in experiments/RESULTS.md.)
* ``cached`` (40): the same bf16 step built again in a new process (what a resumed run does):
  compile time with the persistent compilation cache that ``cifar_bf16`` filled.
* ``cifar_fp32`` (150, not in the default run, which stays under 8 minutes without it): the
  same step in float32 (compile time, ms/step); its compile alone took over 80 s on the H200.
* ``digits`` (50): the digits default training step (batch 128): ms/step and the kernels of
  its compiled program.
* ``sampler`` (160): the CIFAR-10 network alone in the sampler's loop (``lax.scan`` over the
  grid, batch 256, 100 steps) in float32 and with ``model.inference_dtype = "bfloat16"``;
  ``sample(binomial_bridge)`` against it in bfloat16, and the reference-style host loop
  against ``sample`` (bfloat16), whole run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from experiments.benchmarks.common import TABLE_HEADER, Row

SECTIONS = {
    "matmul": 30,
    "cifar_bf16": 190,
    "cached": 40,
    "digits": 50,
    "sampler": 160,
    "cifar_fp32": 150,
}
DEFAULT_SECTIONS = ("matmul", "cifar_bf16", "cached", "digits", "sampler")  # 470 s at most
QUICK_SECONDS = 900  # per section on a (shared, slow) CPU
MATMUL_MARK = "#matmul_flops_per_second "


def emit(row: Row) -> None:
    print(row.markdown(), flush=True)


def giga(value: float) -> str:
    """``value / 1e9`` with a thousands separator, or 3 significant digits below 10."""
    value = value / 1e9
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def quick_config() -> Any:
    """``configs/digits.py`` with a tiny network (8 channels, two levels): compiles fast."""
    from configs import digits

    config = digits.get_config()
    config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 8, (1, 2), 1
    return config


# --------------------------------------------------------------------------------------------
# Sections (each runs in a child process)
# --------------------------------------------------------------------------------------------


def section_matmul(quick: bool) -> None:
    import jax
    import jax.numpy as jnp

    from experiments.benchmarks import common

    device = jax.devices()[0]
    emit(
        Row(
            "device",
            f"jax {jax.__version__}, backend {jax.default_backend()}",
            f"{device.device_kind}, {jax.device_count()} device(s)",
        )
    )
    n, repeats = (512, 3) if quick else (8192, 20)
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (n, n), jnp.bfloat16)
    b = jax.random.normal(keys[1], (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(matmul(a, b))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            out = matmul(a, b)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / repeats)
    rate = 2 * n**3 / statistics.median(times)
    peak = common.bf16_peak(device)
    versus = f"; {rate / peak:.0%} of the datasheet {peak / 1e12:.0f}" if peak else ""
    emit(
        Row(
            "bf16 matmul rate (measured)",
            f"{n}x{n} @ {n}x{n}, median of 3 x {repeats} calls",
            f"{rate / 1e12:,.3g} TFLOP/s{versus}",
        )
    )
    print(f"{MATMUL_MARK}{rate}", flush=True)


def _mfu(achieved: float, matmul_rate: float, device: Any) -> str:
    from experiments.benchmarks import common

    parts = []
    peak = common.bf16_peak(device)
    if peak:
        parts.append(f"{achieved / peak:.1%} of datasheet bf16 peak")
    if matmul_rate > 0:
        parts.append(f"{achieved / matmul_rate:.1%} of the measured matmul")
    return "; ".join(parts) or "no peak known for this device"


def section_train(name: str, quick: bool, matmul_rate: float) -> None:
    import jax

    from configs import cifar10, digits
    from experiments.benchmarks import common, flops

    dtype = "float32" if name == "cifar_fp32" else "bfloat16"
    if name == "digits" or quick:
        config = quick_config() if quick else digits.get_config()
        shape, label = (8, 8, 1), "tiny digits-shaped (--quick)" if quick else "digits"
        batch, steps = (8, 2) if quick else (128, 20)
        if name == "digits":
            dtype = "float32"
    else:
        config, shape, label = cifar10.get_config(), (32, 32, 3), "CIFAR-10"
        batch, steps = 256, 10
    config.model.dtype = dtype
    setting = f"{label} NCSN++, batch {batch}, {dtype}"
    step = common.train_step(config, shape, batch)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), step.args)
    start = time.perf_counter()
    compiled = step.jitted.lower(*step.args).compile()
    compile_s = time.perf_counter() - start
    if name == "cached":
        emit(
            Row(
                "training step compiled in a new process, persistent cache filled",
                setting,
                f"init {step.init_seconds:.1f} s; compile {compile_s:.1f} s",
                "no compile on resume",
            )
        )
        return
    emit(
        Row(
            "training step: init; trace+compile",
            setting,
            f"init {step.init_seconds:.1f} s; compile {compile_s:.1f} s",
            "<= 45 s (H200)" if label == "CIFAR-10" else "",
        )
    )
    if name == "digits":
        emit(
            Row(
                "training step: kernels of the compiled program",
                setting,
                common.kernel_summary(common.hlo_op_counts(compiled)),
            )
        )
    times = common.time_train_steps(compiled, step.args, steps)
    seconds = statistics.median(times)
    goal = {
        "cifar_bf16": ">= ~5,100 images/s (H200)",
        "digits": "<= 4 ms (H200)",
    }.get(name, "")
    emit(
        Row(
            "training step",
            f"{setting}, median of {steps} steps",
            f"{seconds * 1e3:,.1f} ms/step; {batch / seconds:,.0f} images/s",
            goal,
        )
    )
    counted = flops.count_flops(step.jitted, *shapes).total  # the state was donated
    achieved = counted / seconds
    emit(
        Row(
            "training step: FLOPs counted (XLA's count); rate; MFU",
            setting,
            f"{giga(counted)} ({giga(common.xla_flops(compiled))}) GFLOP/step; "
            f"{giga(achieved * 1e-3)} TFLOP/s; {_mfu(achieved, matmul_rate, jax.devices()[0])}",
            ">= 40% of the measured matmul" if name == "cifar_bf16" else "",
        )
    )


def section_sampler(quick: bool) -> None:
    import jax.numpy as jnp
    from flax import nnx

    import blackout_jax as bj
    from blackout_jax import models
    from configs import cifar10
    from experiments.benchmarks import performance
    from experiments.benchmarks.common import median_seconds

    if quick:
        config, shape, batch, steps, repeats = quick_config(), (8, 8, 1), 4, 5, 1
    else:
        config, shape, batch, steps, repeats = cifar10.get_config(), (32, 32, 3), 256, 100, 2
    max_count, t_end = int(config.data.max_count), float(config.diffusion.t_end)
    network = dict(image_shape=shape, max_count=max_count, t_end=t_end, num_steps=1000)
    _, state = nnx.split(models.create_model(config.model, seed=0, **network))
    problems = {}
    for dtype in ("float32", "bfloat16"):  # one set of parameters, two compute dtypes
        config.model.inference_dtype = dtype
        graphdef = nnx.graphdef(models.abstract_network(config.model, **network))
        problems[dtype] = performance.Problem(
            f"NCSN++ {config.data.name}{' (tiny, --quick)' if quick else ''}, {dtype}",
            models.make_predict_fn(graphdef, state),
            (batch, *shape),
            max_count,
            bj.observation_times(steps, t_end),
        )
    for dtype, problem in problems.items():
        start = jnp.zeros(problem.shape, jnp.int32)
        runs = {
            "network": lambda p=problem, s=start: performance._network_scan(
                p.predict_fn, s, p.times
            )
        }
        if dtype == "bfloat16":
            runs["sample"] = performance.sampler_run(problem, "binomial_bridge", 0)
        seconds = median_seconds(runs, repeats)
        baseline = seconds["network"] / steps
        ratio = (
            f"; sample / it {seconds['sample'] / seconds['network']:.3f}x"
            if "sample" in seconds
            else ""
        )
        emit(
            Row(
                "network alone in the sampler loop (lax.scan over the grid)",
                f"{problem.name}, batch {batch}, {steps} steps",
                f"{baseline * 1e3:.2f} ms/step{ratio}",
                "sample / it <= 1.05" if ratio else "",
            )
        )
    for row in performance.reference_rows(problems["bfloat16"], repeats, 0):
        emit(row)


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def run_section(name: str, args: argparse.Namespace, matmul_rate: float, output) -> float:
    """Run one section in a child process within its time box; return the matmul rate seen."""
    box = QUICK_SECONDS if args.quick else SECTIONS[name]
    command = [sys.executable, "-m", "experiments.benchmarks.accelerator", "--section", name]
    command += ["--matmul-rate", str(matmul_rate)] + (["--quick"] if args.quick else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", args.cache_dir)
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    seen = {"rate": matmul_rate}

    def relay() -> None:
        for line in child.stdout:
            if line.startswith(MATMUL_MARK):
                seen["rate"] = float(line[len(MATMUL_MARK) :])
                continue
            print(line, end="", flush=True)
            if output is not None and line.startswith("|"):
                output.write(line)
                output.flush()

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        status = child.wait(timeout=box)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        status = None
    reader.join(timeout=5)
    elapsed = time.perf_counter() - start
    if status != 0:
        why = f"ended by its {box} s time box" if status is None else f"failed (status {status})"
        row = Row(f"section {name}", "", f"{why} after {elapsed:.0f} s; rows above are kept")
        print(row.markdown(), flush=True)
        if output is not None:
            output.write(row.markdown() + "\n")
            output.flush()
    print(f"[accelerator] section {name}: {elapsed:.0f} s", file=sys.stderr, flush=True)
    return seen["rate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU dry run with tiny settings")
    parser.add_argument("--output", default="", help="append the Markdown rows to this file")
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated, from {', '.join(SECTIONS)}",
    )
    parser.add_argument("--section", default="", help=argparse.SUPPRESS)
    parser.add_argument("--matmul-rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default="", help="compilation cache ('' = a new temp dir)")
    args = parser.parse_args()

    if args.section == "matmul":
        return section_matmul(args.quick)
    if args.section == "sampler":
        return section_sampler(args.quick)
    if args.section:
        return section_train(args.section, args.quick, args.matmul_rate)

    args.cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="accelerator_xla_cache_")
    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    output = open(args.output, "a") if args.output else None  # noqa: SIM115
    print(TABLE_HEADER, flush=True)
    if output is not None:
        output.write(f"\n{TABLE_HEADER}\n")
    start = time.perf_counter()
    rate = 0.0
    try:
        for name in names:
            rate = run_section(name, args, rate, output)
    finally:
        if output is not None:
            output.close()
    print(f"[accelerator] total {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
