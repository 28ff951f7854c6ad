"""A city's local classification codes and their mapping to the shared codes.

A mapping file is JSON::

    {"city": "ewr", "code_list_version": "1.0.0", "allow_many_to_one": false,
     "mappings": [{"local": "TR-AIR", "target": "04.5.4", "label": "Airports"},
                  {"local": "TR-AIR-CARGO", "target": "TR-AIR"}]}

A target is a shared code or another local code, so local codes may form a
hierarchy. Validation reports every problem at once. The problems are an
unknown target, a local code that is also a shared code, a local code listed
twice, and a cycle among local codes. Two local codes that map directly onto
one shared code are a problem too, unless ``allow_many_to_one`` is true.
Local codes that reach a shared code through another local code do not count
for that rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citymesh.catalog.codes import CodeList, shared_codes
from citymesh.errors import InvalidInput


class InvalidMapping(InvalidInput):
    """A local code mapping file breaks one or more rules."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "invalid local code mapping: " + "; ".join(problems) + "; fix the file"
        )


@dataclass(frozen=True)
class CodeMapping:
    """A validated mapping from local codes to shared codes."""

    city: str
    targets: dict[str, str]
    labels: dict[str, str]
    resolved: dict[str, str]

    def to_shared(self, code: str) -> str:
        """Return the shared code for a local or shared ``code``."""
        return self.resolved.get(code, code)

    def local_codes_for(self, shared_prefix: str) -> list[str]:
        """Return the local codes whose shared code falls under ``shared_prefix``."""
        return sorted(
            local
            for local, shared in self.resolved.items()
            if shared == shared_prefix or shared.startswith(shared_prefix + ".")
        )


def validate_mapping(
    document: dict[str, Any], codes: CodeList | None = None
) -> CodeMapping:
    """Check a mapping document and return it resolved; raise InvalidMapping."""
    codes = codes or shared_codes()
    problems: list[str] = []
    version = document.get("code_list_version")
    if version is not None and version != codes.version:
        problems.append(
            f"the file maps onto code list version {version!r} but this node uses "
            f"{codes.version!r}"
        )
    targets: dict[str, str] = {}
    labels: dict[str, str] = {}
    for item in document.get("mappings", []):
        local, target = item.get("local"), item.get("target")
        if not isinstance(local, str) or not isinstance(target, str) or not local:
            problems.append(f"entry {item!r} needs string 'local' and 'target'")
            continue
        if local in codes.codes:
            problems.append(f"local code {local!r} is also a shared code")
        if local in targets:
            problems.append(f"local code {local!r} is listed twice")
        targets[local] = target
        labels[local] = str(item.get("label", ""))
    for local, target in targets.items():
        if target not in targets and target not in codes.codes:
            problems.append(
                f"local code {local!r} maps to {target!r}, which is neither a shared "
                "nor a local code"
            )
    resolved = _resolve(targets, codes, problems)
    if not document.get("allow_many_to_one", False):
        direct: dict[str, list[str]] = {}
        for local, target in targets.items():
            if target in codes.codes:
                direct.setdefault(target, []).append(local)
        for shared, locals_ in sorted(direct.items()):
            if len(locals_) > 1:
                problems.append(
                    f"local codes {sorted(locals_)!r} all map onto shared code "
                    f"{shared!r}; set allow_many_to_one or merge them"
                )
    if problems:
        raise InvalidMapping(problems)
    return CodeMapping(str(document.get("city", "")), targets, labels, resolved)


def _resolve(
    targets: dict[str, str], codes: CodeList, problems: list[str]
) -> dict[str, str]:
    resolved: dict[str, str] = {}
    reported: set[frozenset[str]] = set()
    for start in targets:
        path = [start]
        current = targets[start]
        while current in targets and current not in path:
            path.append(current)
            current = targets[current]
        if current in path:
            cycle = path[path.index(current) :]
            key = frozenset(cycle)
            if key not in reported:
                reported.add(key)
                problems.append(
                    "local codes form a cycle: " + " -> ".join(cycle + [current])
                )
            continue
        if current in codes.codes:
            resolved[start] = current
    return resolved


def load_mapping(path: Path, codes: CodeList | None = None) -> CodeMapping:
    """Read and validate a mapping file."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InvalidMapping([f"{str(path)!r} is not valid JSON: {error}"]) from None
    if not isinstance(document, dict):
        raise InvalidMapping([f"{str(path)!r} must contain a JSON object"])
    return validate_mapping(document, codes)
