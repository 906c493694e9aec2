"""Writes the lower bounds of setup.cfg's requirements as pip constraints (``name==version``).

    python .ci/lower_bounds.py > .ci/lower-bounds.txt
    pip install -c .ci/lower-bounds.txt -e ".[test]"

Every ``name>=version`` of ``install_requires`` and of the ``test`` extra becomes
``name==version``, so that the install above is the oldest one that setup.cfg promises to
support. Requirements without a lower bound are left out.
"""

from __future__ import annotations

import configparser
import pathlib
import re

SETUP_CFG = pathlib.Path(__file__).resolve().parents[1] / "setup.cfg"
_LOWER_BOUND = re.compile(r"^([A-Za-z0-9_.\-\[\]]+?)\s*>=\s*([0-9][^,;\s]*)")


def lower_bound_constraints(setup_cfg: pathlib.Path = SETUP_CFG) -> list[str]:
    """``name==version`` for every ``name>=version`` in install_requires and the test extra."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg, encoding="utf-8")
    requirements = parser["options"]["install_requires"].splitlines()
    requirements += parser["options.extras_require"]["test"].splitlines()
    constraints = []
    for requirement in filter(None, (line.strip() for line in requirements)):
        match = _LOWER_BOUND.match(requirement)
        if match:
            constraints.append(f"{match.group(1)}=={match.group(2)}")
    return constraints


if __name__ == "__main__":
    print("# Generated from setup.cfg by .ci/lower_bounds.py; do not edit by hand.")
    print("\n".join(lower_bound_constraints()))
