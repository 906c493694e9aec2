"""Using a trained run: sampling, evaluation and imputation with its EMA parameters.

* :func:`sample_run` writes ``WORKDIR/samples/samples_<step>.npz`` (array ``samples``,
  ``(N, H, W, C)`` int32 counts) and ``samples_<step>.png``. Chunks are kept under
  ``samples/chunks_<step>_<method>_<K>_<chunk size>/`` while drawing, so an interrupted run
  continues where it stopped.
* :func:`evaluate_run` writes ``WORKDIR/eval/metrics_<step>.json``: the likelihood bound over the
  whole held-out split (nats and bits/dim, with a 95% confidence interval over examples) and
  sample-quality metrics of ``sampling.num_samples`` samples (digits: Fréchet distance in a
  classifier's feature space with its real-vs-real floor and the class distribution; image
  datasets: FID, IS and KID with the Inception network, see docs/metrics.md).
* :func:`impute_run` completes the unobserved entries of an ``.npz`` of ``counts`` and
  ``mask`` (``True``/1 = observed) and writes ``WORKDIR/imputed/imputed_<step>.npz``.

Every process of a multi-host job calls these; process 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from blackout_jax import checkpointing, generate, parallel, reporting, sampling, schedule, train
from blackout_jax.models import predict

_SAMPLE_STREAM = 3  # folded into the seed's key for the sample command's draws
_EVALUATE_STREAM = 4  # for the bound of the evaluate command
_IMPUTE_STREAM = 5
_DROPOUT_STREAM = 6  # the network's dropout masks when sampling.dropout is on
INCEPTION_DATASETS = ("cifar10", "celeba64")


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """The EMA network of one checkpoint, ready for the samplers and the bound."""

    step: int
    predict_fn: jax.tree_util.Partial
    max_count: int
    image_shape: tuple[int, ...]
    bound: Any  # bound(params, rest, batch, key) -> (B,) nats, jitted
    params: Any
    rest: Any


def load_trained_model(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike[str], dataset: Any
) -> TrainedModel:
    """Restore the EMA parameters of checkpoint ``sampling.checkpoint_step`` (-1 = latest).

    Raises:
      FileNotFoundError: no (such) checkpoint in ``WORKDIR/checkpoints``.
      ValueError: the checkpoint was trained on data of another ``max_count`` or shape.
    """
    replicated = parallel.replicated_sharding(parallel.create_mesh())
    graphdef, state, rest = train.init_train_state(
        config, dataset, train.make_optimizer(config.training), replicated
    )
    store = checkpointing.CheckpointStore(
        os.path.join(os.fspath(workdir), "checkpoints"),
        checkpoint_every=int(config.training.checkpoint_every),
        keep_checkpoints=int(config.training.keep_checkpoints),
        keep_every=int(config.training.keep_every),
        async_save=False,
    )
    try:
        wanted = int(config.sampling.checkpoint_step)
        restored = store.restore(
            None if wanted < 0 else wanted,
            checkpointing.abstract_like(state.as_dict(), replicated),
        )
    finally:
        store.close()
    train.check_restored_metadata(restored.metadata, dataset, os.fspath(workdir))
    _, bound, apply = train.make_eval_fns(
        graphdef,
        weighting=config.diffusion.weighting,
        t_end=float(config.diffusion.t_end),
        num_steps=int(config.diffusion.num_steps),
        max_count=int(dataset.max_count),
        num_time_samples=int(config.eval.num_time_samples),
    )
    ema = restored.state["ema_params"]
    dropout_key = jax.random.fold_in(jax.random.key(int(config.seed)), _DROPOUT_STREAM)
    return TrainedModel(
        step=restored.step,
        predict_fn=predict.make_predict_fn(graphdef, ema, rest, dropout_key=dropout_key)
        if bool(config.sampling.dropout)
        else jax.tree_util.Partial(apply, ema, rest),
        max_count=int(dataset.max_count),
        image_shape=tuple(int(d) for d in dataset.image_shape),
        bound=bound,
        params=ema,
        rest=rest,
    )


def _batch_sharding_for(size: int) -> jax.sharding.Sharding | None:
    """Split a batch over every device when it divides evenly, else leave placement to XLA."""
    if size % jax.device_count() == 0:
        return parallel.batch_sharding(parallel.create_mesh())
    return None


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def draw_samples(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike[str], model: TrainedModel
) -> np.ndarray:
    """``sampling.num_samples`` samples of ``model`` (resumable chunks under ``samples/``)."""
    sampling_config = config.sampling
    num_steps = int(sampling_config.num_steps)
    chunk = int(sampling_config.batch_size)
    method = str(sampling_config.method)
    variant = f"{sampling_config.grid}_{sampling_config.start}" + (
        "_dropout" if sampling_config.dropout else ""
    )
    chunk_dir = Path(
        workdir, "samples", f"chunks_{model.step}_{method}_{variant}_{num_steps}_{chunk}"
    )
    seed_key = jax.random.fold_in(jax.random.key(int(config.seed)), _SAMPLE_STREAM)
    samples = generate.generate_samples(
        jax.random.fold_in(seed_key, model.step),
        model.predict_fn,
        num_samples=int(sampling_config.num_samples),
        example_shape=model.image_shape,
        times=schedule.sampling_times(
            sampling_config.grid,
            num_steps,
            t_end=float(config.diffusion.t_end),
            training_steps=int(config.diffusion.num_steps),
        ),
        max_count=model.max_count,
        method=method,
        start=str(sampling_config.start),
        chunk_size=chunk,
        chunk_dir=chunk_dir,
        sharding=_batch_sharding_for(chunk),
        progress=True,
    )
    return samples


def sample_run(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike[str], dataset: Any
) -> Path:
    """Draw ``sampling.num_samples`` samples and write ``samples/samples_<step>.npz`` + PNG."""
    model = load_trained_model(config, workdir, dataset)
    samples = draw_samples(config, workdir, model)
    path = Path(workdir, "samples", f"samples_{model.step}.npz")
    if parallel.is_primary():
        np.savez(
            path,
            samples=samples,
            method=np.asarray(config.sampling.method),
            num_steps=np.asarray(int(config.sampling.num_steps)),
        )
        reporting.save_sample_grid(samples[:100], model.max_count, path.with_suffix(".png"))
    print(f"wrote {len(samples)} samples of step {model.step} to {path}")
    return path


def likelihood_over(
    model: TrainedModel, examples: np.ndarray, *, batch_size: int, key: jax.Array
) -> np.ndarray:
    """Per-example likelihood bound in nats over ``examples`` (padded batches, sharded)."""
    examples = np.asarray(examples)
    num = examples.shape[0]
    padded = -(-num // batch_size) * batch_size
    padding = np.zeros((padded - num, *examples.shape[1:]), examples.dtype)
    batches = np.concatenate([examples, padding]).reshape(-1, batch_size, *examples.shape[1:])
    sharding = _batch_sharding_for(batch_size) or parallel.replicated_sharding(
        parallel.create_mesh()
    )
    nats = [
        model.bound(
            model.params,
            model.rest,
            parallel.shared_array(batch, sharding),
            jax.random.fold_in(key, index),
        )
        for index, batch in enumerate(batches)
    ]
    return np.concatenate(parallel.to_host(nats))[:num]


def sample_quality_kind(config: ml_collections.ConfigDict, dataset_name: str) -> str:
    """Which sample metrics ``eval.sample_metrics`` selects: 'digits', 'inception' or 'none'."""
    chosen = str(config.eval.sample_metrics)
    if chosen != "auto":
        return chosen
    if dataset_name == "digits":
        return "digits"
    return "inception" if dataset_name in INCEPTION_DATASETS else "none"


def evaluate_run(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike[str], dataset: Any
) -> Path:
    """Likelihood bound over the held-out split and sample metrics → ``eval/metrics_<step>.json``.

    Raises:
      FileNotFoundError: Inception metrics were asked for and the weights file is missing
        (checked before any work).
    """
    kind = sample_quality_kind(config, str(dataset.name))
    extractor = None
    if kind == "inception":
        from blackout_jax.metrics import inception

        extractor = inception.TorchFidelityInception(str(config.eval.inception_weights) or None)
    model = load_trained_model(config, workdir, dataset)
    test = np.asarray(dataset.test_examples(None))
    key = jax.random.fold_in(jax.random.key(int(config.seed)), _EVALUATE_STREAM)
    nats = likelihood_over(model, test, batch_size=int(config.eval.batch_size), key=key)
    num_dims = math.prod(model.image_shape)
    half_width = 1.96 * float(np.std(nats, ddof=1)) / math.sqrt(len(nats)) if len(nats) > 1 else 0.0
    results: dict[str, Any] = {
        "step": model.step,
        "num_test_examples": len(nats),
        "num_time_samples": int(config.eval.num_time_samples),
        "nll_nats": float(np.mean(nats)),
        "nll_nats_ci95": half_width,
        "bits_per_dim": float(np.mean(nats)) / (num_dims * math.log(2.0)),
        "bits_per_dim_ci95": half_width / (num_dims * math.log(2.0)),
    }
    if kind != "none":
        samples = draw_samples(config, workdir, model)
        results["sampler"] = {
            "method": str(config.sampling.method),
            "num_steps": int(config.sampling.num_steps),
            "num_samples": len(samples),
            "grid": str(config.sampling.grid),
            "start": str(config.sampling.start),
            "dropout": bool(config.sampling.dropout),
        }
        if kind == "digits":
            from blackout_jax.metrics import digits_features

            results["sample_metrics"] = digits_features.digits_sample_metrics(samples)
        else:
            results["sample_metrics"] = _inception_metrics(config, dataset, samples, extractor)
    path = Path(workdir, "eval", f"metrics_{model.step}.json")
    if parallel.is_primary():
        _write_json(path, results)
    print(
        f"step {model.step}: {results['bits_per_dim']:.4f} ± {results['bits_per_dim_ci95']:.4f} "
        f"bits/dim on {len(nats)} held-out examples; wrote {path}"
    )
    return path


def _inception_metrics(
    config: ml_collections.ConfigDict, dataset: Any, samples: np.ndarray, extractor: Any
) -> dict[str, Any]:
    from blackout_jax.metrics import inception

    cache_dir = str(config.eval.reference_cache_dir) or os.path.join(
        os.path.expanduser("~"), ".cache", "blackout_jax", "reference"
    )

    def training_batches(batch_size: int = 1000):
        total = dataset.num_train
        for start in range(0, total, batch_size):
            indices = np.arange(start, min(start + batch_size, total))
            batch = np.asarray(dataset.train_source.read(indices), np.int32)
            yield batch.reshape(len(indices), *dataset.image_shape)

    reference = inception.load_or_compute_reference_statistics(
        cache_dir, str(dataset.name), extractor, training_batches, max_count=int(dataset.max_count)
    )
    return inception.inception_sample_metrics(
        samples,
        reference,
        extractor,
        max_count=int(dataset.max_count),
        kid_subset_size=min(int(config.eval.kid_subset_size), len(samples)),
    )


def read_imputation_input(path: str | os.PathLike[str], image_shape: tuple[int, ...]) -> tuple:
    """Read ``counts`` and ``mask`` from an ``.npz``; shapes ``(N, H, W, C)`` or ``(N, H, W)``.

    Raises:
      ValueError: a missing array, a shape that does not match the model's examples, or a mask
        that is not boolean or 0/1 (messages name the file and the array).
    """
    with np.load(path, allow_pickle=False) as archive:
        for name in ("counts", "mask"):
            if name not in archive.files:
                raise ValueError(f"{path} has no array {name!r} (found {archive.files})")
        counts, mask = archive["counts"], archive["mask"]
    for name, array in (("counts", counts), ("mask", mask)):
        if array.ndim == len(image_shape) and image_shape[-1] == 1:
            array = array[..., None]
        if array.shape[1:] != tuple(image_shape) or array.shape[0] < 1:
            raise ValueError(
                f"{path}[{name!r}] has shape {array.shape}; expected (N, *{tuple(image_shape)})"
            )
        if name == "counts":
            counts = array
        else:
            mask = array
    if mask.dtype != np.bool_:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{path}['mask'] must be boolean or 0/1")
        mask = mask.astype(bool)
    return counts, mask


def impute_run(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike[str],
    dataset: Any,
    input_path: str | os.PathLike[str],
) -> Path:
    """Complete the unobserved counts of ``input_path`` → ``imputed/imputed_<step>.npz`` + PNG."""
    model = load_trained_model(config, workdir, dataset)
    counts, mask = read_imputation_input(input_path, model.image_shape)
    times = schedule.sampling_times(
        config.sampling.grid,
        int(config.sampling.num_steps),
        t_end=float(config.diffusion.t_end),
        training_steps=int(config.diffusion.num_steps),
    )
    chunk = int(config.sampling.batch_size)
    key = jax.random.fold_in(jax.random.key(int(config.seed)), _IMPUTE_STREAM)
    parts = []
    for start in range(0, len(counts), chunk):
        piece, piece_mask = counts[start : start + chunk], mask[start : start + chunk]
        observed_counts = np.where(piece_mask, piece, 0)
        completed = sampling.impute(
            jax.random.fold_in(key, start),
            model.predict_fn,
            jnp.asarray(observed_counts),
            jnp.asarray(piece_mask),
            times,
            max_count=model.max_count,
            method=str(config.sampling.method),
            start=str(config.sampling.start),
            resamples=int(config.sampling.impute_resamples),
            particles=int(config.sampling.impute_particles),
            progress=parallel.is_primary(),
            sharding=_batch_sharding_for(len(piece)),
        )
        parts.append(parallel.to_host(completed))
    completed = np.concatenate(parts)
    path = Path(workdir, "imputed", f"imputed_{model.step}.npz")
    if parallel.is_primary():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, counts=completed, mask=mask)
        reporting.save_sample_grid(completed[:100], model.max_count, path.with_suffix(".png"))
    print(f"imputed {int((~mask).sum())} missing counts in {len(completed)} examples; wrote {path}")
    return path
