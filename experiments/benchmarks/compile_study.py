"""Why the training step compiles slowly, and what the persistent cache saves.

    python -m experiments.benchmarks.compile_study [--config digits|cifar10] [--batch B]
        [--dtype float32|bfloat16] [--parts network,step,flat_optimizer,cache]

For the network of ``configs/<config>.py`` at batch ``B`` it measures, one row each:

* ``network``: the gradient of the training loss alone (``jax.value_and_grad`` of
  :func:`blackout_jax.training_loss` through the network): trace+lower and compile seconds,
  and the kernels of the optimised program (:func:`common.hlo_op_counts`);
* ``step``: the whole training step of :func:`blackout_jax.run.train_step.make_train_step` (loss,
  gradient, Adam, EMA, the non-finite guard), the same figures;
* ``flat_optimizer``: the same step with the optimiser wrapped in ``optax.flatten`` (Adam and
  clipping on one concatenated vector instead of one update per parameter array);
* ``cache``: the step compiled again, in a new process, with the persistent compilation cache
  filled by the first compilation (what a resumed run pays; in the same process JAX would
  reuse its in-memory executable instead).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import blackout_jax as bj
from blackout_jax.run import train_step
from configs import cifar10, digits
from experiments.benchmarks import common

CONFIGS = {"digits": (digits.get_config, (8, 8, 1)), "cifar10": (cifar10.get_config, (32, 32, 3))}


def compile_row(name: str, setting: str, jitted, args) -> tuple[common.Row, object]:
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    summary = common.kernel_summary(common.hlo_op_counts(compiled))
    result = f"trace+lower {lowered_s:.1f} s; compile {compile_s:.1f} s; {summary}"
    return common.Row(name, setting, result), compiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="digits")
    parser.add_argument("--batch", type=int, default=0, help="0: 128 (digits), 4 (cifar10)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--parts", default="network,step,flat_optimizer,cache")
    parser.add_argument("--cache-dir", default="", help="persistent cache ('' = a new one)")
    parser.add_argument("--label", default="training step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="xla_cache_")
    if "cache" in parts or args.cache_dir:  # before the first compilation of this process
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    get_config, image_shape = CONFIGS[args.config]
    config = get_config()
    config.model.dtype = args.dtype
    batch = args.batch or (128 if args.config == "digits" else 4)
    setting = f"{args.config} NCSN++, batch {batch}, {args.dtype}, {jax.default_backend()}"
    if not args.cache_dir:
        print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
        print(common.TABLE_HEADER, flush=True)
    step = common.train_step(config, image_shape, batch)

    if "network" in parts:
        state, rest, counts = step.args
        keys = bj.example_keys(jax.random.key(0), jnp.arange(batch, dtype=jnp.uint32))

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

        row, _ = compile_row(
            "loss and gradient only", setting, jax.jit(loss_and_grad), (state.params, rest, counts)
        )
        print(row.markdown(), flush=True)
    if "step" in parts or "cache" in parts:
        row, _ = compile_row(args.label, setting, step.jitted, step.args)
        print(row.markdown(), flush=True)
    if "cache" in parts:
        command = [sys.executable, "-m", "experiments.benchmarks.compile_study", "--parts=step"]
        command += [f"--config={args.config}", f"--batch={batch}", f"--dtype={args.dtype}"]
        command += [f"--cache-dir={cache_dir}", "--label=training step, new process, cache filled"]
        subprocess.run(command, check=True)
    if "flat_optimizer" in parts:
        flat = common.train_step(
            config,
            image_shape,
            batch,
            optimizer=optax.flatten(train_step.make_optimizer(config.training)),
        )
        name = "training step, optax.flatten(optimizer)"
        row, _ = compile_row(name, setting, flat.jitted, flat.args)
        print(row.markdown(), flush=True)


if __name__ == "__main__":
    main()
