"""The components import one another in one direction only."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FOLDERS = {
    "catalog": "catalog",
    "netsim": "network-sim",
    "contracts": "contracts",
    "ledger": "ledger",
    "federation": "federation",
    "incentives": "incentives",
    "node": "node",
}

# Every component may import citymesh.errors and the top-level package itself.
ALLOWED = {
    "catalog": {"catalog"},
    "netsim": {"netsim"},
    "contracts": {"contracts"},
    "ledger": {"ledger", "contracts"},
    "federation": {"federation", "catalog", "ledger", "contracts"},
    "incentives": {"incentives", "ledger", "contracts"},
    "node": {"node", "catalog", "ledger", "federation", "incentives", "contracts"},
}
SHARED = {"errors", ""}


def _imported_components(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "citymesh":
            found.add(parts[1] if len(parts) > 1 else "")
    return found


@pytest.mark.parametrize("component", sorted(FOLDERS))
def test_component_imports_point_one_way(component):
    folder = ROOT / FOLDERS[component]
    for path in sorted(folder.rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        used = _imported_components(path) - SHARED
        forbidden = used - ALLOWED[component]
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


@pytest.mark.parametrize("component", sorted(FOLDERS))
def test_component_imports_alone(component):
    result = subprocess.run(
        [sys.executable, "-c", f"import citymesh.{component}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
