"""The import contract of docs/architecture.md, read from the source with ``ast``.

Three layers, each importing only its own layer and the ones below it:

0. the pure math, the modules directly in ``blackout_jax/`` (the public API): ``jax``, NumPy and
   the standard library only, no Flax, configs or files;
1. networks, data and metrics (``blackout_jax/models``, ``blackout_jax/data``,
   ``blackout_jax/metrics``);
2. the run layer (``blackout_jax/run``, ``blackout_jax/main.py``, ``blackout_jax/demo.py``).

A module's imports include those inside functions: a lazy import still ties the layers.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "blackout_jax"
RUN_LAYER_MODULES = ("blackout_jax.main", "blackout_jax.demo")
MIDDLE_PACKAGES = ("blackout_jax.models", "blackout_jax.data", "blackout_jax.metrics")
LAYER_NAMES = ("math", "models/data/metrics", "run")
# What the math layer may import beyond the standard library and itself.
MATH_THIRD_PARTY = ("jax", "jaxlib", "numpy")


def _module_name(path: pathlib.Path, package: pathlib.Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layer_of(module: str) -> int:
    """0 for the math, 1 for networks, data and metrics, 2 for the run layer."""
    if module in RUN_LAYER_MODULES or _within(module, "blackout_jax.run"):
        return 2
    if any(_within(module, package) for package in MIDDLE_PACKAGES):
        return 1
    return 0


def imported_modules(path: pathlib.Path, package: pathlib.Path) -> set[str]:
    """Absolute names of every module that ``path`` imports (``from a import b``: ``a.b`` when
    ``b`` is a module of this package, else ``a``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports resolved against this module's package
                parent = _module_name(path, package).split(".")
                if path.name != "__init__.py":
                    parent = parent[:-1]
                base = ".".join(parent[: len(parent) - node.level + 1] + [node.module or ""])
            else:
                base = node.module or ""
            base = base.rstrip(".")
            names.add(base)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                stem = package.parent.joinpath(*candidate.split("."))
                if stem.with_suffix(".py").exists() or (stem / "__init__.py").exists():
                    names.add(candidate)
    return names


def contract_violations(package: pathlib.Path = PACKAGE) -> list[str]:
    """One line per import that breaks the layering, e.g. ``blackout_jax.sampling (math)
    imports blackout_jax.models (models/data/metrics)``."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path, package)
        layer = layer_of(module)
        for imported in sorted(imported_modules(path, package)):
            top = imported.split(".")[0]
            if top == "blackout_jax":
                if layer_of(imported) > layer:
                    problems.append(
                        f"{module} ({LAYER_NAMES[layer]}) imports {imported} "
                        f"({LAYER_NAMES[layer_of(imported)]})"
                    )
            elif (
                layer == 0
                and top not in MATH_THIRD_PARTY
                and top not in sys.stdlib_module_names
                and top != "__future__"
            ):
                problems.append(
                    f"{module} (math) imports {imported}, outside jax, numpy and stdlib"
                )
    return problems


def test_no_layer_imports_a_higher_one():
    assert contract_violations() == []


def test_the_layers_are_assigned_as_documented():
    assert layer_of("blackout_jax") == layer_of("blackout_jax.sampling") == 0
    assert layer_of("blackout_jax.models.ncsnpp") == layer_of("blackout_jax.data") == 1
    assert layer_of("blackout_jax.metrics.frechet") == 1
    assert layer_of("blackout_jax.run.train") == layer_of("blackout_jax.main") == 2
    assert layer_of("blackout_jax.runner") == 0  # a name that merely starts like a package


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("sampling.py", "from blackout_jax.models import predict\n", "imports blackout_jax.models"),
        ("sampling.py", "import flax.nnx\n", "imports flax.nnx, outside jax"),
        ("models/net.py", "def f():\n    from blackout_jax.run import train\n", "(run)"),
        ("data/reader.py", "from ..run import config\n", "imports blackout_jax.run.config"),
    ],
)
def test_a_forbidden_import_is_reported(tmp_path, module, source, expected):
    package = tmp_path / "blackout_jax"
    for folder in ("models", "data", "run"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "run" / "config.py").write_text("")
    (package / module).write_text(source)
    problems = contract_violations(package)
    assert problems and any(expected in line for line in problems), problems
