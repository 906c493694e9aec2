"""Sample quality against network calls, for every sampler method and grid.

    python -m experiments.few_step_study --part=oracle [--steps=5,10,20,50,100,1000]
    python -m experiments.few_step_study --part=digits --config=configs/digits.py \
        --workdir=runs/digits [--num_samples=256]
    python -m experiments.few_step_study --part=distill --config=configs/digits.py \
        --workdir=runs/digits --num_samples=1024 [--calls=1,2,4,8]
    python -m experiments.few_step_study --part=report

Every (method, grid, K, seed) draws ``num_samples`` samples on a K-step grid:

* grids: ``logit`` = ``observation_times(K, t_end)``; ``subgrid`` = every (1000/K)-th point of
  the 1000-step reference grid; ``optimised`` = :func:`blackout_jax.grids.optimised_grid` for
  the predictor at hand (saved with :func:`blackout_jax.run.grid_files.save_grid`). At K = 1000 the
  three coincide and only ``logit`` is run.
* network calls: K for the one-call methods, 2K for the trapezoidal ones.

Parts:

* ``oracle``: the exact denoiser (:func:`blackout_jax.dataset_oracle`) of the first
  ``oracle_examples`` sklearn digits. Metrics: the fraction of samples equal to a member, and the
  total-variation distance between the samples' law and the uniform law on the members
  (``0.5 sum_j |c_j / n - 1 / J| + 0.5 * non-member fraction``), beside its floor, the mean
  distance of ``n`` exact draws.
* ``digits``: the EMA network of a trained digits run. Metrics: the classifier-feature Fréchet
  distance over its real-vs-real floor, and the entropy of the predicted class distribution
  (log 10 = 2.303 nats when balanced).
* ``distill``: the mixture students of a trained digits run (:mod:`blackout_jax.run.distillation`,
  one per count of ``--calls``) against the undistilled one-call and trapezoidal samplers on the
  logit and optimised grids at the same network calls. The teacher's trajectories are drawn
  once, on the union of the students' grids and the teacher's own, and given to every student;
  each student is then trained by ``--mode=distill``'s :func:`distill_run` (resumed if there).
  The digits classifier is fitted with ``num_test = num_samples`` held-out digits, so that the
  real-vs-real floor has as many digits as each row has samples. Rows also carry the
  students' CPU seconds (teacher trajectories and training).

Rows are appended to ``<out_dir>/few_step_<part>.jsonl`` as they finish (a rerun skips rows
already there). ``--part=report`` writes ``few_step_<part>.png`` (mean and 95% t-interval over
seeds against network calls) and prints Markdown tables.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from scipy import stats

from blackout_jax import (
    METHODS,
    dataset_oracle,
    grids,
    observation_times,
    sample,
    subgrid,
)
from blackout_jax.run import grid_files

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config of the trained run (digits).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder with checkpoints (digits).")
_PART = flags.DEFINE_enum(
    "part", "oracle", ["oracle", "digits", "distill", "report"], "What to run."
)
_CALLS = flags.DEFINE_list("calls", ["1", "2", "4", "8"], "Network calls (distill part).")
_STEPS = flags.DEFINE_list("steps", ["5", "10", "20", "50", "100", "1000"], "Step counts K.")
_METHODS = flags.DEFINE_list("methods", list(METHODS), "Sampler methods.")
_GRIDS = flags.DEFINE_list("grids", ["logit", "subgrid", "optimised"], "Grids.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 256, "Samples per (method, grid, K, seed).")
_ORACLE_EXAMPLES = flags.DEFINE_integer("oracle_examples", 50, "Members of the oracle dataset.")
_T_END = flags.DEFINE_float("t_end", 10.0, "t_end of the oracle part (digits: the config's).")
_GRID_EXAMPLES = flags.DEFINE_integer("grid_examples", 300, "Examples for the optimised grid.")
_OUT_DIR = flags.DEFINE_string("out_dir", "experiments/results", "Where results go.")

_REFERENCE_STEPS = 1000  # the training grid that `subgrid` thins and `optimised` chooses from


def _calls(method: str, num_steps: int) -> int:
    return 2 * num_steps if method.startswith("trapezoidal") else num_steps


def _grid(
    name: str, num_steps: int, t_end: float, optimise: Callable[[int], np.ndarray]
) -> np.ndarray:
    if name == "logit" or num_steps == _REFERENCE_STEPS:
        return np.asarray(observation_times(num_steps, t_end))
    if name == "subgrid":
        return np.asarray(subgrid(observation_times(_REFERENCE_STEPS, t_end), num_steps))
    return optimise(num_steps)


def _optimiser(
    part: str, predict_fn: Callable, examples: np.ndarray, t_end: float
) -> Callable[[int], np.ndarray]:
    """Optimised grids of this part, computed once per K and kept as JSON in out_dir."""

    def optimise(num_steps: int) -> np.ndarray:
        path = os.path.join(_OUT_DIR.value, f"few_step_{part}_grid_{num_steps}.json")
        if os.path.exists(path):
            return grid_files.load_grid(path)[0]
        times, variance = grids.optimised_grid(
            jax.random.key(12345), predict_fn, examples, num_steps, t_end=t_end
        )
        proxy = float(np.sum(np.asarray(grids.step_errors(times, variance))))
        info = {"t_end": t_end, "num_examples": int(len(examples)), "proxy": proxy}
        grid_files.save_grid(path, times, info)
        return np.asarray(times)

    return optimise


def _done_rows(path: str) -> set[tuple]:
    if not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8") as file:
        rows = [json.loads(line) for line in file if line.strip()]
    return {(row["method"], row["grid"], row["num_steps"], row["seed"]) for row in rows}


def _oracle_metrics(samples: np.ndarray, members: np.ndarray) -> dict[str, float]:
    flat = samples.reshape(len(samples), -1)
    matches = np.all(flat[:, None, :] == members[None, :, :], axis=-1)  # (n, J)
    counts = matches.sum(axis=0)
    num = len(samples)
    non_member = 1.0 - counts.sum() / num
    tv = 0.5 * np.abs(counts / num - 1.0 / len(members)).sum() + 0.5 * non_member
    return {"member_fraction": 1.0 - non_member, "total_variation": float(tv)}


def _exact_draw_tv(num_samples: int, num_members: int, repeats: int = 2000) -> float:
    """Mean total-variation distance of ``num_samples`` exact uniform draws to the uniform law."""
    rng = np.random.default_rng(0)
    counts = rng.multinomial(num_samples, np.full(num_members, 1.0 / num_members), repeats)
    return float(np.mean(0.5 * np.abs(counts / num_samples - 1.0 / num_members).sum(axis=1)))


def _run(
    part: str,
    predict_fn: Callable,
    draw: Callable[[jax.Array, np.ndarray, str], np.ndarray],
    measure: Callable[[np.ndarray], dict],
    optimise: Callable[[int], np.ndarray],
    t_end: float,
) -> None:
    """Every (K, method, grid, seed) not yet in the part's JSONL file, appended as it ends."""
    path = os.path.join(_OUT_DIR.value, f"few_step_{part}.jsonl")
    done = _done_rows(path)
    for num_steps in (int(k) for k in _STEPS.value):
        for method in _METHODS.value:
            for grid_name in _GRIDS.value:
                if num_steps == _REFERENCE_STEPS and grid_name != "logit":
                    continue
                times = _grid(grid_name, num_steps, t_end, optimise)
                for seed in (int(s) for s in _SEEDS.value):
                    if (method, grid_name, num_steps, seed) in done:
                        continue
                    started = time.perf_counter()
                    samples = draw(jax.random.key(1000 * seed + num_steps), times, method)
                    row = {
                        "method": method,
                        "grid": grid_name,
                        "num_steps": num_steps,
                        "calls": _calls(method, num_steps),
                        "seed": seed,
                        "num_samples": int(len(samples)),
                        **measure(samples),
                        "seconds": time.perf_counter() - started,
                    }
                    with open(path, "a", encoding="utf-8") as file:
                        file.write(json.dumps(row) + "\n")
                    print(row, flush=True)


