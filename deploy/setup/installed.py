"""Exit 0 when this Python already has accord and every dependency its pyproject.toml asks for,
at versions that satisfy it; 1 (saying what is missing) otherwise. node.sh skips the install
then: re-running `ray up` costs nothing, yet a changed dependency is installed.

Usage: python installed.py PYPROJECT
"""
from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

import tomllib
from packaging.requirements import Requirement


def missing(pyproject: str) -> list[str]:
    with open(pyproject, "rb") as fh:
        project = tomllib.load(fh)["project"]
    out = []
    for line in [f"{project['name']}=={project['version']}", *project["dependencies"]]:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            have = version(requirement.name)
        except PackageNotFoundError:
            out.append(f"{requirement.name} (not installed)")
            continue
        if not requirement.specifier.contains(have, prereleases=True):
            out.append(f"{requirement.name} {have} (wanted {requirement.specifier})")
    return out


if __name__ == "__main__":
    gaps = missing(sys.argv[1])
    for gap in gaps:
        print(f"needs installing: {gap}")
    sys.exit(1 if gaps else 0)
