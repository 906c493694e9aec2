"""Un-thinning held-out digits with a trained model: posterior mean and intervals against y/q.

    python -m experiments.unthin_study --config=configs/digits.py --workdir=runs/unthin_digits \
        [--survivals=0.5,0.2,0.1,0.05] [--num_examples=100] [--num_samples=16] \
        [--num_steps=50] [--method=trapezoidal_bridge] [--out=experiments/results/unthin_digits]

For each survival ``q`` the first ``num_examples`` held-out examples ``x`` (the config's
evaluation split) are thinned, ``y ~ Binomial(x, q)`` (fixed seed), and
:func:`blackout_jax.unthin` draws ``num_samples`` posterior samples of each with the EMA network
of the run's latest checkpoint. Reported per ``q``, as mean squared errors per count against
``x``:

* ``posterior_mean``: the mean of the samples;
* ``rescaled``: ``y / q``, the unbiased estimate that ignores the prior;
* ``linear_shrinkage``: ``a_i + b_i y_i / q`` per pixel ``i``, with ``a, b`` fitted by least
  squares on the whole training split thinned with the same ``q`` (the best estimate linear in
  ``y / q``, pixel by pixel);

and the coverage of the per-pixel posterior interval ``[min, max]`` of the samples, the
``5%``/``95%`` sample quantiles of ``S = 16`` draws (``np.quantile`` methods "lower" and
"higher"). For exact posterior draws this interval holds the truth with probability at least
``(S - 1) / (S + 1)`` (15/17 = 0.882 for ``S = 16``; exactly that for a continuous law, more
with ties), the nominal level. Coverage is given over all counts and over the counts whose
posterior samples are not all equal (all-equal intervals, mostly background zeros, are almost
always right), and with ties broken at random (:func:`randomized_rank`): the share of truths
ranked ``1..S-1`` among the samples, which is exactly 15/17 for exact posterior draws; the
shares ranked below and above all samples are 1/17 = 0.059 each then. Writes ``<out>.json``
and ``<out>.png`` (examples at each ``q``; with ``--save_samples`` also the draws).

    python -m experiments.unthin_study --part=oracle [--oracle_steps=50,200] \
        [--oracle_draws=4000] [--out=experiments/results/unthin_oracle]

compares the sampler methods where the posterior is known exactly: eight random vectors of six
counts in 0..8 (seed 0), :func:`blackout_jax.dataset_oracle` as the denoiser, and for
``q = 0.5`` and ``0.1`` the observation (of 20 thinnings of random members, seed 1) whose
posterior over the members ``w_j ∝ prod_i Binomial(y_i; x_{j,i}, q)`` is widest; 4000 draws per
method and step count (``--oracle_draws``). Reported: the share of draws that are members and
the total variation distance between the members' drawn frequencies and ``w``.
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

import blackout_jax as bj
from blackout_jax.run import reporting, trained

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/digits.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run folder.")
_SURVIVALS = flags.DEFINE_list("survivals", ["0.5", "0.2", "0.1", "0.05"], "Survivals q.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 100, "Held-out examples (the first ones).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "Posterior samples per example.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 50, "Sampler steps from t* = -ln q to 0.")
_METHOD = flags.DEFINE_enum("method", "trapezoidal_bridge", list(bj.METHODS), "Sampler.")
_BATCH = flags.DEFINE_integer("batch_size", 400, "Rows (example x sample) per sampler call.")
_OUT = flags.DEFINE_string("out", "experiments/results/unthin_digits", "Output prefix.")
_SAVE_SAMPLES = flags.DEFINE_bool("save_samples", False, "Also write <out>_samples_<q>.npz.")
_PART = flags.DEFINE_enum("part", "network", ["network", "oracle"], "Which study to run.")
_ORACLE_STEPS = flags.DEFINE_list("oracle_steps", ["50", "200"], "--part=oracle: step counts.")
_ORACLE_DRAWS = flags.DEFINE_integer("oracle_draws", 4000, "--part=oracle: draws per setting.")


def linear_shrinkage(train: np.ndarray, q: float, rng: np.random.Generator) -> np.ndarray:
    """``(2, D)``: per-pixel ``a, b`` minimising ``sum (x - a - b y / q)^2`` on thinned ``train``.

    ``train`` is ``(M, D)``; a pixel whose ``y / q`` never varies gets ``b = 0`` (its mean).
    """
    rescaled = rng.binomial(train.astype(np.int64), q) / q
    centred_y = rescaled - rescaled.mean(axis=0)
    centred_x = train - train.mean(axis=0)
    variance = (centred_y**2).sum(axis=0)
    covariance = (centred_y * centred_x).sum(axis=0)
    slope = np.where(variance > 0, covariance / np.maximum(variance, 1e-12), 0.0)
    return np.stack([train.mean(axis=0) - slope * rescaled.mean(axis=0), slope])


def randomized_rank(samples: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of the truth among ``S`` samples, ties broken at random: ``(N, D)`` in ``0..S``.

    ``#{samples < x}`` plus a uniform draw from ``0..#{samples == x}``: for exact posterior
    draws every rank has probability ``1 / (S + 1)``, whatever the ties.
    """
    below = (samples < truth[:, None]).sum(axis=1)
    equal = (samples == truth[:, None]).sum(axis=1)
    return below + rng.integers(0, equal + 1)


