"""Tests of the experiment configs (configs/*.py) and the typed config (blackout_jax.run.config)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from blackout_jax import models
from blackout_jax.data import DataShape
from blackout_jax.run import config as config_lib
from blackout_jax.run import network, train_step

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

CONFIG_NAMES = sorted(
    path.stem for path in (REPO_ROOT / "configs").glob("*.py") if path.stem != "__init__"
)


def _config(name: str):
    return importlib.import_module(f"configs.{name}").get_config()


def test_every_config_file_is_known():
    assert set(CONFIG_NAMES) == {
        "binarized_mnist",
        "binarized_mnist_small",
        "celeba64",
        "cells",
        "cifar10",
        "cifar10_finite_time",
        "counts",
        "counts_small",
        "default",
        "digits",
        "digits_conditional",
        "tiny",
        "vectors_tiny",
    }


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_loads_and_validates(name):
    config = _config(name)
    if name.startswith("counts") or name == "cells":
        with pytest.raises(ValueError, match="data.path"):
            config_lib.parse(config)
        config.data.path = "/data/my_counts.npz"
    typed = config_lib.parse(config, device_count=1)
    assert isinstance(typed, config_lib.ExperimentConfig)
    # Every field the file sets arrives in the typed config unchanged.
    for section, values in config.to_dict().items():
        if section == "seed":
            assert typed.seed == values
            continue
        for key, value in values.items():
            got = getattr(getattr(typed, section), key)
            assert got == (tuple(value) if isinstance(value, list) else value), (section, key)


def test_the_default_config_is_every_typed_field():
    default = _config("default").to_dict()
    typed = config_lib.ExperimentConfig()
    for section, values in default.items():
        if section == "seed":
            continue
        declared = {f.name for f in dataclasses.fields(getattr(typed, section))}
        assert set(values) == declared, section


def _attribute_names_read(root: pathlib.Path, skip: set[str]) -> set[str]:
    names = set()
    for path in root.rglob("*.py"):
        if path.name in skip:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
    return names


def test_every_config_field_is_read_by_the_code():
    """No field is defined that nothing reads: each name is read as an attribute somewhere in
    the package other than where it is declared."""
    read = _attribute_names_read(
        REPO_ROOT / "blackout_jax", skip={"config.py", "config_sections.py"}
    )
    typed = config_lib.ExperimentConfig()
    sections = [
        (section.name, getattr(typed, section.name))
        for section in dataclasses.fields(typed)
        if dataclasses.is_dataclass(getattr(typed, section.name))
    ]
    sections += [("model", network) for network in config_lib.MODEL_CONFIGS.values()]
    unread = [
        f"{name}.{field.name}"
        for name, section in sections
        for field in dataclasses.fields(section)
        if field.name not in read
    ]
    assert unread == []


def test_model_name_chooses_the_network_and_its_fields():
    vectors = config_lib.parse(_config("vectors_tiny"))
    assert isinstance(vectors.model, models.CountMLPConfig)
    assert vectors.model.width == 64  # the file's value over the network's default
    switched = _config("tiny")
    switched.model.name = "count_mlp"  # the NCSN++ fields stay: the section must be replaced
    with pytest.raises(ValueError, match=r"model.name = 'count_mlp' takes other fields than"):
        config_lib.parse(switched)
    with pytest.raises(ValueError, match=r"model.name must be one of \['count_mlp', 'ncsnpp'\]"):
        config_lib.model_defaults("unet")
    unknown = _config("tiny")
    unknown.model.name = "unet"
    with pytest.raises(ValueError, match=r"model.name must be one of"):
        config_lib.parse(unknown)


def test_digits_is_the_default_with_the_best_sampler_at_100_network_calls():
    digits, default = _config("digits").to_dict(), _config("default").to_dict()
    assert (digits["sampling"].pop("method"), digits["sampling"].pop("num_steps")) == (
        "trapezoidal_bridge",
        50,
    )
    del default["sampling"]["method"], default["sampling"]["num_steps"]
    assert digits == default


def test_digits_conditional_is_digits_with_labels():
    conditional, digits = _config("digits_conditional").to_dict(), _config("digits").to_dict()
    assert conditional["model"].pop("num_classes") == 10
    assert conditional["training"].pop("label_dropout") == 0.1
    assert conditional["training"]["num_steps"] == digits["training"]["num_steps"]
    del digits["model"]["num_classes"], digits["training"]["label_dropout"]
    assert conditional == digits


def test_reference_settings():
    cifar = _config("cifar10")
    assert cifar.diffusion.weighting == "instantaneous"
    assert cifar.diffusion.t_end == 15.0
    assert cifar.diffusion.num_steps == 1000
    assert cifar.training.batch_size == 256
    assert cifar.training.learning_rate == 2e-4
    assert cifar.training.ema_decay == 0.9999
    assert _config("cifar10_finite_time").diffusion.weighting == "finite_time"
    assert _config("binarized_mnist").diffusion.t_end == 10.0
    assert _config("binarized_mnist").data.max_count == 1
    assert _config("celeba64").training.batch_size == 100
    assert _config("counts").data.name == "counts"


REFERENCE_CONFIGS = ("cifar10", "cifar10_finite_time", "binarized_mnist", "celeba64")


@pytest.mark.parametrize(
    ("name", "image_shape", "max_count", "parameters"),
    [
        ("cifar10", (32, 32, 3), 255, 62_693_251),
        ("binarized_mnist", (32, 32, 1), 1, 62_686_337),
        ("celeba64", (64, 64, 3), 255, 62_693_251),
    ],
)
def test_reference_networks_have_the_reference_parameter_counts(
    name, image_shape, max_count, parameters
):
    config = _config(name)
    data = DataShape(image_shape, max_count)
    # shapes only (nnx.eval_shape), no 62M initialisation
    abstract = network.abstract_model(config_lib.parse(config), data)
    assert models.count_parameters(abstract) == parameters
    # the CIFAR-10 network of the reference, unchanged
    assert config.model.to_dict() == _config("cifar10").model.to_dict()


def test_reference_data_batch_and_time_settings():
    mnist, celeba = _config("binarized_mnist"), _config("celeba64")
    assert (mnist.data.name, mnist.data.max_count, mnist.data.random_flip) == (
        "binarized_mnist",
        1,
        False,
    )
    assert (mnist.training.batch_size, mnist.diffusion.t_end) == (256, 10.0)
    assert (celeba.data.name, celeba.data.random_flip) == ("celeba64", False)
    assert (celeba.training.batch_size, celeba.diffusion.t_end) == (100, 15.0)
    for config in (mnist, celeba):
        assert config.diffusion.weighting == "instantaneous"
        assert config.training.num_steps == 1_300_000
    assert _config("cifar10").data.random_flip


@pytest.mark.parametrize("name", REFERENCE_CONFIGS)
def test_reference_configs_sample_as_the_reference(name):
    config = _config(name)
    sampling = config.sampling
    assert (sampling.grid, sampling.start, sampling.dropout) == ("subgrid", "zeros", True)
    assert config.model.time_input == "grid_index"


def _hand_written_adam(params, grads, learning_rate):
    """Adam (b1 0.9, b2 0.999, eps 1e-8, bias-corrected) over a list of gradients."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    m = np.zeros_like(params)
    v = np.zeros_like(params)
    for step, grad in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        m_hat, v_hat = m / (1 - b1**step), v / (1 - b2**step)
        params = params - learning_rate * m_hat / (np.sqrt(v_hat) + eps)
    return params


