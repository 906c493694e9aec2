"""The data and the network of an experiment, built from the typed config.

The run layer's one place that loads ``config.data`` (:func:`load_data`, with
:func:`split_summary` for the start of training) and turns
``config.model`` + the data's shape into the network ``model.name`` names (NCSN++ for images
``(H, W, C)``, the count network for vectors ``(D,)``; :func:`model_factory`), into its shapes only
(:func:`abstract_model`, no memory, no compute), or into the parts a restore needs
(:func:`network_parts`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from blackout_jax import data, models
from blackout_jax.data import CountDataset, DataShape
from blackout_jax.run.config import ExperimentConfig

LARGEST_MAX_COUNT = 2**24
"""The largest max count the run layer accepts (16,777,216): counts pass through float32 in
the networks' inputs, the rates and the draws, and float32 holds every integer only up to
``2**24``. (The samplers' draws and the bound's prior term cost the same at any max count:
:mod:`blackout_jax.draws`.)"""


def load_data(config: ExperimentConfig) -> CountDataset:
    """The checked dataset of ``config.data`` (:func:`blackout_jax.data.load_dataset`), with
    the class labels of ``model.num_classes``, checked against the network of ``config.model``
    (:func:`check_example_shape`).

    Raises:
      ValueError: bad data, data the network does not fit or a max count above
        :data:`LARGEST_MAX_COUNT`, naming where the data came from.
      FileNotFoundError: missing data.
    """
    dataset = data.load_dataset(config.data, seed=config.seed, num_classes=config.model.num_classes)
    if dataset.shape.max_count > LARGEST_MAX_COUNT:
        raise ValueError(
            f"{dataset.origin} ({dataset.name}): the max count is {dataset.shape.max_count} "
            f"(data.max_count={config.data.max_count}, 0 = inferred); counts up to "
            f"{LARGEST_MAX_COUNT} (2**24, the integers float32 holds exactly) are accepted: "
            "scale the counts down (e.g. divide and round) or clip the rare large ones"
        )
    try:
        check_example_shape(config, dataset.shape.example_shape)
    except ValueError as error:
        raise ValueError(f"{dataset.origin} ({dataset.name}): {error}") from None
    return dataset


def check_example_shape(config: ExperimentConfig, example_shape: tuple[int, ...]) -> None:
    """Check the shape of one example against the network of ``config.model``: NCSN++ takes
    images ``(H, W, C)`` whose sizes its levels divide
    (:func:`blackout_jax.models.check_image_shape`), the count network vectors ``(D,)``
    (:func:`blackout_jax.models.check_example_shape`).

    Raises:
      ValueError: naming the shape and the network (and the field to change).
    """
    if isinstance(config.model, models.CountMLPConfig):
        models.check_example_shape(config.model, example_shape)
    elif len(example_shape) != 3:
        raise ValueError(
            f"examples of shape {tuple(example_shape)} are count vectors; model.name 'ncsnpp' "
            "takes images (H, W, C): use the count network (configs/cells.py, "
            "configs/vectors_tiny.py), config.model = model_defaults('count_mlp')"
        )
    else:
        models.check_image_shape(config.model, example_shape)


SPLIT_BY_NUM_TEST = ("digits", "synthetic_cells", "counts")
"""The datasets whose held-out split is ``data.num_test`` examples (the others have their own)."""


def split_summary(config: ExperimentConfig, dataset: CountDataset) -> str:
    """One line for the start of training: the training and held-out example counts and the
    max count, with where each came from.

    Raises:
      ValueError: ``data.num_test`` holds out more than half of the examples and
        ``data.allow_large_test_share`` is off; naming the field and the counts.
    """
    total = dataset.num_train + dataset.num_test
    share = dataset.num_test / total
    by_field = dataset.name in SPLIT_BY_NUM_TEST
    if by_field and share > 0.5 and not config.data.allow_large_test_share:
        raise ValueError(
            f"data.num_test = {dataset.num_test} holds out {share:.0%} of the {total} examples "
            f"of {dataset.origin}, leaving {dataset.num_train} for training: lower "
            "data.num_test, or set data.allow_large_test_share=True to hold out more than half"
        )
    held_out = "data.num_test" if by_field else f"the {dataset.name} test split"
    if dataset.max_count_inferred:
        bound = "inferred from the data; declare it with data.max_count"
    elif dataset.name == "counts":
        bound = "data.max_count"
    else:
        bound = f"fixed by {dataset.name}"
    return (
        f"data: {dataset.num_train} training and {dataset.num_test} held-out examples "
        f"({held_out}, {share:.0%} held out); max count {dataset.max_count} ({bound})"
    )


def model_factory(
    config: ExperimentConfig,
    shape: DataShape,
    feature_moments: tuple[np.ndarray, np.ndarray] | None = None,
) -> Callable[[], nnx.Module]:
    """A no-argument function building the network of ``config`` for examples of ``shape``.

    ``feature_moments``: the per-feature ``(mean (D,), variance (D,))`` of the training split
    (:meth:`blackout_jax.data.CountDataset.feature_moments`), from which the count network
    initialises its per-feature negative-binomial prior; only a new network needs them (a
    restored one overwrites its parameters).
    """
    common = {
        "max_count": shape.max_count,
        "t_end": config.diffusion.t_end,
        "num_steps": config.diffusion.num_steps,
        "seed": config.seed,
    }
    if isinstance(config.model, models.CountMLPConfig):
        mean, variance = (None, None) if feature_moments is None else feature_moments
        return functools.partial(
            models.create_count_mlp,
            config.model,
            example_shape=shape.example_shape,
            feature_mean=mean,
            feature_variance=variance,
            **common,
        )
    return functools.partial(
        models.create_model, config.model, image_shape=shape.example_shape, **common
    )


def abstract_model(config: ExperimentConfig, shape: DataShape) -> nnx.Module:
    """The network with shapes only (``nnx.eval_shape``); building it checks the model fields
    against the data (errors name ``model.<field>``)."""
    return nnx.eval_shape(model_factory(config, shape))


def network_parts(
    config: ExperimentConfig, shape: DataShape, sharding: jax.sharding.Sharding
) -> tuple[nnx.GraphDef, Any, Any]:
    """``(graphdef, abstract_params, rest)`` without initialising the parameters.

    ``abstract_params`` are ``jax.ShapeDtypeStruct`` leaves on ``sharding`` (a restore target);
    ``rest`` holds the network's non-parameter variables (e.g. fixed Fourier features), computed
    by a compiled initialisation from which XLA drops the unused parameter draws, and only when
    there are any (the positional time embedding has none).
    """
    factory = model_factory(config, shape)
    graphdef, abstract_params, abstract_rest = nnx.split(nnx.eval_shape(factory), nnx.Param, ...)
    abstract_params = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_params,
    )

    def build_rest() -> Any:
        return nnx.split(factory(), nnx.Param, ...)[2]

    if not jax.tree.leaves(abstract_rest):
        return graphdef, abstract_params, abstract_rest
    rest = jax.jit(build_rest, out_shardings=sharding)()
    return graphdef, abstract_params, rest
