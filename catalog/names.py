"""Dataset names and the paths they map to inside a node's data folder."""

from __future__ import annotations

import re
from pathlib import Path

from citymesh.errors import InvalidInput

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class UnsafeName(InvalidInput):
    """A dataset name is malformed or would resolve outside the data folder."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid dataset name, else raise UnsafeName.

    A valid name is 1-128 characters from letters, digits, '.', '_' and '-',
    starts with a letter or digit and contains no '..', so it has no path
    separator and cannot climb out of the data folder.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise UnsafeName(
            f"invalid dataset name {name!r}: use 1-128 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit and without '..' or '/', "
            "so the dataset stays inside the node's data folder"
        )
    return name


def dataset_path(data_dir: Path, name: str, suffix: str = ".parquet") -> Path:
    """Return the file path of dataset ``name`` inside ``data_dir``.

    Raises UnsafeName if the name is invalid or the resolved path (after
    symbolic links) is not inside ``data_dir``.
    """
    check_name(name)
    root = Path(data_dir).resolve()
    path = (root / f"{name}{suffix}").resolve()
    if path.parent != root:
        raise UnsafeName(
            f"dataset name {name!r} resolves to {str(path)!r}, outside the data "
            f"folder {str(root)!r}; choose another name or remove the symbolic link"
        )
    return path


def resolve_inside(data_dir: Path, relative: str) -> Path:
    """Resolve a relative path from a request strictly inside ``data_dir``."""
    root = Path(data_dir).resolve()
    candidate = Path(relative)
    if candidate.is_absolute():
        raise UnsafeName(
            f"path {relative!r} is absolute: give a path relative to the data folder"
        )
    path = (root / candidate).resolve()
    if path != root and root not in path.parents:
        raise UnsafeName(
            f"path {relative!r} resolves outside the data folder {str(root)!r}; "
            "give a path inside it"
        )
    return path
