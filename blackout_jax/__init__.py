"""blackout_jax: Blackout Diffusion (generative diffusion on integer counts) in JAX.

The public names below are pure JAX functions (they work under ``jax.jit`` and ``jax.vmap``);
the samplers and the likelihood bound take any ``predict_fn(counts, t) -> yhat``.

The names are loaded on first use (PEP 562 ``__getattr__``): ``import blackout_jax`` (and so
``python -m blackout_jax.main``) takes moments, and JAX is imported only when a name of the
API, or a submodule, is first asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and editors see; at run time see __getattr__
    from blackout_jax.grids import optimised_grid
    from blackout_jax.likelihood import (
        NllBoundTerms,
        bits_per_dim,
        nll_bound,
        nll_bound_terms,
        prior_kl,
        prior_log_prob,
        prior_sample,
    )
    from blackout_jax.losses import (
        WEIGHTINGS,
        example_keys,
        poisson_divergence,
        poisson_loss,
        sample_time_and_weight,
        training_loss,
    )
    from blackout_jax.oracle import dataset_oracle
    from blackout_jax.process import (
        birth_rate,
        bridge_log_prob,
        bridge_probability,
        bridge_sample,
        forward_log_prob,
        forward_sample,
        survival_probability,
    )
    from blackout_jax.sampling import METHODS, impute, sample, unthin
    from blackout_jax.schedule import (
        GRIDS,
        continuous_time,
        grid_position,
        observation_times,
        sampling_times,
        subgrid,
    )

__version__ = "0.1.0"

__all__ = [
    "GRIDS",
    "METHODS",
    "WEIGHTINGS",
    "birth_rate",
    "bits_per_dim",
    "bridge_log_prob",
    "bridge_probability",
    "bridge_sample",
    "continuous_time",
    "dataset_oracle",
    "example_keys",
    "forward_log_prob",
    "forward_sample",
    "grid_position",
    "impute",
    "nll_bound",
    "observation_times",
    "optimised_grid",
    "poisson_divergence",
    "poisson_loss",
    "prior_kl",
    "prior_log_prob",
    "prior_sample",
    "sample",
    "sample_time_and_weight",
    "sampling_times",
    "subgrid",
    "survival_probability",
    "training_loss",
    "unthin",
    "NllBoundTerms",
    "nll_bound_terms",
]

# Each public name -> the submodule that defines it.
_SUBMODULE_OF = {
    **dict.fromkeys(("optimised_grid",), "grids"),
    **dict.fromkeys(
        (
            "NllBoundTerms",
            "bits_per_dim",
            "nll_bound",
            "nll_bound_terms",
            "prior_kl",
            "prior_log_prob",
            "prior_sample",
        ),
        "likelihood",
    ),
    **dict.fromkeys(
        (
            "WEIGHTINGS",
            "example_keys",
            "poisson_divergence",
            "poisson_loss",
            "sample_time_and_weight",
            "training_loss",
        ),
        "losses",
    ),
    **dict.fromkeys(("dataset_oracle",), "oracle"),
    **dict.fromkeys(
        (
            "birth_rate",
            "bridge_log_prob",
            "bridge_probability",
            "bridge_sample",
            "forward_log_prob",
            "forward_sample",
            "survival_probability",
        ),
        "process",
    ),
    **dict.fromkeys(("METHODS", "impute", "sample", "unthin"), "sampling"),
    **dict.fromkeys(
        (
            "GRIDS",
            "continuous_time",
            "grid_position",
            "observation_times",
            "sampling_times",
            "subgrid",
        ),
        "schedule",
    ),
}


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported from its submodule on first use and kept."""
    submodule = _SUBMODULE_OF.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
