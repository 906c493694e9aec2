"""Networks for Blackout Diffusion (Flax NNX): NCSN++ for count images, the count MLP for count
vectors, and the ``predict_fn`` adapter."""

from blackout_jax.models.count_mlp import (
    CountMLP,
    CountMLPConfig,
    check_example_shape,
    create_count_mlp,
    parse_count_mlp_config,
)
from blackout_jax.models.ncsnpp import (
    CIFAR10_REFERENCE,
    NCSNpp,
    NCSNppConfig,
    abstract_network,
    check_image_shape,
    count_parameters,
    create_model,
    parse_config,
)
from blackout_jax.models.predict import (
    example_dropout_keys,
    guided_prediction,
    make_predict_fn,
)

__all__ = [
    "CIFAR10_REFERENCE",
    "CountMLP",
    "CountMLPConfig",
    "NCSNpp",
    "NCSNppConfig",
    "abstract_network",
    "check_example_shape",
    "check_image_shape",
    "count_parameters",
    "create_count_mlp",
    "create_model",
    "example_dropout_keys",
    "guided_prediction",
    "make_predict_fn",
    "parse_config",
    "parse_count_mlp_config",
]
