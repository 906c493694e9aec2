"""Tests of the experiment configs (configs/*.py) and the typed config (blackout_jax.run.config)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pathlib
import sys
import types

import pytest

from blackout_jax import models
from blackout_jax.run import config as config_lib
from blackout_jax.run import network

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
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
        "celeba64",
        "cifar10",
        "cifar10_finite_time",
        "counts",
        "counts_small",
        "default",
        "digits",
        "tiny",
    }


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_loads_and_validates(name):
    config = _config(name)
    if name.startswith("counts"):
        with pytest.raises(ValueError, match="data.path"):
            config_lib.validate_config(config)
        config.data.path = "/data/my_counts.npz"
    typed = config_lib.validate_config(config, device_count=1)
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
        assert set(values) == declared - {"nonlinearity"}, section


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
    read = _attribute_names_read(REPO_ROOT / "blackout_jax", skip={"config.py"})
    typed = config_lib.ExperimentConfig()
    unread = [
        f"{section.name}.{field.name}"
        for section in dataclasses.fields(typed)
        if dataclasses.is_dataclass(getattr(typed, section.name))
        for field in dataclasses.fields(getattr(typed, section.name))
        if field.name not in read
    ]
    assert unread == []


def test_digits_is_the_default():
    assert _config("digits").to_dict() == _config("default").to_dict()


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


def test_cifar10_network_has_the_reference_parameter_count():
    config = _config("cifar10")
    data = types.SimpleNamespace(image_shape=(32, 32, 3), max_count=255)
    abstract = network.abstract_model(
        config_lib.parse(config), data
    )  # shapes only, no 62M initialisation
    assert models.count_parameters(abstract) == 62_693_251


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
        config_lib.validate_config(config)


def test_batch_must_split_over_the_devices():
    config = _config("default")
    config.training.batch_size = 12
    config_lib.validate_config(config, device_count=4)
    with pytest.raises(ValueError, match="training.batch_size must be divisible by the device"):
        config_lib.validate_config(config, device_count=8)
    config.training.batch_size = 16
    config.eval.batch_size = 20
    with pytest.raises(ValueError, match="eval.batch_size must be divisible by the device"):
        config_lib.validate_config(config, device_count=8)


def test_unknown_and_missing_fields_are_named():
    config = _config("default").to_dict()
    config["training"]["lr"] = 1e-3
    with pytest.raises(ValueError, match="training.lr is unknown"):
        config_lib.validate_config(config)
    config = _config("default").to_dict()
    config["optimiser"] = {}
    with pytest.raises(ValueError, match="optimiser is unknown"):
        config_lib.validate_config(config)


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
    assert "training.num_steps = 6  # training steps" in text
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
