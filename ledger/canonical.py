"""Canonical JSON per RFC 8785 (JSON Canonicalization Scheme, JCS).

Usage events are hashed and signed as canonical JSON, so one event has exactly one
byte form on every node and in every language with a JCS library. JCS fits because
events are JSON objects already, it needs no schema, and it stays readable in exported
segments. The rules this module applies:

- object keys sorted by their UTF-16 code units, no whitespace, UTF-8 output;
- strings escaped as RFC 8785 section 3.2.2.2 specifies: ``"`` and ``\\``, the control
  characters U+0000 to U+001F (``\\b \\t \\n \\f \\r`` short, others ``\\u00xx``), every
  other character written as itself;
- integers within the I-JSON safe range (absolute value at most 2**53 - 1), because
  JCS numbers are IEEE 754 doubles and larger integers would lose digits;
- floats finite only, written as ECMAScript ``Number.prototype.toString`` writes them
  (RFC 8785 section 3.2.2.3), so ``1e16`` is ``10000000000000000`` and ``1e-7`` is
  ``1e-7``;
- ``true``, ``false``, ``null``, arrays from lists and tuples.

Anything else (bytes, sets, NaN, non-string keys, lone surrogates) raises InvalidInput.
Usage events keep time as integer milliseconds, so floats only appear in free-form
``detail`` values.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from citymesh.errors import InvalidInput

MAX_SAFE_INTEGER = 2**53 - 1

_dump_string = json.JSONEncoder(ensure_ascii=False).encode
_dump_simple = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
).encode


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` to RFC 8785 canonical JSON bytes (UTF-8).

    Raises InvalidInput naming the JSON path of the first value JCS cannot represent.
    """
    try:
        needs_slow_path = _check(value)
    except _Unrepresentable as exc:
        path = "$" + "".join(exc.path)
        raise InvalidInput(f"{exc.reason} at {path}: {exc.fix}") from None
    try:
        if needs_slow_path:
            text = _encode(value)
        else:
            # For str, int, bool and None, and keys inside the Basic Multilingual Plane,
            # the standard encoder already writes JCS: its string escapes are the JCS
            # escapes and code point order equals UTF-16 order there.
            text = _dump_simple(value)
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"canonical JSON rejects a string with a lone surrogate "
            f"({exc.object[exc.start : exc.end]!r}): encode text as valid Unicode"
        ) from exc


def json_string(text: str) -> str:
    """Return ``text`` as a JCS string literal (quotes included)."""
    return _dump_string(text)


def format_number(value: float) -> str:
    """Format a finite float as ECMAScript ``Number.prototype.toString`` does."""
    if not math.isfinite(value):
        raise InvalidInput(
            f"canonical JSON has no form for {value!r}: use a finite number or a string"
        )
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr() yields the shortest digit string that round-trips, as ECMAScript requires.
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    all_digits = "".join(map(str, digit_tuple))
    digits = all_digits.rstrip("0")
    exponent += len(all_digits) - len(digits)
    k = len(digits)
    n = exponent + k  # the value is 0.<digits> * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        power = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"
    return sign + text


class _Unrepresentable(Exception):
    """A value JCS cannot write; ``path`` collects the keys on the way out."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix
        self.path: list[str] = []


def _check(value: Any) -> bool:
    """Validate ``value`` for JCS; return True if it contains floats or astral keys."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return False
    if kind is int or (isinstance(value, int) and not isinstance(value, bool)):
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return False
        raise _Unrepresentable(
            f"canonical JSON integers must be within +-(2**53 - 1), got {value!r}",
            "store larger numbers as strings",
        )
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Unrepresentable(
                f"canonical JSON has no form for {value!r}",
                "use a finite number or a string",
            )
        return True
    if isinstance(value, str):
        return False
    if isinstance(value, dict):
        slow = False
        for key, item in value.items():
            if type(key) is not str:
                raise _Unrepresentable(
                    f"canonical JSON object keys must be strings, got {key!r}",
                    "convert the key to a string",
                )
            if not key.isascii() and max(key) > "\uffff":
                slow = True
            try:
                slow = _check(item) or slow
            except _Unrepresentable as exc:
                exc.path.insert(0, f".{key}")
                raise
        return slow
    if isinstance(value, (list, tuple)):
        slow = False
        for index, item in enumerate(value):
            try:
                slow = _check(item) or slow
            except _Unrepresentable as exc:
                exc.path.insert(0, f"[{index}]")
                raise
        return slow
    raise _Unrepresentable(
        f"canonical JSON has no form for {type(value).__name__} value {value!r}",
        "use str, int, float, bool, None, list or dict",
    )


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _encode(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _dump_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, dict):
        members = sorted(value.items(), key=lambda item: _utf16_key(item[0]))
        body = ",".join(f"{_dump_string(k)}:{_encode(v)}" for k, v in members)
        return "{" + body + "}"
    return "[" + ",".join(_encode(item) for item in value) + "]"
