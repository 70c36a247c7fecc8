"""Checks that this interpreter has every runtime dependency of pyproject.toml at exactly
its declared lower bound, and prints them.

`make test-lowest` installs them with uv's `--resolution lowest-direct`; when a lower bound
cannot be resolved (another dependency asks for more) uv picks a higher version without a
word, and the step would test a bound nobody declared. This makes that an error.

    .venv-lowest/bin/python -m testenv.lowest_deps
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def lower_bound(req: Requirement) -> Version | None:
    """The version a `>=`, `~=` or `==` specifier starts at (the highest, if several)."""
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "~=", "==")]
    return max(bounds) if bounds else None


def check(dependencies: list[str]) -> list[str]:
    """What is wrong: a dependency without a lower bound, missing, or not at its bound."""
    wrong = []
    for line in dependencies:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        low = lower_bound(req)
        if low is None:
            wrong.append(f"{req.name}: no lower bound in pyproject.toml")
            continue
        try:
            got = Version(version(req.name))
        except PackageNotFoundError:
            wrong.append(f"{req.name}: not installed")
            continue
        if got != low:
            wrong.append(f"{req.name}: installed {got}, but the lower bound is {low}")
        else:
            print(f"  {req.name:<18} {got}")
    return wrong


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    print("runtime dependencies at their lower bounds:")
    wrong = check(list(project["dependencies"]))
    for w in wrong:
        print(f"lowest versions: {w}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