@pytest.mark.parametrize("name", REFERENCE_CONFIGS)
def test_reference_optimiser_is_plain_adam(name):
    """No warm-up and no clipping: gradients of norm ~100 would be clipped to 1 otherwise."""
    training = _config(name).training
    assert (training.warmup_steps, training.grad_clip_norm) == (0, 0.0)
    assert training.learning_rate == 2e-4
    optimizer = train_step.make_optimizer(config_lib.parse(_config(name)).training)
    rng = np.random.default_rng(0)
    params = np.zeros((3, 5))  # the parameters are then the accumulated updates themselves
    grads = [50.0 * rng.normal(size=(3, 5)), 30.0 * rng.normal(size=(3, 5))]
    state = optimizer.init(jnp.asarray(params, jnp.float32))
    current = jnp.asarray(params, jnp.float32)
    for grad in grads:
        updates, state = optimizer.update(jnp.asarray(grad, jnp.float32), state, current)
        current = current + updates
    expected = _hand_written_adam(params, grads, 2e-4)
    np.testing.assert_allclose(np.asarray(current), expected, rtol=1e-4)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("diffusion.t_end", 0.0, "diffusion.t_end must be a finite number > 0"),
        ("diffusion.t_end", -3.0, "diffusion.t_end"),
        ("training.num_steps", 0, "training.num_steps must be an int >= 1"),
        ("training.batch_size", 1.5, "training.batch_size must be an int"),
        ("training.ema_decay", 1.0, "training.ema_decay"),
        ("training.learning_rate", 0.0, "training.learning_rate"),
        ("eval.num_time_samples", 0, "eval.num_time_samples"),
        ("diffusion.weighting", "uniform", "diffusion.weighting must be one of"),
        ("sampling.method", "euler", "sampling.method"),
        ("sampling.survival", 1.5, "sampling.survival must be a finite number > 0.0 and <= 1.0"),
        ("data.name", "mnist", "data.name"),
        ("data.max_count", 0, "data.max_count"),
        ("model.nf", 0, "model.nf"),
        ("model.dropout", 1.5, "model.dropout"),
        ("seed", True, "seed"),
    ],
)
def test_impossible_values_name_the_field(field, value, message):
    config = _config("default").to_dict()  # a plain dict takes values of any type
    section, _, key = field.rpartition(".")
    (config[section] if section else config)[key] = value
    with pytest.raises(ValueError, match=message):
        config_lib.parse(config)