def posterior_samples(
    model: trained.TrainedModel, observed: np.ndarray, q: float, key: jax.Array
) -> np.ndarray:
    """``(N, S, ...)`` draws of :func:`blackout_jax.unthin`, in calls of ``batch_size`` rows."""
    rows = np.repeat(observed, _NUM_SAMPLES.value, axis=0)
    chunks = []
    for index, start in enumerate(range(0, len(rows), _BATCH.value)):
        chunk = rows[start : start + _BATCH.value]
        drawn = bj.unthin(
            jax.random.fold_in(key, index),
            model.predict_fn,
            jnp.asarray(chunk),
            q,
            max_count=model.max_count,
            num_steps=_NUM_STEPS.value,
            method=_METHOD.value,
        )
        chunks.append(np.asarray(drawn))
    return np.concatenate(chunks).reshape(len(observed), _NUM_SAMPLES.value, *observed.shape[1:])


def measure(q: float, model, truth, train, key) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(int(round(q * 1e6)))
    observed = rng.binomial(truth, q).astype(np.int32)
    start = time.perf_counter()
    samples = posterior_samples(model, observed, q, key)
    seconds = time.perf_counter() - start
    if _SAVE_SAMPLES.value:
        path = f"{_OUT.value}_samples_{q}.npz"
        np.savez_compressed(path, samples=samples, observed=observed, truth=truth)
    flat_truth = truth.reshape(len(truth), -1).astype(np.float64)
    flat_samples = samples.reshape(len(truth), _NUM_SAMPLES.value, -1)
    mean = flat_samples.mean(axis=1)
    rescaled = observed.reshape(len(truth), -1) / q
    a, b = linear_shrinkage(train, q, rng)
    lower = np.quantile(flat_samples, 0.05, axis=1, method="lower")
    upper = np.quantile(flat_samples, 0.95, axis=1, method="higher")
    covered = (lower <= flat_truth) & (flat_truth <= upper)
    spread = lower < upper
    rank = randomized_rank(flat_samples, flat_truth, rng)

    def mse(estimate: np.ndarray) -> float:
        return float(np.mean((estimate - flat_truth) ** 2))

    row = {
        "survival": q,
        "mse_posterior_mean": mse(mean),
        "mse_rescaled": mse(rescaled),
        "mse_linear_shrinkage": mse(a + b * rescaled),
        "ratio_to_rescaled": mse(mean) / mse(rescaled),
        "ratio_to_linear_shrinkage": mse(mean) / mse(a + b * rescaled),
        "coverage_all": float(covered.mean()),
        "coverage_not_single_valued": float(covered[spread].mean()),
        "coverage_randomized_rank": float(((rank >= 1) & (rank <= _NUM_SAMPLES.value - 1)).mean()),
        "truth_below_all_samples": float((rank == 0).mean()),
        "truth_above_all_samples": float((rank == _NUM_SAMPLES.value).mean()),
        "share_single_valued": float(1.0 - spread.mean()),
        "mean_interval_width": float((upper - lower).mean()),
        "samples_above_truth_share": float((flat_samples > flat_truth[:, None]).mean()),
        "seconds": seconds,
    }
    shown = reporting.unthinning_rows(
        observed[:6],
        np.full(len(observed[:6]), q),
        samples[:6, :6],
        mean.reshape(truth.shape)[:6],
        truth[:6],
    )
    return row, shown


