"""Print the requirements of the lowest-versions check, read from pyproject.toml (so they always match it).

The packages in LOWEST get `==` their declared lower bound; torch gets 2.13.0, the only CPU build on this
machine's disk (so pyproject's torch floor is declared, not tested); every other runtime and `dev` requirement
is printed as declared (pip picks the newest release compatible with the pins).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

LOWEST = {"transformers", "peft", "accelerate", "datasets", "numpy", "safetensors"}
TORCH = "torch==2.13.0"


def main(pyproject: Path) -> None:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    seen = set()
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        if name in seen:
            continue
        seen.add(name)
        if name == "torch":
            print(TORCH)
        elif name in LOWEST:
            floor = re.search(r">=\s*([0-9][^,;\s]*)", requirement)
            if floor is None:
                sys.exit(f"{requirement!r} in pyproject.toml has no lower bound")
            print(f"{name}=={floor.group(1)}")
        else:
            print(requirement)
    missing = LOWEST - seen
    if missing:
        sys.exit(f"not declared in pyproject.toml: {sorted(missing)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
