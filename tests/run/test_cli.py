"""Tests of the command line's plumbing (blackout_jax.run.cli): config files that cannot give a
config, and the imports of the shipped configs from a config file anywhere."""

from __future__ import annotations

import pathlib
import sys

import pytest

from blackout_jax.run import cli


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("notes.md", b"# Notes\n\nSome *text*.\n", "the file cannot be loaded: SyntaxError: "),
        (
            "mine.py",
            b"raise RuntimeError('broken config')\n",
            "the file cannot be loaded: RuntimeError: broken config",
        ),
        (
            "mine.py",
            b"def get_config(:\n    pass\n",
            "the file cannot be loaded: SyntaxError: invalid syntax (line 1)",
        ),
        ("mine.py", b"X = 1\n", "the file defines no function get_config()"),
        (
            "mine.py",
            b"def get_config():\n    return 42\n",
            "its get_config() returned int 42, not an ml_collections.ConfigDict",
        ),
        (
            "mine.py",
            b"def get_config():\n    return {}['model']\n",
            "its get_config() raised KeyError: 'model'",
        ),
        ("mine.py", bytes(range(256)), "the file cannot be loaded: SyntaxError: "),
    ],
    ids=[
        "markdown",
        "raises",
        "syntax error",
        "no get_config",
        "returns 42",
        "get_config raises",
        "binary junk",
    ],
)
def test_a_config_file_that_gives_no_config_is_one_line_naming_it(
    tmp_path, name, content, expected
):
    path = tmp_path / name
    path.write_bytes(content)
    problem = cli.config_file_problem(["main", f"--config={path}"])
    assert problem.startswith(f"--config={path}: ") and expected in problem
    assert "\n" not in problem
    assert path.read_bytes() == content


def test_a_config_that_loads_has_no_problem():
    assert cli.config_file_problem(["main", "--config=configs/tiny.py"]) is None
    assert cli.config_file_problem(["main"]) is None
    assert "no such file" in cli.config_file_problem(["main", "--config=configs/nope.py"])
    assert "is a folder" in cli.config_file_problem(["main", "--config=configs"])


def test_a_config_anywhere_can_import_the_shipped_configs(tmp_path, monkeypatch):
    root = str(cli.SOURCE_ROOT)
    monkeypatch.setattr(
        sys, "path", [p for p in sys.path if pathlib.Path(p or ".").resolve() != cli.SOURCE_ROOT]
    )
    monkeypatch.chdir(tmp_path)
    for name in [name for name in sys.modules if name == "configs" or name.startswith("configs.")]:
        monkeypatch.delitem(sys.modules, name)
    path = tmp_path / "mine.py"
    path.write_text(
        "from configs import tiny\n\n\ndef get_config():\n"
        "    config = tiny.get_config()\n    config.model.nf = 4\n    return config\n"
    )
    with pytest.raises(ModuleNotFoundError, match="configs"):
        cli.load_config(str(path))
    cli.make_config_package_importable(str(path))
    assert sys.path[0] == root
    assert cli.load_config(str(path)).model.nf == 4