def test_batch_must_split_over_the_devices():
    config = _config("default")
    config.training.batch_size = 12
    config_lib.parse(config, device_count=4)
    with pytest.raises(ValueError, match="training.batch_size must be divisible by the device"):
        config_lib.parse(config, device_count=8)
    config.training.batch_size = 16
    config.eval.batch_size = 20
    with pytest.raises(ValueError, match="eval.batch_size must be divisible by the device"):
        config_lib.parse(config, device_count=8)


def test_unknown_and_missing_fields_are_named():
    config = _config("default").to_dict()
    config["training"]["lr"] = 1e-3
    with pytest.raises(ValueError, match="training.lr is unknown"):
        config_lib.parse(config)
    config = _config("default").to_dict()
    config["optimiser"] = {}
    with pytest.raises(ValueError, match="optimiser is unknown"):
        config_lib.parse(config)


def test_missing_fields_take_their_defaults_and_the_typed_config_is_frozen():
    config = _config("default").to_dict()
    del config["eval"]["num_grid_samples"]
    typed = config_lib.parse(config)
    assert typed.eval.num_grid_samples == config_lib.EvalConfig().num_grid_samples
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.eval.num_grid_samples = 3  # type: ignore[misc]
    assert config_lib.parse(typed) is typed


def test_describe_lists_every_field_with_its_value():
    text = config_lib.describe(config_lib.parse(_config("tiny")))
    assert "training.num_steps = 6  # optimiser updates to train for" in text
    assert "model.nf = 8" in text
    assert (
        len(text.splitlines())
        == len(config_lib.ExperimentConfig().to_dict()["model"])
        + sum(
            len(v)
            for k, v in config_lib.ExperimentConfig().to_dict().items()
            if k != "model" and isinstance(v, dict)
        )
        + 1
    )
