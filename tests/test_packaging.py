"""setup.cfg and the lower-bound constraints that CI installs (.ci/lower-bounds.txt) agree."""

from __future__ import annotations

import configparser
import importlib.util

from tests.cli import REPO_ROOT


def _lower_bounds_module():
    spec = importlib.util.spec_from_file_location("lower_bounds", REPO_ROOT / ".ci/lower_bounds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _requirements(section: str, key: str) -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg", encoding="utf-8")
    return [line.strip() for line in parser[section][key].splitlines() if line.strip()]


def test_the_constraints_file_is_generated_from_setup_cfg():
    lines = (REPO_ROOT / ".ci/lower-bounds.txt").read_text(encoding="utf-8").splitlines()
    pinned = [line for line in lines if line and not line.startswith("#")]
    assert pinned == _lower_bounds_module().lower_bound_constraints()


def test_every_requirement_has_a_lower_bound_that_becomes_a_pin():
    requirements = _requirements("options", "install_requires")
    requirements += _requirements("options.extras_require", "test")
    pins = _lower_bounds_module().lower_bound_constraints()
    assert [pin.replace("==", ">=") for pin in pins] == requirements
