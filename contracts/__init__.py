"""Solidity contracts of the citymesh ledger and their compiled artifacts.

The sources are in src/, and artifacts/<Name>.json contains each contract's ABI and
bytecode as built by `python -m citymesh.contracts.build`. The artifacts ship as package
data, so deploying and calling the contracts needs no compiler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from citymesh.errors import NotFound

CONTRACT_NAMES = ("NodeRegistry", "UsageAnchor", "CreditToken", "CodeListRegistry")


@dataclass(frozen=True)
class Artifact:
    """A compiled contract: its ABI, creation bytecode and build provenance."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # creation code, 0x-prefixed hex
    deployed_bytecode: str = ""  # runtime code, 0x-prefixed hex
    compiler: str = ""  # solc version string
    source_hash: str = ""  # "sha256:<hex>" over the contract's source files
    sources: dict[str, str] = field(default_factory=dict)  # path -> sha256 hex


def artifact_names() -> list[str]:
    """Return the names of the packaged artifacts, sorted."""
    folder = resources.files(__name__) / "artifacts"
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    )


def load_artifact(name: str) -> Artifact:
    """Read the packaged artifact of contract `name`, for example "UsageAnchor"."""
    resource = resources.files(__name__) / "artifacts" / f"{name}.json"
    if not name.isidentifier() or not resource.is_file():
        raise NotFound(
            f"no compiled artifact for contract {name!r}; "
            f"expected one of {artifact_names()!r}"
        )
    data = json.loads(resource.read_text(encoding="utf-8"))
    return Artifact(
        name=data["contractName"],
        abi=data["abi"],
        bytecode=data["bytecode"],
        deployed_bytecode=data["deployedBytecode"],
        compiler=data["compiler"]["version"],
        source_hash=data["sourceHash"],
        sources=data["sources"],
    )