def oracle_study() -> dict:
    """Member share and total variation to the exact posterior, per method, q and steps."""
    from scipy import stats

    members = np.random.default_rng(0).integers(0, 9, (8, 6))
    rng = np.random.default_rng(1)
    rows = []
    for q in (0.5, 0.1):

        def posterior(y: np.ndarray, q: float = q) -> np.ndarray:
            log_weights = stats.binom.logpmf(y[None, :], members, q).sum(axis=1)
            weights = np.exp(log_weights - log_weights.max())
            return weights / weights.sum()

        def entropy(y: np.ndarray) -> float:
            w = posterior(y)
            w = w[w > 0]
            return float(-(w * np.log(w)).sum())

        candidates = [rng.binomial(members[rng.integers(len(members))], q) for _ in range(20)]
        observed = max(candidates, key=entropy)
        weights = posterior(observed)
        for method in bj.METHODS:
            for steps in map(int, _ORACLE_STEPS.value):
                drawn = np.asarray(
                    bj.unthin(
                        jax.random.key(0),
                        bj.dataset_oracle(members),
                        np.tile(observed, (_ORACLE_DRAWS.value, 1)),
                        q,
                        max_count=8,
                        num_steps=steps,
                        method=method,
                    )
                )
                matches = (drawn[:, None, :] == members[None]).all(axis=-1)
                frequencies = matches.mean(axis=0)
                rows.append(
                    {
                        "survival": q,
                        "method": method,
                        "num_steps": steps,
                        "member_share": float(matches.any(axis=1).mean()),
                        "total_variation": float(0.5 * np.abs(frequencies - weights).sum()),
                        "posterior": [round(float(w), 4) for w in weights],
                        "frequencies": [round(float(f), 4) for f in frequencies],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if _PART.value == "oracle":
        result = oracle_study() | {
            "command": "python -m experiments.unthin_study --part=oracle "
            f"--oracle_steps={','.join(_ORACLE_STEPS.value)} --oracle_draws={_ORACLE_DRAWS.value}",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        with open(f"{_OUT.value}.json", "w", encoding="utf-8") as file:
            json.dump(result, file, indent=2)
        print(f"wrote {_OUT.value}.json")
        return
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config and --workdir are required for --part=network")
    config, dataset, model = trained.open_trained_run(_CONFIG.value, _WORKDIR.value)
    truth = np.asarray(dataset.test_examples(None))[: _NUM_EXAMPLES.value]
    truth = truth.reshape(len(truth), *model.image_shape).astype(np.int32)
    train = np.asarray(dataset.train_source.read(np.arange(dataset.num_train)), np.float64)
    train = train.reshape(len(train), -1)
    rows, panels = [], []
    for index, text in enumerate(_SURVIVALS.value):
        q = float(text)
        row, shown = measure(q, model, truth, train, jax.random.fold_in(jax.random.key(0), index))
        rows.append(row)
        panels.append(shown)
        print(json.dumps(row), flush=True)
    result = {
        "command": "python -m experiments.unthin_study "
        f"--workdir={_WORKDIR.value} --survivals={','.join(_SURVIVALS.value)} "
        f"--num_examples={_NUM_EXAMPLES.value} --num_samples={_NUM_SAMPLES.value} "
        f"--num_steps={_NUM_STEPS.value} --method={_METHOD.value}",
        "checkpoint_step": model.step,
        "t_end": config.diffusion.t_end,
        "num_examples": len(truth),
        "num_train": len(train),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(f"{_OUT.value}.json", "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
    grid = np.concatenate(panels)  # (6 * len(q), columns, H, W, C)
    reporting.save_sample_grid(
        grid.reshape(-1, *model.image_shape),
        model.max_count,
        f"{_OUT.value}.png",
        columns=grid.shape[1],
    )
    print(f"wrote {_OUT.value}.json and .png")


if __name__ == "__main__":
    app.run(main)
