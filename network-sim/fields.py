"""Typed access to TOML tables that reports errors with the key's full path."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from citymesh.errors import InvalidInput


class ScenarioError(InvalidInput):
    """A scenario file is missing, unreadable or breaks a rule of the format."""


_MISSING = object()


class Table:
    """A TOML table with its path in the file (``cities[0].districts[1]``).

    Each getter checks the value's type and range and raises ScenarioError
    naming the path. ``finish`` rejects keys that no getter read, which catches
    misspelt keys.
    """

    def __init__(self, data: Any, path: str, source: str) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(
                f"{source}: {path or 'the file'} must be a table, got {data!r}"
            )
        self.data = data
        self.path = path
        self.source = source
        self._read: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, rule: str, value: Any) -> ScenarioError:
        return ScenarioError(
            f"{self.source}: {self.key_path(key)} {rule}, got {value!r}"
        )

    def has(self, key: str) -> bool:
        """Return whether the key is present, and accept it as a known key."""
        self._read.add(key)
        return key in self.data

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise ScenarioError(
                f"{self.source}: {self.key_path(key)} is missing; add it"
            )
        return default

    def text(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "must be a non-empty string", value)
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: float | None = 0.0,
        positive: bool = False,
        maximum: float | None = None,
    ) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, "must be a number", value)
        value = float(value)
        if not math.isfinite(value):
            raise self.error(key, "must be finite", value)
        if positive and value <= 0:
            raise self.error(key, "must be greater than 0", value)
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum:g}", value)
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum:g}", value)
        return value

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int = 0) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, "must be an integer", value)
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}", value)
        return value

    def flag(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false", value)
        return value

    def texts(self, key: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self._get(key, default)
        if not isinstance(value, list | tuple) or not all(
            isinstance(item, str) and item for item in value
        ):
            raise self.error(key, "must be a list of non-empty strings", value)
        return tuple(value)

    def numbers(self, key: str, default: Any = _MISSING) -> tuple[float, ...]:
        value = self._get(key, default)
        if not isinstance(value, list | tuple) or not all(
            isinstance(item, int | float)
            and not isinstance(item, bool)
            and math.isfinite(item)
            and item >= 0
            for item in value
        ):
            raise self.error(key, "must be a list of numbers >= 0", value)
        return tuple(float(item) for item in value)

    def work(self, key: str) -> dict[str, float]:
        """Read a ``{kind = time}`` table of positive service times."""
        value = self._get(key, _MISSING)
        if not isinstance(value, dict) or not value:
            raise self.error(key, "must be a non-empty table like {gpu = 8}", value)
        work = {}
        for kind, time in value.items():
            if isinstance(time, bool) or not isinstance(time, int | float) or time <= 0:
                raise self.error(
                    f"{key}.{kind}", "must be a number greater than 0", time
                )
            work[kind] = float(time)
        return work

    def table(self, key: str, default: Any = _MISSING) -> Table:
        value = self._get(key, default)
        return Table(value, self.key_path(key), self.source)

    def tables(self, key: str, default: Any = _MISSING) -> list[Table]:
        value = self._get(key, default)
        if not isinstance(value, list):
            raise self.error(key, "must be an array of tables", value)
        return [
            Table(item, f"{self.key_path(key)}[{index}]", self.source)
            for index, item in enumerate(value)
        ]

    def check(self, ok: bool, key: str, rule: str, value: Any) -> None:
        if not ok:
            raise self.error(key, rule, value)

    def finish(self, ignore: Callable[[str], bool] | None = None) -> None:
        unknown = sorted(
            key
            for key in self.data
            if key not in self._read and not (ignore and ignore(key))
        )
        if unknown:
            allowed = ", ".join(sorted(self._read))
            raise ScenarioError(
                f"{self.source}: unknown key {self.key_path(unknown[0])!r}; "
                f"allowed here: {allowed}"
            )
