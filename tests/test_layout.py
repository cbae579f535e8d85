"""The dependency direction of ARCHITECTURE.md: native and tessera.api <- shards <- router <- CLI.

Read from the source with ast, so a forbidden import fails here even on a path
no other test runs.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUR_PACKAGES = {"native", "shards", "router", "tessera"}

# What each part may import of ours ("tessera.api" is the wire definitions).
ALLOWED = {
    "native": {"native"},  # its own .pxd declarations
    "tessera/api": set(),
    "shards": {"native", "shards", "tessera.api"},
    "router": {"native", "router", "tessera.api"},
}


# Cython's `cimport` is not Python syntax: .pyx files are read line by line.
CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import|c?import\s+([\w.]+))", re.MULTILINE)


def our_imports(path: Path) -> set[str]:
    names = set()
    if path.suffix == ".pyx":
        names.update(a or b for a, b in CYTHON_IMPORT.findall(path.read_text()))
    else:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return {name for name in names if name.split(".")[0] in OUR_PACKAGES}


def sources(part: str):
    return sorted((ROOT / part).rglob("*.py")) + sorted((ROOT / part).rglob("*.pyx"))


def permitted(name: str, allowed: set[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_point_one_way(part):
    assert sources(part), f"no sources found under {part}/"
    for path in sources(part):
        for name in our_imports(path):
            if part == "tessera/api" and name.startswith("tessera.api"):
                continue
            assert permitted(name, ALLOWED[part]), f"{path.relative_to(ROOT)} imports {name}"
