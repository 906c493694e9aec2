"""Sampler draws, forward draws and the prior KL against the size of the largest count.

    python -m experiments.benchmarks.count_size [--steps 10] [--batch 64] [--entries 2000]
        [--repeats 3] [--max-counts 16,255,4096,100000] [--output PATH]

Prints one Markdown table per measurement and writes everything to
``experiments/results/count_size.json``:

1. Sampler steps: :func:`blackout_jax.sample` (``binomial_bridge`` and ``tau_leaping``) on a
   ``(batch, entries)`` state with the trivial ``predict_fn`` ``yhat = (N - n) / 2`` (so that
   only the draws cost anything, and the numbers of trials grow with ``N``), over
   ``observation_times(steps, 15)``; ms per step, and the ratio to ``N = 255``. ``path`` is
   ``default`` (the per-step tables up to ``draws.TABLE_MAX_COUNT``, flat draws above),
   ``table`` (tables forced, only up to ``--table-limit``) or ``flat`` (flat draws forced).
2. Forward draws: ``n_t ~ Binomial(n_0, p_t)`` for a ``(4 batch, entries)`` batch of clean
   counts uniform in ``0..N`` and one uniform time per example (as in a training step), with
   ``jax.random.binomial`` and with :func:`blackout_jax.draws.binomial`.
3. Prior KL: :func:`blackout_jax.prior_kl` of one example of ``entries`` counts uniform in
   ``0..N`` at ``t_end = 15``, against the sum over every ``k = 0..N`` (the former method).

Timed figures are the fastest of ``--repeats`` runs after a compiling run (the run least
disturbed by other jobs on a shared machine).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import pathlib
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

import blackout_jax as bj
from blackout_jax import draws, likelihood, process

T_END = 15.0
BASELINE_COUNT = 255
OUTPUT = pathlib.Path("experiments/results/count_size.json")


def _half_room(max_count: float, counts: jax.Array, t: jax.Array) -> jax.Array:
    return 0.5 * (max_count - counts.astype(jnp.float32))


def fastest_ms(run: Callable[[], object], repeats: int) -> float:
    """Least wall time of ``run()`` in ms over ``repeats`` runs after one compiling run."""
    jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def with_table_limit(limit: int, run: Callable[[], float]) -> float:
    """``run()`` with ``draws.TABLE_MAX_COUNT`` set to ``limit`` (compiled caches cleared)."""
    saved = draws.TABLE_MAX_COUNT
    draws.TABLE_MAX_COUNT = limit
    jax.clear_caches()
    try:
        return run()
    finally:
        draws.TABLE_MAX_COUNT = saved
        jax.clear_caches()


def sampler_ms_per_step(method: str, max_count: int, args: argparse.Namespace) -> float:
    predict = jax.tree_util.Partial(_half_room, jnp.float32(max_count))
    times = bj.observation_times(args.steps, T_END)

    def run() -> jax.Array:
        return bj.sample(
            jax.random.key(0),
            predict,
            (args.batch, args.entries),
            times,
            max_count=max_count,
            method=method,
        )

    return fastest_ms(run, args.repeats) / args.steps


def sampler_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    paths = {"default": draws.TABLE_MAX_COUNT, "table": 2**31 - 1, "flat": 0}
    for method in ("binomial_bridge", "tau_leaping"):
        for path, limit in paths.items():
            for max_count in args.max_counts:
                if path == "table" and max_count > args.table_limit:
                    continue
                if path == "flat" and max_count > draws.TABLE_MAX_COUNT:
                    continue  # the default path already is the flat one there
                ms = with_table_limit(
                    limit, functools.partial(sampler_ms_per_step, method, max_count, args)
                )
                rows.append({"method": method, "path": path, "max_count": max_count, "ms": ms})
                print(f"  {method} {path} N={max_count}: {ms:.2f} ms/step", flush=True)
    for row in rows:
        baseline = [
            r["ms"]
            for r in rows
            if (r["method"], r["path"], r["max_count"]) == (row["method"], "default", 255)
        ]
        row["ratio_to_255"] = row["ms"] / baseline[0] if baseline else None
    return rows


@jax.jit
def _jax_forward_draw(n: jax.Array, p: jax.Array) -> jax.Array:
    return jax.random.binomial(jax.random.key(3), n, p, n.shape)


@jax.jit
def _own_forward_draw(n: jax.Array, p: jax.Array) -> jax.Array:
    return draws.binomial(jax.random.key(3), n, p)


def forward_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    batch = 4 * args.batch
    for max_count in args.max_counts:
        n0 = jax.random.randint(jax.random.key(1), (batch, args.entries), 0, max_count + 1)
        t = bj.continuous_time(jax.random.uniform(jax.random.key(2), (batch, 1)), T_END)
        p = jnp.broadcast_to(process.survival_probability(t), n0.shape)
        n0 = n0.astype(jnp.float32)
        row = {
            "max_count": max_count,
            "batch": batch,
            "jax_random_binomial_ms": fastest_ms(
                functools.partial(_jax_forward_draw, n0, p), args.repeats
            ),
            "draws_binomial_ms": fastest_ms(
                functools.partial(_own_forward_draw, n0, p), args.repeats
            ),
        }
        rows.append(row)
        print(f"  forward N={max_count}: {row}", flush=True)
    return rows


@functools.partial(jax.jit, static_argnums=2)
def _prior_kl_full_sum(n0: jax.Array, t_end: jax.Array, max_count: int) -> jax.Array:
    """The former ``prior_kl``: ``sum_{k=0..N} q(k) (log q(k) - log prior(k))`` in a loop."""

    def add_term(k: jax.Array, total: jax.Array) -> jax.Array:
        k = k.astype(jnp.float32)
        log_q = process.forward_log_prob(k, n0, t_end)
        log_prior = likelihood.prior_log_prob(k, t_end=t_end, max_count=max_count)
        return total + jnp.where(jnp.isfinite(log_q), jnp.exp(log_q) * (log_q - log_prior), 0.0)

    return jax.lax.fori_loop(0, max_count + 1, add_term, jnp.zeros_like(n0))


def prior_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for max_count in sorted({BASELINE_COUNT, 16_384, *args.max_counts}):
        n0 = jax.random.randint(jax.random.key(4), (args.entries,), 0, max_count + 1)
        n0 = n0.astype(jnp.float32)
        row = {
            "max_count": max_count,
            "prior_kl_ms": fastest_ms(
                lambda n0=n0, m=max_count: bj.prior_kl(n0, t_end=T_END, max_count=m), args.repeats
            ),
        }
        if max_count <= 16_384:
            row["full_sum_ms"] = fastest_ms(
                lambda n0=n0, m=max_count: _prior_kl_full_sum(n0, jnp.float32(T_END), m),
                args.repeats,
            )
        rows.append(row)
        print(f"  prior_kl N={max_count}: {row}", flush=True)
    return rows


def print_tables(result: dict) -> None:
    print("\n| method | path | " + " | ".join(f"N = {n}" for n in result["max_counts"]) + " |")
    print("|---|---|" + "---|" * len(result["max_counts"]))
    by_key = {(r["method"], r["path"], r["max_count"]): r for r in result["sampler"]}
    for method in ("binomial_bridge", "tau_leaping"):
        for path in ("default", "table", "flat"):
            cells = []
            for n in result["max_counts"]:
                row = by_key.get((method, path, n))
                if row is None:
                    cells.append("")
                else:
                    ratio = row["ratio_to_255"]
                    cells.append(f"{row['ms']:.2f} ms ({ratio:.2f}x)")
            if any(cells):
                print(f"| {method} | {path} | " + " | ".join(cells) + " |")
    print("\n| N | jax.random.binomial ms | draws.binomial ms |\n|---|---|---|")
    for row in result["forward"]:
        print(
            f"| {row['max_count']} | {row['jax_random_binomial_ms']:.1f} "
            f"| {row['draws_binomial_ms']:.1f} |"
        )
    print("\n| N | prior_kl ms | full sum ms |\n|---|---|---|")
    for row in result["prior_kl"]:
        full = row.get("full_sum_ms")
        print(
            f"| {row['max_count']} | {row['prior_kl_ms']:.2f} | "
            + (f"{full:.1f} |" if full is not None else "- |")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-counts", default="16,255,4096,100000")
    parser.add_argument("--table-limit", type=int, default=1023)  # tables forced up to here
    parser.add_argument("--output", type=pathlib.Path, default=OUTPUT)
    args = parser.parse_args()
    args.max_counts = [int(n) for n in args.max_counts.split(",")]
    started = time.time()
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {jax.devices()[0].device_kind} x{jax.device_count()}",
        "settings": {
            k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()
        },
        "table_max_count": draws.TABLE_MAX_COUNT,
        "max_counts": args.max_counts,
        "sampler": sampler_rows(args),
        "forward": forward_rows(args),
        "prior_kl": prior_rows(args),
    }
    result["wall_seconds"] = time.time() - started
    print_tables(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.output} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
