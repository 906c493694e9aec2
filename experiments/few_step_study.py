"""Sample quality against the number of sampling steps, for both samplers, on a trained run.

    python -m experiments.few_step_study --config=configs/digits.py --workdir=runs/digits \
        [--steps=10,20,50,100,250,1000] [--num_samples=1000] [--out=runs/digits/few_step]

For every method in (binomial_bridge, tau_leaping) and every step count K it draws
``num_samples`` samples with the EMA network of the run's latest checkpoint on the K-point
logit grid and measures their quality: for digits the Fréchet distance in a classifier's
feature space (with the real-vs-real floor) and the entropy of the predicted class
distribution (log 10 = 2.303 nats for perfectly balanced classes). It also reports the
likelihood bound of the run in bits/dim, which belongs to the continuous-time model and is the
same for every K. Writes ``<out>.json`` and a plot ``<out>.png``, and prints a Markdown table.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from blackout_jax import data, schedule
from blackout_jax.metrics import digits_features
from blackout_jax.run import generate, inference

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config of the run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder with checkpoints.")
_STEPS = flags.DEFINE_list("steps", ["10", "20", "50", "100", "250", "1000"], "Step counts.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Samples per (method, steps).")
_OUT = flags.DEFINE_string("out", None, "Output prefix (default: WORKDIR/few_step).")
flags.mark_flags_as_required(["config", "workdir"])


def _plot(rows: list[dict], floor: float, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(1, 1, 1)
    for method in sorted({row["method"] for row in rows}):
        points = [
            (row["num_steps"], row["frechet_distance"]) for row in rows if row["method"] == method
        ]
        steps, values = zip(*points, strict=True)
        axis.plot(steps, values, "o-", label=method)
    axis.axhline(floor, color="gray", linestyle="--", label="real-vs-real floor")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("sampling steps K")
    axis.set_ylabel("Fréchet distance (classifier features)")
    axis.legend()
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    dataset = data.load_dataset(
        config.data, seed=int(config.seed), size_divisor=2 ** (len(config.model.ch_mult) - 1)
    )
    if dataset.name != "digits":
        raise app.UsageError("the few-step study's quality metric is defined for digits runs")
    model = inference.load_trained_model(config, _WORKDIR.value, dataset)
    test = np.asarray(dataset.test_examples(None))
    nats = inference.likelihood_over(
        model, test, batch_size=int(config.eval.batch_size), key=jax.random.key(0)
    )
    bits_per_dim = float(np.mean(nats)) / (math.prod(model.image_shape) * math.log(2.0))

    rows = []
    for method in ("binomial_bridge", "tau_leaping"):
        for num_steps in (int(k) for k in _STEPS.value):
            started = time.perf_counter()
            samples = generate.generate_samples(
                jax.random.key(num_steps),
                model.predict_fn,
                num_samples=_NUM_SAMPLES.value,
                example_shape=model.image_shape,
                times=schedule.observation_times(num_steps, float(config.diffusion.t_end)),
                max_count=model.max_count,
                method=method,
                chunk_size=min(_NUM_SAMPLES.value, int(config.sampling.batch_size)),
            )
            seconds = time.perf_counter() - started
            quality = digits_features.digits_sample_metrics(samples)
            classes = np.asarray(quality["class_distribution"])
            entropy = float(-np.sum(classes[classes > 0] * np.log(classes[classes > 0])))
            rows.append(
                {
                    "method": method,
                    "num_steps": num_steps,
                    "frechet_distance": quality["frechet_distance"],
                    "frechet_floor": quality["frechet_floor"],
                    "class_entropy": entropy,
                    "seconds": seconds,
                }
            )
            print(rows[-1], flush=True)

    out = _OUT.value or os.path.join(_WORKDIR.value, "few_step")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    summary = {"step": model.step, "bits_per_dim": bits_per_dim, "rows": rows}
    with open(out + ".json", "w", encoding="utf-8") as file:
        json.dump(summary, file, indent=2)
    _plot(rows, rows[0]["frechet_floor"], out + ".png")
    print(f"\ncheckpoint step {model.step}; bound {bits_per_dim:.4f} bits/dim (any K)\n")
    print("| method | K | Fréchet distance | floor | class entropy | seconds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['method']} | {row['num_steps']} | {row['frechet_distance']:.2f} | "
            f"{row['frechet_floor']:.2f} | {row['class_entropy']:.3f} | {row['seconds']:.1f} |"
        )
    print(f"\nwrote {out}.json and {out}.png")


if __name__ == "__main__":
    app.run(main)
