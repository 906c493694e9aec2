"""What the training step costs against its network: kernels, compile time, step time.

    python -m experiments.benchmarks.compile_study [--config digits|cifar10] [--batch B]
        [--dtype float32|bfloat16] [--parts network,step,cache] [--steps N] [--json]

For the network of ``configs/<config>.py`` at batch ``B`` it measures, one row each:

* ``network``: the gradient of the training loss alone (``jax.value_and_grad`` of
  :func:`blackout_jax.training_loss` through the network): trace+lower and compile seconds,
  the kernels of the optimised program (:func:`common.hlo_op_counts`) and the median time of
  ``N`` calls;
* ``step``: the whole training step of :func:`blackout_jax.run.train_step.make_train_step` (loss,
  gradient, Adam, clipping, EMA, the non-finite guard on the flat state), the same figures;
* ``cache``: the step compiled again, in a new process, with the persistent compilation cache
  filled by the first compilation (what a resumed run pays; in the same process JAX would
  reuse its in-memory executable instead).

``--json`` also prints one JSON line with ``network_kernels``, ``step_kernels``,
``network_compile_s``, ``step_compile_s``, ``network_step_ms``, ``step_ms`` and their ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import blackout_jax as bj
from configs import cifar10, digits
from experiments.benchmarks import common

CONFIGS = {"digits": (digits.get_config, (8, 8, 1)), "cifar10": (cifar10.get_config, (32, 32, 3))}


def compile_row(
    name: str, setting: str, jitted, args, steps: int, *, chained: bool = False
) -> tuple[common.Row, dict[str, float]]:
    """Lower and compile ``jitted(*args)``; time ``steps`` calls after one warm-up. With
    ``chained`` a call's first output is the next call's first argument (the training step
    donates and returns its state)."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    counts = common.hlo_op_counts(compiled)
    kernels = sum(n for op, n in counts.items() if op not in common.NOT_KERNELS)
    figures: dict[str, float] = {"kernels": kernels, "compile_s": round(compile_s, 1)}
    result = f"trace+lower {lowered_s:.1f} s; compile {compile_s:.1f} s; "
    if steps:
        args = list(args)
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            outputs = jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
            if chained:
                args[0] = outputs[0]
        times = times[1:]
        figures["ms"] = round(1000 * float(np.median(times)), 1)
        result += f"{figures['ms']:.1f} ms per call (median of {steps}); "
    result += common.kernel_summary(counts)
    return common.Row(name, setting, result), figures


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Compile and time the one part ``args.parts`` names; print its row; return its figures."""
    if args.cache_dir:  # before the first compilation of this process
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    get_config, image_shape = CONFIGS[args.config]
    config = get_config()
    config.model.dtype = args.dtype
    setting = f"{args.config} NCSN++, batch {args.batch}, {args.dtype}, {jax.default_backend()}"
    step = common.train_step(config, image_shape, args.batch)
    if args.parts == "network":
        state, rest, counts = step.args
        keys = bj.example_keys(jax.random.key(0), jnp.arange(args.batch, dtype=jnp.uint32))

        def loss_and_grad(params, rest, counts):
            def loss(params):
                model = nnx.merge(step.graphdef, params, rest)
                per_example = bj.training_loss(
                    keys,
                    lambda n, t: model(n, t, train=True, dropout_key=jax.random.key(1)),
                    counts,
                    weighting=config.diffusion.weighting,
                    t_end=float(config.diffusion.t_end),
                    num_steps=int(config.diffusion.num_steps),
                )
                return jnp.mean(per_example)

            return jax.value_and_grad(loss)(params)

        arguments = (state.network_params(), rest, counts)
        row, figures = compile_row(
            args.label, setting, jax.jit(loss_and_grad), arguments, args.steps
        )
    else:
        row, figures = compile_row(
            args.label, setting, step.jitted, step.args, args.steps, chained=True
        )
    print(row.markdown(), flush=True)
    return figures


LABELS = {
    "network": "loss and gradient only",
    "step": "training step",
    "cache": "training step, new process, cache filled",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="digits")
    parser.add_argument("--batch", type=int, default=0, help="0: 128 (digits), 4 (cifar10)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--parts", default="network,step,cache")
    parser.add_argument("--steps", type=int, default=5, help="timed calls per program (0: none)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch = args.batch or (128 if args.config == "digits" else 4)
    if args.child:
        print(_FIGURES + json.dumps(measure(args)), flush=True)
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
    print(common.TABLE_HEADER, flush=True)
    cache_dir = tempfile.mkdtemp(prefix="xla_cache_")
    summary: dict[str, object] = {"config": args.config, "batch": args.batch, "dtype": args.dtype}
    for part in parts:  # each in a new process: no part inherits another's compilations
        command = [sys.executable, "-m", "experiments.benchmarks.compile_study", "--child"]
        command += [f"--config={args.config}", f"--batch={args.batch}", f"--dtype={args.dtype}"]
        command += [f"--parts={'network' if part == 'network' else 'step'}"]
        command += [f"--label={LABELS[part]}", f"--steps={0 if part == 'cache' else args.steps}"]
        if "cache" in parts and part != "network":  # the step fills the cache, "cache" reads it
            command += [f"--cache-dir={cache_dir}"]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        for line in result.stdout.splitlines():
            if line.startswith(_FIGURES):
                figures = json.loads(line[len(_FIGURES) :])
                prefix = {"network": "network_", "step": "step_", "cache": "cached_step_"}[part]
                summary.update({_key(prefix, name): value for name, value in figures.items()})
            else:
                print(line, flush=True)
    if args.json:
        for name in ("kernels", "compile_s", "ms"):
            step, network = _key("step_", name), _key("network_", name)
            if step in summary and network in summary:
                ratio = summary[step] / summary[network]
                summary[f"step_over_network_{name}"] = round(ratio, 3)
        summary.update(jax=jax.__version__, device=jax.devices()[0].device_kind)
        print(json.dumps(summary), flush=True)


_FIGURES = "figures: "


def _key(prefix: str, name: str) -> str:
    """The JSON name of a figure: ``network_kernels``, ``network_step_ms``, ``step_ms``, ..."""
    if name == "ms":
        return "step_ms" if prefix == "step_" else f"{prefix}step_ms"
    return prefix + name


if __name__ == "__main__":
    main()
