"""The shared code list: COFOG functions, EU data themes and data grades.

The list ships as ``data/codes.json``. Its ``sha256`` field is the SHA-256 of the
document without that field, serialized as canonical JSON (sorted keys, no spaces,
UTF-8), so two nodes that report the same version and digest use the same list.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from citymesh.errors import InvalidInput

TIERS = ("raw", "thematic", "topic")


class UnknownCode(InvalidInput):
    """A classification code, grade or tier is not in the shared code list."""


@dataclass(frozen=True)
class Code:
    """One COFOG division, group or class with its EU data themes."""

    code: str
    name: str
    level: str
    parent: str | None
    themes: tuple[str, ...]


@dataclass(frozen=True)
class Grade:
    """One data grade; ``rank`` orders grades from least to most sensitive."""

    id: str
    name: str
    parent: str | None
    rank: int
    description: str


def canonical_digest(document: dict[str, Any]) -> str:
    """Return the hex SHA-256 of ``document`` without its ``sha256`` field."""
    body = {key: value for key, value in document.items() if key != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CodeList:
    """A loaded, digest-checked code list with look-ups by code and grade."""

    def __init__(self, document: dict[str, Any]) -> None:
        digest = canonical_digest(document)
        if document.get("sha256") != digest:
            raise InvalidInput(
                f"code list digest mismatch: the file states {document.get('sha256')!r}"
                f" but its content hashes to {digest!r}; restore the file or "
                "regenerate its sha256 field"
            )
        self.document = document
        self.version: str = document["version"]
        self.sha256: str = digest
        self.themes: dict[str, str] = dict(document["theme_scheme"]["themes"])
        self.codes: dict[str, Code] = {
            item["code"]: Code(
                code=item["code"],
                name=item["name"],
                level=item["level"],
                parent=item["parent"],
                themes=tuple(item["themes"]),
            )
            for item in document["codes"]
        }
        self.grades: dict[str, Grade] = {
            item["id"]: Grade(
                id=item["id"],
                name=item["name"],
                parent=item["parent"],
                rank=item["rank"],
                description=item["description"],
            )
            for item in document["grades"]
        }

    def code(self, code: str) -> Code:
        """Return the entry for ``code`` or raise UnknownCode."""
        try:
            return self.codes[code]
        except KeyError:
            raise UnknownCode(
                f"unknown classification code {code!r}: use a COFOG division, "
                "group or class from the shared code list, e.g. '04.5.1' for "
                "road transport"
            ) from None

    def grade(self, grade: str) -> Grade:
        """Return the entry for ``grade`` or raise UnknownCode."""
        try:
            return self.grades[grade]
        except KeyError:
            known = ", ".join(sorted(self.grades))
            raise UnknownCode(
                f"unknown data grade {grade!r}: use one of {known}"
            ) from None

    def grade_family(self, grade: str) -> str:
        """Return the top grade ('general', 'important' or 'core') of ``grade``."""
        entry = self.grade(grade)
        while entry.parent is not None:
            entry = self.grades[entry.parent]
        return entry.id

    def children(self, code: str) -> list[Code]:
        """Return the direct sub-codes of ``code`` in code order."""
        self.code(code)
        return [item for item in self.codes.values() if item.parent == code]

    def descendants(self, prefix: str) -> list[Code]:
        """Return ``prefix`` and every code below it."""
        return [
            item
            for item in self.codes.values()
            if item.code == prefix or item.code.startswith(prefix + ".")
        ]

    def info(self) -> dict[str, str]:
        """Return the version and digest that nodes compare before they sync."""
        return {"version": self.version, "sha256": self.sha256}


def load_code_list(path: Path | None = None) -> CodeList:
    """Load and check a code list file; the packaged list when ``path`` is None."""
    if path is None:
        return shared_codes()
    return CodeList(json.loads(Path(path).read_text(encoding="utf-8")))


@lru_cache(maxsize=1)
def shared_codes() -> CodeList:
    """Return the packaged code list, loaded once per process."""
    text = (resources.files("citymesh.catalog") / "data" / "codes.json").read_text(
        encoding="utf-8"
    )
    return CodeList(json.loads(text))


def check_tier(tier: str) -> str:
    """Return ``tier`` if it is a known tier, else raise UnknownCode."""
    if tier not in TIERS:
        raise UnknownCode(f"unknown tier {tier!r}: use one of {', '.join(TIERS)}")
    return tier
