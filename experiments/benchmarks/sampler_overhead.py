"""How much the samplers cost on top of the network that drives them.

    python -m experiments.benchmarks.sampler_overhead [--batch 256] [--num-steps 1000]
        [--t-end 15] [--channels 32] [--repeats 3] [--host-repeats 20] [--seed 0]

Measures, on digits-sized states (``batch`` x 8 x 8 x 1, ``max_count`` 16) and the reference grid
``observation_times(num_steps, t_end)``:

1. a small convolutional network (3 conv layers, ``channels`` channels, written with
   ``jax.lax.conv_general_dilated``) as ``predict_fn``: one bare jitted call on the batch, a
   ``lax.scan`` of the bare network over ``num_steps`` steps (the fair baseline: same loop, no
   sampler), and ``sample`` with both methods; per-step times and the ratio to the baseline;
2. the sampler's own cost in ns per count per step, with a trivial ``predict_fn``
   (``yhat = (N - n) / 2``), beside a host-side draw of the same binomials per step with NumPy's
   ``Generator.binomial`` and with ``scipy.stats.binom.rvs``;
3. the cost of a progress callback (``progress=sampler_progress()``, host callbacks reporting
   steps/s) relative to ``progress=None``.

Every figure is the median of ``repeats`` timed runs after one warm-up (compilation) run, with
``block_until_ready``. Prints one table.
"""

from __future__ import annotations

import argparse
import math
import platform

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import blackout_jax as bj
from blackout_jax.run.progress import sampler_progress
from experiments.benchmarks.common import median_seconds

MAX_COUNT = 16
IMAGE_SHAPE = (8, 8, 1)


