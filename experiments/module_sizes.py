"""Lines per module and the longest function, at two commits: the figures of RESULTS.md's
"Run-layer renovation: module line counts".

    python -m experiments.module_sizes --before=9843a8b [--after=HEAD]

Prints one Markdown row per module of ``blackout_jax/run/``, ``blackout_jax/data/inputs.py``,
``blackout_jax/settings.py``, ``blackout_jax/sampling.py``, ``blackout_jax/models/predict.py``
and ``blackout_jax/main.py`` that exists at either commit: its lines (``wc -l``) before and after,
and the lines of code of its longest function after (a function's lines less its docstring,
blank lines and comment lines). Reads the files with ``git show``; writes nothing.
"""

from __future__ import annotations

import argparse
import ast
import subprocess

PREFIXES = ("blackout_jax/run/",)
SINGLE_FILES = (
    "blackout_jax/data/inputs.py",
    "blackout_jax/settings.py",
    "blackout_jax/sampling.py",
    "blackout_jax/models/predict.py",
    "blackout_jax/main.py",
)


def _git(*arguments: str) -> str:
    return subprocess.run(["git", *arguments], check=True, capture_output=True, text=True).stdout


def modules_at(commit: str) -> dict[str, str]:
    """``{path: source}`` of the measured modules at ``commit``."""
    paths = _git("ls-tree", "-r", "--name-only", commit).split()
    wanted = [
        path
        for path in paths
        if path in SINGLE_FILES or (path.startswith(PREFIXES) and path.endswith(".py"))
    ]
    return {path: _git("show", f"{commit}:{path}") for path in wanted}


def code_lines(node: ast.AST, source_lines: list[str]) -> int:
    """Lines of ``node`` that hold code: not blank, not a comment, not its docstring."""
    first, last = node.lineno, node.end_lineno
    docstring = set()
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        docstring = set(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(
        1
        for number in range(first, last + 1)
        if number not in docstring
        and source_lines[number - 1].strip()
        and not source_lines[number - 1].strip().startswith("#")
    )


def longest_function(source: str) -> tuple[str, int]:
    """``(name, lines of code)`` of the longest function or method in ``source``."""
    lines = source.splitlines()
    functions = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    if not functions:
        return "", 0
    best = max(functions, key=lambda node: code_lines(node, lines))
    return best.name, code_lines(best, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", default="HEAD")
    arguments = parser.parse_args()
    before, after = modules_at(arguments.before), modules_at(arguments.after)
    print("| module | before | after | longest function after (lines of code) |")
    print("|---|---|---|---|")
    for path in sorted(set(before) | set(after)):
        old = len(before[path].splitlines()) if path in before else "—"
        new = len(after[path].splitlines()) if path in after else "—"
        longest = "—"
        if path in after:
            name, size = longest_function(after[path])
            longest = f"`{name}` {size}" if name else "—"
        print(f"| `{path}` | {old} | {new} | {longest} |")


if __name__ == "__main__":
    main()
