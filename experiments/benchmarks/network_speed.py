"""Speed of the NCSN++ network: forward and forward+backward time and achieved TFLOP/s.

Builds the network of a config (``cifar10``: the reference NCSN++, 62.7M parameters, 32x32x3;
``digits``: the default small network, 8x8x1), compiles a forward pass and a
forward+backward pass (the gradient of the summed output with respect to all parameters)
with ``jax.jit``, runs ``--warmup`` untimed calls and then times ``--steps`` calls, each ended
with ``block_until_ready``. FLOPs per call are counted from the program's jaxpr
(:mod:`experiments.benchmarks.flops`: convolutions, dense layers, attention; right on every
backend), XLA's cost analysis beside it; TFLOP/s = counted FLOPs / median time.

    python -m experiments.benchmarks.network_speed --config cifar10 --batch 128 \\
        --dtype float32 --steps 2

Prints one table row per (dtype, pass) on the default JAX device, with the peak resident
memory of the process so far (host memory; on CPU it bounds the activations' footprint).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from blackout_jax.models import count_parameters, create_model
from configs import cifar10, digits
from experiments.benchmarks import flops
from experiments.benchmarks.common import xla_flops

CONFIGS = {"cifar10": (cifar10.get_config, (32, 32, 3)), "digits": (digits.get_config, (8, 8, 1))}


def log(message: str) -> None:
    """Progress on stderr, with the peak resident memory of this process so far."""
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"[{time.strftime('%H:%M:%S')}] {message} (peak RSS {peak_gb:.1f} GB)", file=sys.stderr)


def time_calls(fn, args, *, warmup: int, steps: int) -> list[float]:
    """Seconds per call for ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def benchmark(config_name: str, dtype: str, batch: int, steps: int, warmup: int, passes):
    get_config, image_shape = CONFIGS[config_name]
    config = get_config()
    config.model.dtype = dtype
    max_count = int(config.data.max_count)
    log(f"initialising {config_name} ({dtype})")
    start = time.perf_counter()
    model = create_model(
        config.model,
        image_shape=image_shape,
        max_count=max_count,
        t_end=float(config.diffusion.t_end),
        num_steps=int(config.diffusion.num_steps),
        seed=0,
    )
    init_s = time.perf_counter() - start
    graphdef, params = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(0)
    counts = jnp.asarray(rng.integers(0, max_count + 1, (batch, *image_shape)), jnp.int32)
    t = jnp.asarray(rng.uniform(1e-3, float(config.diffusion.t_end), (batch,)), jnp.float32)

    def forward(params, counts, t):
        return nnx.merge(graphdef, params)(counts, t)

    def forward_backward(params, counts, t):
        return jax.grad(lambda p: jnp.sum(forward(p, counts, t)))(params)

    rows = []
    for name, fn in (("forward", forward), ("fwd+bwd", forward_backward)):
        if name not in passes:
            continue
        log(f"compiling {name}")
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(params, counts, t).compile()
        compile_s = time.perf_counter() - start
        counted = flops.count_flops(fn, params, counts, t).total
        log(
            f"timing {name}: {counted / 1e9:.1f} GFLOP per call counted, "
            f"{xla_flops(compiled) / 1e9:.1f} by XLA's cost analysis"
        )
        times = time_calls(compiled, (params, counts, t), warmup=warmup, steps=steps)
        log(f"done {name}: {', '.join(f'{s:.2f}' for s in times)} s")
        median = statistics.median(times)
        rows.append(
            dict(
                config=config_name,
                params=count_parameters(params),
                dtype=dtype,
                batch=batch,
                pass_=name,
                init_s=init_s,
                compile_s=compile_s,
                seconds=median,
                times=times,
                peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                gflop=counted / 1e9,
                tflops=counted / median / 1e12,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cifar10")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "both"), default="both", help="compute dtype"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed calls per pass")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument(
        "--passes",
        default="forward,fwd+bwd",
        help="comma-separated subset of: forward, fwd+bwd",
    )
    args = parser.parse_args()
    dtypes = ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)
    passes = tuple(p.strip() for p in args.passes.split(","))

    device = jax.devices()[0]
    print(
        f"# jax {jax.__version__}, device {device.platform}:{device.device_kind}, "
        f"{jax.device_count()} device(s), host {platform.machine()}, "
        f"config {args.config}, batch {args.batch}, warmup {args.warmup}, steps {args.steps}"
    )
    header = (
        f"{'config':8} {'params':>11} {'dtype':9} {'batch':>5} {'pass':8} {'init s':>7} "
        f"{'compile s':>9} {'s/call':>8} {'GFLOP/call':>11} {'TFLOP/s':>8} {'peak RSS GB':>11}"
    )
    print(header)
    print("-" * len(header))
    for dtype in dtypes:
        for row in benchmark(args.config, dtype, args.batch, args.steps, args.warmup, passes):
            print(
                f"{row['config']:8} {row['params']:>11,} {row['dtype']:9} {row['batch']:>5} "
                f"{row['pass_']:8} {row['init_s']:>7.1f} {row['compile_s']:>9.1f} "
                f"{row['seconds']:>8.3f} {row['gflop']:>11.1f} {row['tflops']:>8.4f} "
                f"{row['peak_rss_gb']:>11.1f}",
                flush=True,
            )
            print(f"#   per-call times (s): {', '.join(f'{s:.3f}' for s in row['times'])}")


if __name__ == "__main__":
    main()
