"""Networks for Blackout Diffusion (Flax NNX): NCSN++, the ``predict_fn`` adapter and the
FLOP counter (:mod:`blackout_jax.models.flops`)."""

from blackout_jax.models.ncsnpp import (
    CIFAR10_REFERENCE,
    NCSNpp,
    NCSNppConfig,
    abstract_network,
    check_image_shape,
    count_parameters,
    create_model,
    parameter_count,
    parse_config,
)
from blackout_jax.models.predict import (
    example_dropout_keys,
    guided_prediction,
    make_predict_fn,
)

__all__ = [
    "CIFAR10_REFERENCE",
    "NCSNpp",
    "NCSNppConfig",
    "abstract_network",
    "check_image_shape",
    "count_parameters",
    "create_model",
    "example_dropout_keys",
    "guided_prediction",
    "make_predict_fn",
    "parameter_count",
    "parse_config",
]
