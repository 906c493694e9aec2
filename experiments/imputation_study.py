"""How well imputation recovers the observed example, against resampling, with the exact oracle.

    python -m experiments.imputation_study [--fractions=0.97,0.75,0.5,0.25] \
        [--resamples=1,2,5,10] [--particles=2,5,10] [--num_examples=200] [--num_steps=100] \
        [--out=experiments/results/imputation_oracle]

The dataset is the first 400 distinct sklearn digits (8x8, counts 0..16) and the denoiser is
:func:`blackout_jax.dataset_oracle` on them, so every error comes from the conditioning method,
not from a network. For each observed fraction, ``num_examples`` examples of the dataset get a
random mask (each entry observed with that probability) and are completed by
:func:`blackout_jax.impute` with the binomial bridge on the logit grid of ``num_steps`` steps
(``t_end = 15``), for every number of takes per step (``resamples``) and every number of
particles per example (``particles``, sequential Monte Carlo). Reported: the share of
completions that are dataset members (all of them agree with the observations, which are kept
exactly), the share equal to the masked example itself, the mean absolute error on the missing
entries, and the network calls per example. Writes ``<out>.json``, a plot ``<out>.png`` and a
Markdown table.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from sklearn.datasets import load_digits

import blackout_jax as bj

_FRACTIONS = flags.DEFINE_list("fractions", ["0.97", "0.75", "0.5", "0.25"], "Observed shares.")
_RESAMPLES = flags.DEFINE_list("resamples", ["1", "2", "5", "10"], "Takes of each step.")
_PARTICLES = flags.DEFINE_list("particles", ["2", "5", "10"], "Particles per example.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 200, "Masked examples per setting.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 100, "Sampler steps.")
_OUT = flags.DEFINE_string(
    "out", "experiments/results/imputation_oracle", "Output prefix for .json and .png."
)

_NUM_DISTINCT = 400
_MAX_COUNT = 16
_T_END = 15.0


def _plot(rows: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(1, 1, 1)
    fractions = sorted({row["observed_fraction"] for row in rows}, reverse=True)
    for color, fraction in enumerate(fractions):
        for conditioning, style in (("resamples", "o-"), ("particles", "s--")):
            points = [
                (row["network_calls"] / row["num_steps"], row["member_fraction"])
                for row in rows
                if row["observed_fraction"] == fraction and row["conditioning"] == conditioning
            ]
            if points:
                calls, members = zip(*points, strict=True)
                axis.plot(
                    calls,
                    members,
                    style,
                    color=f"C{color}",
                    label=f"{fraction:.0%}, {conditioning}",
                )
    axis.set_xscale("log")
    axis.set_xlabel("network calls per step and example (resamples or particles)")
    axis.set_ylabel("completions that are dataset members")
    axis.set_ylim(0, 1.02)
    axis.legend()
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str]) -> None:
    del argv
    images = load_digits().images.astype(np.int32).reshape(-1, 64)
    digits = np.unique(images, axis=0)[:_NUM_DISTINCT]
    oracle = bj.dataset_oracle(digits.reshape(-1, 8, 8, 1))
    times = bj.observation_times(_NUM_STEPS.value, _T_END)
    rng = np.random.default_rng(0)
    rows = []
    for fraction in (float(f) for f in _FRACTIONS.value):
        truth = digits[rng.choice(len(digits), _NUM_EXAMPLES.value, replace=False)]
        observed = rng.random(truth.shape) < fraction
        settings = [("resamples", int(u)) for u in _RESAMPLES.value]
        settings += [("particles", int(p)) for p in _PARTICLES.value]
        for conditioning, size in settings:
            start = time.perf_counter()
            completed = np.asarray(
                bj.impute(
                    jax.random.key(1),
                    oracle,
                    jnp.asarray(truth.reshape(-1, 8, 8, 1)),
                    jnp.asarray(observed.reshape(-1, 8, 8, 1)),
                    times,
                    max_count=_MAX_COUNT,
                    **{conditioning: size},
                )
            ).reshape(len(truth), -1)
            seconds = time.perf_counter() - start
            assert (completed[observed] == truth[observed]).all()
            members = (completed[:, None, :] == digits[None]).all(-1).any(-1)
            row = {
                "observed_fraction": fraction,
                "conditioning": conditioning,
                "size": size,
                "num_steps": _NUM_STEPS.value,
                "network_calls": size * _NUM_STEPS.value,
                "member_fraction": float(members.mean()),
                "exact_fraction": float((completed == truth).all(-1).mean()),
                "missing_abs_error": float(np.abs(completed - truth)[~observed].mean()),
                "seconds": seconds,
            }
            rows.append(row)
            print(row, flush=True)

    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    setup = {
        "num_examples": _NUM_EXAMPLES.value,
        "num_steps": _NUM_STEPS.value,
        "t_end": _T_END,
        "dataset": f"first {_NUM_DISTINCT} distinct sklearn digits",
        "method": "binomial_bridge",
    }
    with open(_OUT.value + ".json", "w") as f:
        json.dump({"setup": setup, "rows": rows}, f, indent=1)
    _plot(rows, _OUT.value + ".png")
    print("\n| observed | conditioning | network calls | members | exact | missing MAE |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['observed_fraction']:.0%} | {row['conditioning']} = {row['size']} "
            f"| {row['network_calls']} "
            f"| {row['member_fraction']:.3f} | {row['exact_fraction']:.3f} "
            f"| {row['missing_abs_error']:.3f} |"
        )
    print(f"\nwrote {_OUT.value}.json and {_OUT.value}.png")


if __name__ == "__main__":
    app.run(main)