def init_conv_net(key: jax.Array, channels: int) -> dict[str, jax.Array]:
    """Weights of three 3x3 convolutions: (counts, time) -> channels -> channels -> 1 (HWIO)."""
    sizes = [(2, channels), (channels, channels), (channels, 1)]
    params = {}
    for i, (key_i, (fan_in, fan_out)) in enumerate(
        zip(jax.random.split(key, 3), sizes, strict=True)
    ):
        scale = 1.0 / math.sqrt(9 * fan_in)
        params[f"w{i}"] = scale * jax.random.normal(key_i, (3, 3, fan_in, fan_out), jnp.float32)
        params[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
    return params


def conv_net(params: dict[str, jax.Array], counts: jax.Array, t: jax.Array) -> jax.Array:
    """``yhat = softplus(net(n_t - (N/2) p_t, log t))``, shape of ``counts`` (NHWC, float32).

    The count channel follows the reference input convention; the time enters as a second,
    constant channel ``log t``.
    """
    p_t = jnp.exp(-t)[:, None, None, None]
    centred = counts.astype(jnp.float32) - 0.5 * MAX_COUNT * p_t
    time_channel = jnp.broadcast_to(jnp.log(t)[:, None, None, None], centred.shape)
    x = jnp.concatenate([centred, time_channel], axis=-1)
    for i in range(3):
        x = jax.lax.conv_general_dilated(
            x, params[f"w{i}"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        x = x + params[f"b{i}"]
        if i < 2:
            x = jax.nn.silu(x)
    return jax.nn.softplus(x)


def half_room(counts: jax.Array, t: jax.Array) -> jax.Array:
    """A trivial ``predict_fn``: ``(N - n) / 2``."""
    return 0.5 * (MAX_COUNT - counts).astype(jnp.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--num-steps", type=int, default=1000)
    parser.add_argument("--t-end", type=float, default=15.0)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--host-repeats", type=int, default=20, help="timed host draws (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    shape = (args.batch, *IMAGE_SHAPE)
    num_counts = math.prod(shape)
    steps = args.num_steps
    times = bj.observation_times(steps, args.t_end)
    key = jax.random.key(args.seed)
    params = init_conv_net(jax.random.fold_in(key, 1), args.channels)
    network = jax.tree_util.Partial(conv_net, params)
    counts = jax.random.randint(jax.random.fold_in(key, 2), shape, 0, MAX_COUNT + 1)
    t_batch = jnp.full((args.batch,), 1.0, jnp.float32)
    rows: list[tuple[str, str]] = []

    # 1. The network alone (one call; a scan over the grid) and the samplers driven by it.
    bare = jax.jit(conv_net)

    @jax.jit
    def network_scan(params, start, grid):
        def step(state, t):
            pred = conv_net(params, state, jnp.full((args.batch,), t, jnp.float32))
            bump = (pred > 1e9).astype(state.dtype)  # keeps every call live, changes nothing
            return jnp.clip(state + bump, 0, MAX_COUNT), None

        final, _ = jax.lax.scan(step, start, grid[1:][::-1])
        return final

    def run_sampler(predict_fn, method: str, progress: bool = False):
        def run():
            draws = bj.sample(
                key,
                predict_fn,
                shape,
                times,
                max_count=MAX_COUNT,
                method=method,
                progress=sampler_progress(progress, terminal=True),
            )
            draws.block_until_ready()
            if progress:
                jax.effects_barrier()  # every progress line has been written (to stderr)
            return draws

        return run

    per_call = median_seconds({"call": lambda: bare(params, counts, t_batch)}, 50)["call"]
    with_network = median_seconds(
        {
            "baseline": lambda: network_scan(params, counts, times),
            **{method: run_sampler(network, method) for method in bj.METHODS},
        },
        args.repeats,
    )
    baseline = with_network["baseline"] / steps
    rows.append(("conv net, one jitted call on the batch", f"{per_call * 1e3:.3f} ms"))
    rows.append(("conv net, lax.scan over the grid (baseline)", f"{baseline * 1e3:.3f} ms/step"))
    for method in bj.METHODS:
        per_step = with_network[method] / steps
        rows.append(
            (
                f"sample({method}) with the conv net",
                f"{per_step * 1e3:.3f} ms/step = {per_step / baseline:.2f}x baseline",
            )
        )

    # 2. The sampler's own cost per count and step, and host-side draws of the same binomials.
    trivial = median_seconds(
        {method: run_sampler(half_room, method) for method in bj.METHODS}, args.repeats
    )
    for method in bj.METHODS:
        rows.append(
            (
                f"sample({method}), trivial predict_fn",
                f"{trivial[method] / steps / num_counts * 1e9:.2f} ns/count/step",
            )
        )
    rng = np.random.default_rng(args.seed)
    room = rng.integers(0, MAX_COUNT + 1, num_counts)
    r = float(bj.bridge_probability(times[steps // 2 - 1], times[steps // 2]))
    host = median_seconds(
        {
            "host numpy Generator.binomial, same counts": lambda: rng.binomial(room, r),
            "host scipy.stats.binom.rvs, same counts": lambda: stats.binom.rvs(
                room, r, random_state=rng
            ),
        },
        args.host_repeats,
    )
    for name, seconds in host.items():
        rows.append((name, f"{seconds / num_counts * 1e9:.2f} ns/count/step"))

    # 3. Progress reporting (about 20 host callbacks per run).
    progress = median_seconds(
        {
            "off": run_sampler(network, "binomial_bridge"),
            "on": run_sampler(network, "binomial_bridge", progress=True),
        },
        args.repeats,
    )
    rows.append(
        (
            "sample(binomial_bridge), conv net, progress on/off",
            f"{progress['on'] / progress['off']:.3f}x",
        )
    )

    print(
        f"# {platform.machine()} jax {jax.__version__} backend {jax.default_backend()} "
        f"devices {jax.device_count()}; batch {args.batch} x {IMAGE_SHAPE}, max_count "
        f"{MAX_COUNT}, {steps} steps, t_end {args.t_end}, {args.channels} channels; "
        f"median of {args.repeats} interleaved runs"
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
