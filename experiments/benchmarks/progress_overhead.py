"""What the progress reports cost the loops they report on.

    python -m experiments.benchmarks.progress_overhead [--chunks 40] [--chunk-size 64]
        [--calls 8] [--channels 32] [--num-steps 200] [--repeats 5]

Two loops, each timed with its progress report on and off (median of ``repeats`` interleaved
runs after a warm-up, :func:`experiments.benchmarks.common.median_seconds`):

1. the chunk loop :func:`blackout_jax.run.chunked.run_in_chunks` (held-out bound, loss,
   sampling chunks; the progress bar is one tqdm update per chunk) over ``chunks`` chunks of
   ``chunk_size`` digits-sized states, each chunk ``calls`` calls of the small convolutional
   network of :mod:`experiments.benchmarks.sampler_overhead`;
2. ``blackout_jax.sample`` (binomial bridge, ``num_steps`` steps) with that network, whose
   progress line is about 20 host callbacks per run.

Prints the ratio on/off for each; 1.00x means free.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform

import jax
import jax.numpy as jnp

import blackout_jax as bj
from blackout_jax.run import chunked
from blackout_jax.run.progress import sampler_progress
from experiments.benchmarks.common import median_seconds
from experiments.benchmarks.sampler_overhead import IMAGE_SHAPE, MAX_COUNT, conv_net, init_conv_net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--num-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    params = init_conv_net(jax.random.key(0), args.channels)
    network = jax.tree_util.Partial(conv_net, params)
    shape = (args.chunk_size, *IMAGE_SHAPE)

    @jax.jit
    def chunk(key: jax.Array) -> jax.Array:
        counts = jax.random.randint(key, shape, 0, MAX_COUNT + 1)
        total = jnp.zeros(shape[0])
        for call in range(args.calls):
            t = jnp.full((shape[0],), 0.1 + call, jnp.float32)
            total = total + network(counts, t).sum(axis=(1, 2, 3))
        return total

    def chunk_loop(progress: bool):
        def run():
            with contextlib.redirect_stderr(io.StringIO()):
                return chunked.run_in_chunks(
                    jax.random.key(1),
                    chunk,
                    num_examples=args.chunks * args.chunk_size,
                    chunk_size=args.chunk_size,
                    progress=progress,
                )

        return run

    times = bj.observation_times(args.num_steps, 15.0)

    def sampler(progress: bool):
        def run():
            with contextlib.redirect_stderr(io.StringIO()):
                result = bj.sample(
                    jax.random.key(2),
                    network,
                    (args.chunk_size, *IMAGE_SHAPE),
                    times,
                    max_count=MAX_COUNT,
                    progress=sampler_progress(progress, terminal=True),
                )
                if progress:
                    jax.effects_barrier()  # every progress line has been written
            return result

        return run

    rows = []
    for name, loop in (
        (f"run_in_chunks, {args.chunks} chunks x {args.calls} network calls", chunk_loop),
        (f"sample(binomial_bridge), {args.num_steps} steps", sampler),
    ):
        seconds = median_seconds({"off": loop(False), "on": loop(True)}, args.repeats)
        off, on = seconds["off"], seconds["on"]
        rows.append((name, off, on))
    print(
        f"# {platform.machine()} jax {jax.__version__} backend {jax.default_backend()} "
        f"devices {jax.device_count()}; chunk {args.chunk_size} x {IMAGE_SHAPE}, "
        f"{args.channels} channels; median of {args.repeats} interleaved runs"
    )
    print("| loop | progress off | progress on | on / off |")
    print("|---|---|---|---|")
    for name, off, on in rows:
        print(f"| {name} | {off:.3f} s | {on:.3f} s | {on / off:.3f}x |")


if __name__ == "__main__":
    main()
