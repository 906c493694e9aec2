"""Classifier-free guidance on digits: label accuracy, sample quality and class balance against w.

    python -m experiments.guidance_study --config=configs/digits_conditional.py \
        --workdir=runs/digits_conditional [--scales=0,0.5,1,2,4] [--seeds=0,1,2] \
        [--num_samples=300]

For every guidance scale ``w`` and seed, the EMA network of the trained conditional run draws
``num_samples`` samples with balanced labels (``floor(i 10 / n)`` for sample ``i``) on the
run's sampler (``sampling.method``, ``sampling.num_steps``, ``sampling.grid``), all scales from
the same key per seed, so the scales differ only in the rate. ``w = 0`` is the conditional
network, ``w > 0`` the guided rate ``yhat_c^(1 + w) / yhat_null^w``
(:func:`blackout_jax.models.make_predict_fn` with ``guidance_scale=w``). A row ``w = null``
samples the same network with the null label (its unconditional mode). Metrics, with the
digits classifier of :mod:`blackout_jax.metrics.digits_features`:

* ``label_accuracy``: fraction of samples classified as the label they were drawn for;
* ``fd_over_floor``: the classifier-feature Fréchet distance to the training split over the
  real-vs-real floor (held-out digits against the training split), as in
  ``experiments/few_step_study.py``;
* ``class_entropy``: entropy (nats) of the predicted class distribution; log 10 = 2.303 when
  the ten classes are equally frequent.

Writes ``<out_dir>/guidance_digits.json`` (rows, per-scale mean and standard deviation over the
seeds) and ``<out_dir>/guidance_digits.png``: one row per class; for each scale in turn (left to
right) ``grid_per_class`` samples of seed 0. Prints a Markdown table.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import sys

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from blackout_jax.run.config import balanced_labels

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The study's flags, defined only when it runs as a program: importing its helpers (the
    tests do) defines no flag that another absl program, such as the command line, also has."""
    config_flags.DEFINE_config_file("config", None, "Config of the trained run.")
    flags.DEFINE_string("workdir", None, "Run folder with checkpoints.")
    flags.DEFINE_list("scales", ["0", "0.5", "1", "2", "4"], "Guidance scales w.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
    flags.DEFINE_integer("num_samples", 300, "Samples per (scale, seed).")
    flags.DEFINE_integer("grid_per_class", 6, "Samples per class and scale (PNG).")
    flags.DEFINE_string("out_dir", "experiments/results", "Where results go.")


NULL_ROW = "null"
METRICS = ("label_accuracy", "fd_over_floor", "class_entropy")


def measure(samples: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """Label accuracy (``labels`` given), Fréchet distance over its floor, class entropy."""
    from blackout_jax.metrics import digits_features

    row = digits_features.quality_row(samples)
    if labels is not None:
        row["label_accuracy"] = digits_features.label_accuracy(samples, labels)
    return row


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation (ddof 1) over the seeds of each scale's metrics."""
    summary = []
    for scale in dict.fromkeys(row["guidance_scale"] for row in rows):
        chosen = [row for row in rows if row["guidance_scale"] == scale]
        entry: dict = {"guidance_scale": scale, "num_seeds": len(chosen)}
        for metric in METRICS:
            values = [row[metric] for row in chosen if metric in row]
            if values:
                entry[metric] = float(np.mean(values))
                entry[f"{metric}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown(summary: list[dict]) -> str:
    """The summary as a Markdown table (mean ± sd over seeds)."""
    lines = [
        "| w | correct label | Fréchet distance / floor | class entropy (nats) |",
        "|---|---|---|---|",
    ]
    for entry in summary:
        cells = [str(entry["guidance_scale"])]
        for metric in METRICS:
            if metric in entry:
                cells.append(f"{entry[metric]:.3f} ± {entry[metric + '_sd']:.3f}")
            else:
                cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_order(by_scale: list[np.ndarray], labels: np.ndarray, per_class: int) -> np.ndarray:
    """Samples arranged for a grid of ``per_class * len(by_scale)`` columns: row ``c`` holds
    ``per_class`` samples of class ``c`` for each scale in turn."""
    rows = []
    for label in np.unique(labels):
        for samples in by_scale:
            rows.append(samples[labels == label][:per_class])
    return np.concatenate(rows)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    from blackout_jax.run import chunked, reporting, trained
    from blackout_jax.run import config as config_lib

    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("needs --config and --workdir of a trained conditional digits run")
    config, dataset, model = trained.open_trained_run(FLAGS.config, FLAGS.workdir)
    num_classes = config.model.num_classes
    if config.data.name != "digits" or not num_classes:
        raise app.UsageError("the study needs a class-conditional digits run")
    times = config_lib.fixed_sampling_times(config)
    num_samples = FLAGS.num_samples
    labels = balanced_labels(num_samples, num_classes)
    scales = [float(s) for s in FLAGS.scales]

    def draw(seed: int, guidance_scale: float | None) -> np.ndarray:
        """Samples of the balanced labels with ``guidance_scale``; ``None``: the null label."""
        return chunked.generate_samples(
            jax.random.key(seed),
            functools.partial(model.predict_for, guidance_scale=guidance_scale),
            num_samples=num_samples,
            example_shape=model.image_shape,
            times=times,
            max_count=model.max_count,
            method=config.sampling.method,
            start=config.sampling.start,
            chunk_size=num_samples,
            labels=None if guidance_scale is None else labels,
        )

    rows, grid_samples = [], []
    for seed in (int(s) for s in FLAGS.seeds):
        for scale in scales:
            samples = draw(seed, scale)
            rows.append({"guidance_scale": scale, "seed": seed, **measure(samples, labels)})
            print(json.dumps(rows[-1]), flush=True)
            if seed == int(FLAGS.seeds[0]):
                grid_samples.append(samples)
        samples = draw(seed, None)
        rows.append({"guidance_scale": NULL_ROW, "seed": seed, **measure(samples, None)})
        print(json.dumps(rows[-1]), flush=True)

    summary = summarise(rows)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    result = {
        "command": "python -m experiments.guidance_study " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}",
        "checkpoint_step": int(model.step),
        "num_samples": num_samples,
        "sampler": {
            "method": config.sampling.method,
            "num_steps": config.sampling.num_steps,
            "grid": config.sampling.grid,
            "start": config.sampling.start,
        },
        "rows": rows,
        "summary": summary,
    }
    reporting.write_json(os.path.join(FLAGS.out_dir, "guidance_digits.json"), result)
    per_class = FLAGS.grid_per_class
    reporting.save_sample_grid(
        grid_order(grid_samples, labels, per_class),
        model.max_count,
        os.path.join(FLAGS.out_dir, "guidance_digits.png"),
        columns=per_class * len(scales),
    )
    print(markdown(summary))


if __name__ == "__main__":
    define_flags()
    app.run(main)