def _oracle_part() -> None:
    from sklearn.datasets import load_digits

    members = load_digits().images[: _ORACLE_EXAMPLES.value].astype(np.int32)[..., None]
    oracle = dataset_oracle(members)
    flat_members = members.reshape(len(members), -1)
    t_end = _T_END.value
    floor = _exact_draw_tv(_NUM_SAMPLES.value, len(members))
    print(f"total-variation floor of {_NUM_SAMPLES.value} exact draws: {floor:.4f}")

    def draw(key: jax.Array, times: np.ndarray, method: str) -> np.ndarray:
        shape = (_NUM_SAMPLES.value, *members.shape[1:])
        return np.asarray(sample(key, oracle, shape, times, max_count=16, method=method))

    def measure(samples: np.ndarray) -> dict:
        return {**_oracle_metrics(samples, flat_members), "tv_floor": floor}

    repeats = -(-_GRID_EXAMPLES.value // len(members))  # each member, several forward draws
    examples = np.tile(members, (repeats, 1, 1, 1))
    _run("oracle", oracle, draw, measure, _optimiser("oracle", oracle, examples, t_end), t_end)


def _digits_part() -> None:
    from blackout_jax.metrics import digits_features
    from blackout_jax.run import chunked, trained

    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--part=digits needs --config and --workdir of a trained run")
    config, dataset, model = trained.open_trained_run(_CONFIG.value, _WORKDIR.value)
    if dataset.name != "digits":
        raise app.UsageError("the digits part needs a digits run")
    t_end = config.diffusion.t_end
    train = np.asarray(digits_features.digits_train_test_split()[0])
    examples = train[: _GRID_EXAMPLES.value].reshape(-1, *model.image_shape)

    def draw(key: jax.Array, times: np.ndarray, method: str) -> np.ndarray:
        return chunked.generate_samples(
            key,
            model.predict_for,
            num_samples=_NUM_SAMPLES.value,
            example_shape=model.image_shape,
            times=times,
            max_count=model.max_count,
            method=method,
            chunk_size=_NUM_SAMPLES.value,
        )

    def measure(samples: np.ndarray) -> dict:
        return {**digits_features.quality_row(samples), "checkpoint_step": int(model.step)}

    optimise = _optimiser("digits", model.predict_fn, examples, t_end)
    _run("digits", model.predict_fn, draw, measure, optimise, t_end)


def _distill_part() -> None:
    import dataclasses

    from blackout_jax import distill
    from blackout_jax.metrics import digits_features
    from blackout_jax.run import chunked, distillation, reporting, students, trained

    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--part=distill needs --config and --workdir of a trained run")
    base, dataset, model = trained.open_trained_run(_CONFIG.value, _WORKDIR.value)
    if dataset.name != "digits":
        raise app.UsageError("the distill part needs a digits run")
    workdir, t_end = _WORKDIR.value, base.diffusion.t_end
    num_samples = _NUM_SAMPLES.value
    extractor = digits_features.fitted_digits_extractor(num_test=num_samples)
    calls = [int(c) for c in _CALLS.value]
    configs = {
        k: dataclasses.replace(base, distill=dataclasses.replace(base.distill, num_calls=k))
        for k in calls
    }
    student_grids = {
        k: distillation.student_times(configs[k], workdir, model, dataset) for k in calls
    }
    _share_teacher_states(base, workdir, model, student_grids)

    def measure(samples: np.ndarray, seed: int) -> dict:
        quality = digits_features.digits_sample_metrics(samples, extractor=extractor, seed=seed)
        return {
            "frechet_distance": quality["frechet_distance"],
            "frechet_floor": quality["frechet_floor"],
            "frechet_floor_num_examples": quality["frechet_floor_num_examples"],
            "fd_over_floor": quality["frechet_distance"] / quality["frechet_floor"],
            "checkpoint_step": int(model.step),
        }

    def undistilled(key: jax.Array, times: np.ndarray, method: str) -> np.ndarray:
        return chunked.generate_samples(
            key,
            model.predict_for,
            num_samples=num_samples,
            example_shape=model.image_shape,
            times=times,
            max_count=model.max_count,
            method=method,
            chunk_size=min(num_samples, 1024),
        )

    optimise = _optimiser("distill", model.predict_fn, _grid_examples(model), t_end)
    path = os.path.join(_OUT_DIR.value, "few_step_distill.jsonl")
    done = _done_rows(path)
    for k in calls:  # each student trained (or resumed) and measured before the next
        started = time.perf_counter()
        folder = distillation.distill_run(configs[k], workdir, dataset, model)
        print(f"{k}-call student: {time.perf_counter() - started:.0f} s wall", flush=True)
        student, times, student_step = students.load_student(workdir, k)
        cpu = _student_cpu_seconds(folder)
        candidates = [("student", "student", k, times)]
        for method in _METHODS.value:
            num_steps = k // 2 if method.startswith("trapezoidal") else k
            if num_steps < 1 or _calls(method, num_steps) != k:
                continue
            for grid_name in ("logit", "optimised"):
                candidates.append(
                    (method, grid_name, num_steps, _grid(grid_name, num_steps, t_end, optimise))
                )
        for method, grid_name, num_steps, grid in candidates:
            for seed in (int(s) for s in _SEEDS.value):
                if (method, grid_name, num_steps, seed) in done:
                    continue
                started = time.perf_counter()
                key = jax.random.key(1000 * seed + k)
                if method == "student":
                    shape = (num_samples, *model.image_shape)
                    samples = np.asarray(
                        distill.sample_student(key, student, shape, grid, max_count=model.max_count)
                    )
                else:
                    samples = undistilled(key, grid, method)
                row = {
                    "method": method,
                    "grid": grid_name,
                    "num_steps": num_steps,
                    "calls": k,
                    "seed": seed,
                    "num_samples": int(len(samples)),
                    **measure(samples, seed),
                    "seconds": time.perf_counter() - started,
                }
                if method == "student":
                    row.update(student_step=student_step, **cpu)
                with open(path, "a", encoding="utf-8") as file:
                    file.write(json.dumps(row) + "\n")
                print(row, flush=True)
                if seed == 0 and method == "student":
                    image = os.path.join(_OUT_DIR.value, f"few_step_distill_student_{k}.png")
                    reporting.save_sample_grid(samples[:100], model.max_count, image)


def _grid_examples(model) -> np.ndarray:
    from blackout_jax.metrics import digits_features

    train = np.asarray(digits_features.digits_train_test_split()[0])
    return train[: _GRID_EXAMPLES.value].reshape(-1, *model.image_shape)


def _share_teacher_states(config, workdir: str, model, student_grids: dict) -> None:
    """One set of teacher trajectories on the union of the students' grids and the teacher's
    logit grid, written as each student's ``teacher_states.npz`` (students that have one keep
    it)."""
    from blackout_jax import distill
    from blackout_jax.run import chunked, distillation, reporting, students

    settings = config.distill
    missing = {
        k: times
        for k, times in student_grids.items()
        if not (students.student_dir(workdir, k) / distillation.TEACHER_STATES_FILE).exists()
    }
    if not missing:
        return
    fine = np.asarray(observation_times(settings.teacher_steps, config.diffusion.t_end))
    for times in missing.values():
        fine = distill.refined_grid(times, fine)
    batch = config.sampling.batch_size
    started = time.process_time()

    def trajectories(key: jax.Array) -> jax.Array:
        states = distill.teacher_trajectories(
            key,
            model.predict_fn,
            (batch, *model.image_shape),
            fine,
            max_count=model.max_count,
            method=settings.teacher_method,
            start=config.sampling.start,
        )
        return np.moveaxis(np.asarray(states), 0, 1).astype(np.int8)

    drawn = chunked.run_in_chunks(
        distillation._distill_keys(config.seed)[1],
        trajectories,
        num_examples=settings.num_trajectories,
        chunk_size=batch,
        progress=True,
        description="teacher trajectories",
    )
    seconds = time.process_time() - started
    print(f"teacher trajectories: {seconds:.0f} CPU-s on {len(fine) - 1} steps", flush=True)
    for k, times in missing.items():
        folder = students.student_dir(workdir, k)
        folder.mkdir(parents=True, exist_ok=True)
        states = np.moveaxis(drawn[:, distill.grid_positions(fine, times)], 1, 0)
        reporting.write_npz(
            folder / distillation.TEACHER_STATES_FILE,
            states=states,
            times=np.asarray(times, np.float32),
            cpu_seconds=np.asarray(seconds),
        )


def _student_cpu_seconds(folder) -> dict[str, float]:
    """The CPU seconds of a student: its teacher trajectories and its training updates."""
    from blackout_jax.run import distillation

    with np.load(folder / distillation.TEACHER_STATES_FILE) as stored:
        teacher = float(stored["cpu_seconds"])
    with open(folder / distillation.METRICS_FILE, encoding="utf-8") as file:
        rows = [json.loads(line) for line in file if line.strip()]
    return {"teacher_cpu_seconds": teacher, "training_cpu_seconds": rows[-1]["cpu_seconds"]}


_REPORTED = {
    "oracle": (("member_fraction", "member fraction"), ("total_variation", "TV to uniform")),
    "digits": (("fd_over_floor", "Fréchet distance / floor"), ("class_entropy", "class entropy")),
    "distill": (("fd_over_floor", "Fréchet distance / floor"),),
}


def _summaries(rows: list[dict], metric: str) -> dict[tuple[str, str, int], tuple]:
    """``(method, grid, K) -> (calls, mean, half width of the 95% t-interval, seeds)``."""
    groups: dict[tuple[str, str, int], list[float]] = {}
    calls = {}
    for row in rows:
        key = (row["method"], row["grid"], row["num_steps"])
        groups.setdefault(key, []).append(float(row[metric]))
        calls[key] = row["calls"]
    out = {}
    for key, values in sorted(groups.items()):
        values = np.asarray(values)
        half = 0.0
        if len(values) > 1:
            half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
        out[key] = (calls[key], float(values.mean()), float(half), len(values))
    return out


def _plot(part: str, rows: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = _REPORTED[part]
    figure = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    for panel, (metric, label) in enumerate(metrics):
        axis = figure.add_subplot(1, len(metrics), panel + 1)
        summary = _summaries(rows, metric)
        for method, color in zip(METHODS, ("C0", "C1", "C2", "C3"), strict=True):
            for grid_name, style in (("logit", "o-"), ("subgrid", "s:"), ("optimised", "^--")):
                points = sorted(
                    (calls, mean, half)
                    for (m, g, k), (calls, mean, half, _) in summary.items()
                    if m == method and (g == grid_name or (k == _REFERENCE_STEPS and g == "logit"))
                )
                if not points:
                    continue
                x, y, err = (np.asarray(v) for v in zip(*points, strict=True))
                name = f"{method}/{grid_name}"
                axis.errorbar(x, y, yerr=err, fmt=style, color=color, ms=3, capsize=2, label=name)
        students = sorted(
            (calls, mean, half)
            for (m, _, _), (calls, mean, half, _) in summary.items()
            if m == "student"
        )
        if students:
            x, y, err = (np.asarray(v) for v in zip(*students, strict=True))
            axis.errorbar(x, y, yerr=err, fmt="D-", color="k", ms=4, capsize=2, label="student")
        axis.set_xscale("log")
        if metric == "fd_over_floor":
            axis.set_yscale("log")
            axis.axhline(1.0, color="gray", linestyle="--", label="real-vs-real floor")
        if metric == "class_entropy":
            axis.axhline(np.log(10.0), color="gray", linestyle="--", label="balanced classes")
        if metric == "total_variation":
            floor = float(np.mean([row["tv_floor"] for row in rows]))
            axis.axhline(floor, color="gray", linestyle="--", label="exact draws")
        axis.set_xlabel("network calls")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    figure.axes[0].legend(fontsize=6)
    figure.axes[-1].legend(handles=figure.axes[-1].get_lines()[-1:], fontsize=6)
    figure.tight_layout()
    figure.savefig(path)


def _report() -> None:
    for part in ("oracle", "digits", "distill"):
        path = os.path.join(_OUT_DIR.value, f"few_step_{part}.jsonl")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as file:
            rows = [json.loads(line) for line in file if line.strip()]
        _plot(part, rows, os.path.join(_OUT_DIR.value, f"few_step_{part}.png"))
        metrics = _REPORTED[part]
        summaries = [_summaries(rows, metric) for metric, _ in metrics]
        print(f"\n### {part}\n")
        print("| method | grid | K | calls | " + " | ".join(l for _, l in metrics) + " | seeds |")
        print("|---|---|---|---|" + "---|" * len(metrics) + "---|")
        for key in sorted(summaries[0], key=lambda k: (k[0], k[1], k[2])):
            cells = [f"{s[key][1]:.3f} ± {s[key][2]:.3f}" for s in summaries]
            calls, seeds = summaries[0][key][0], summaries[0][key][3]
            print(
                f"| {key[0]} | {key[1]} | {key[2]} | {calls} | "
                + " | ".join(cells)
                + f" | {seeds} |"
            )


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    parts = {"oracle": _oracle_part, "digits": _digits_part, "distill": _distill_part}
    parts.get(_PART.value, _report)()


if __name__ == "__main__":
    app.run(main)
