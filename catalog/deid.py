"""De-identification of Arrow batches per column, and the k-anonymity check.

Actions per column:

- ``drop``: remove the column;
- ``mask``: replace every character but the last ``keep_last`` with '*';
- ``hash``: HMAC-SHA256 with the node's secret, first 16 bytes as hex, so equal
  values stay joinable within one node but cannot be reversed without the secret;
- ``generalize``: coordinates to the south-west corner of a grid cell of
  ``cell`` degrees, dates and timestamps to the first day of their month or
  year (``to``), numbers such as ages to bands of ``band`` (a string like
  '30-39');
- ``keep``: leave the column as it is.
"""

from __future__ import annotations

import hmac
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from citymesh.errors import InvalidInput

ACTIONS = ("drop", "mask", "hash", "generalize", "keep")
HASH_BYTES = 16


RULE_KEYS = {
    "drop": {"action"},
    "keep": {"action"},
    "hash": {"action"},
    "mask": {"action", "keep_last"},
    "generalize": {"action", "cell", "to", "band"},
}
GENERALIZE_UNITS = ("month", "year")


def check_rules(
    rules: dict[str, dict[str, Any]],
    columns: Iterable[str],
    types: dict[str, str] | None = None,
) -> None:
    """Raise InvalidInput for a rule that names an unknown column or is malformed.

    ``types`` maps column names to Arrow type names (``str(pa.DataType)``);
    with it, a ``generalize`` rule must also suit its column's type.
    """
    if not isinstance(rules, dict):
        raise InvalidInput(
            f"de-identification rules must be an object of column: rule, got {rules!r}"
        )
    known = set(columns)
    for column, rule in rules.items():
        if column not in known:
            raise InvalidInput(
                f"de-identification rule for unknown column {column!r}: the "
                f"dataset's columns are {sorted(known)!r}"
            )
        if not isinstance(rule, dict):
            raise InvalidInput(
                f"invalid de-identification rule {rule!r} for column {column!r}: "
                'give an object such as {"action": "hash"}'
            )
        action = rule.get("action")
        if action not in ACTIONS:
            raise InvalidInput(
                f"invalid de-identification action {action!r} for column "
                f"{column!r}: use one of {', '.join(ACTIONS)}"
            )
        unknown = sorted(set(rule) - RULE_KEYS[action])
        if unknown:
            allowed = sorted(RULE_KEYS[action] - {"action"}) or "none"
            raise InvalidInput(
                f"unknown options {unknown!r} in the {action} rule for column "
                f"{column!r}: the options of {action} are {allowed}"
            )
        if action == "mask":
            _check_count(rule, "keep_last", column, minimum=0)
        if action == "generalize":
            _check_generalize(rule, column, (types or {}).get(column))


def _check_count(rule: dict[str, Any], key: str, column: str, minimum: int) -> None:
    value = rule.get(key, minimum)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(
            f"invalid {key} {value!r} for column {column!r}: use a whole number "
            f"of {minimum} or more"
        )


def _check_generalize(
    rule: dict[str, Any], column: str, arrow_type: str | None
) -> None:
    options = [key for key in ("cell", "to", "band") if key in rule]
    if len(options) > 1:
        raise InvalidInput(
            f"the generalize rule for column {column!r} sets {options!r}: set one of "
            "cell (coordinates), to (dates) or band (numbers)"
        )
    if "cell" in rule:
        cell = rule["cell"]
        if (
            isinstance(cell, bool)
            or not isinstance(cell, int | float)
            or not math.isfinite(cell)
            or cell <= 0
        ):
            raise InvalidInput(
                f"invalid cell {cell!r} for column {column!r}: use a grid size in "
                "degrees above 0, such as 0.01"
            )
    if "to" in rule and rule["to"] not in GENERALIZE_UNITS:
        raise InvalidInput(
            f"invalid to {rule['to']!r} for column {column!r}: use "
            f"{' or '.join(GENERALIZE_UNITS)}"
        )
    if "band" in rule:
        _check_count(rule, "band", column, minimum=1)

    # With the column's type known, the options must suit it.
    if arrow_type is None:
        return
    numeric = arrow_type.startswith(("int", "uint", "float", "double", "decimal"))
    temporal = arrow_type.startswith(("timestamp", "date"))
    text = arrow_type in ("string", "large_string", "utf8", "large_utf8")

    if ("cell" in rule or "band" in rule) and not numeric:
        raise InvalidInput(
            f"column {column!r} has type {arrow_type}, but cell and band "
            "generalize numbers: use to for dates, or drop, mask or hash"
        )
    if "to" in rule and not (temporal or text):
        raise InvalidInput(
            f"column {column!r} has type {arrow_type}, but to generalizes dates: "
            "use cell or band for numbers"
        )
    if text and "to" not in rule:
        raise InvalidInput(
            f"column {column!r} contains text, which generalize cuts to an ISO date's "
            'month or year: set "to": "month" or "year" for date strings, or use '
            "drop, mask or hash for other text"
        )
    if not (numeric or temporal or text):
        raise InvalidInput(
            f"cannot generalize column {column!r} of type {arrow_type}: use drop, "
            "mask or hash for it"
        )


def _map_unique(values: pa.Array, function) -> pa.Array:
    """Apply a Python function once per distinct value, keeping nulls."""
    encoded = pc.dictionary_encode(values)
    dictionary = encoded.dictionary.to_pylist()
    mapped = pa.array([function(item) for item in dictionary], type=pa.string())
    return pc.take(mapped, encoded.indices)


def _on_distinct(values: pa.Array, function) -> pa.Array:
    """Apply a vectorized function to the distinct values only, keeping nulls.

    Columns of dates, flight numbers or codes repeat most values, so the work
    shrinks to the dictionary plus one take.
    """
    encoded = pc.dictionary_encode(values)
    return pc.take(function(encoded.dictionary), encoded.indices)


class Pseudonymizer:
    """HMAC-SHA256 pseudonyms with the node secret, remembered across batches.

    A column streams past in many batches that repeat most of their values;
    each distinct value is hashed once per stream. At most ``max_cached``
    values are remembered; past that, values are hashed again.
    """

    def __init__(self, secret: bytes, max_cached: int = 1_000_000) -> None:
        self._secret = secret
        self._max_cached = max_cached
        self._known: dict[Any, str] = {}

    def __call__(self, item: Any) -> str:
        known = self._known.get(item)
        if known is None:
            message = str(item).encode("utf-8")
            digest = hmac.digest(self._secret, message, "sha256")
            known = digest[:HASH_BYTES].hex()
            if len(self._known) < self._max_cached:
                self._known[item] = known
        return known

    def apply(self, values: pa.Array) -> pa.Array:
        """Return the pseudonyms of ``values`` as hex strings, nulls kept."""
        return _map_unique(values, self)


def hash_values(
    values: pa.Array, secret: bytes, pseudonyms: Pseudonymizer | None = None
) -> pa.Array:
    """Return HMAC-SHA256 pseudonyms of ``values`` as hex strings.

    Pass a ``pseudonyms`` object made with the same secret to reuse the
    pseudonyms of values seen in earlier batches.
    """
    return (pseudonyms or Pseudonymizer(secret)).apply(values)


def mask_values(values: pa.Array, keep_last: int = 0) -> pa.Array:
    """Return ``values`` as strings with all but the last ``keep_last`` chars '*'."""
    if pa.types.is_integer(values.type) or pa.types.is_string(values.type):
        return _on_distinct(values, lambda distinct: _mask(distinct, keep_last))
    return _mask(values, keep_last)


def _mask(values: pa.Array, keep_last: int) -> pa.Array:
    arrow_type = values.type
    if pa.types.is_integer(arrow_type):
        # Arrow's cast writes integers as Python's str() does.
        values = pc.cast(values, pa.string())
        arrow_type = values.type
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        length = pc.utf8_length(values)
        visible_tail = (
            pc.utf8_slice_codeunits(values, start=-keep_last)
            if keep_last
            else pc.utf8_slice_codeunits(values, start=0, stop=0)
        )
        hidden = pc.max_element_wise(
            pc.subtract(length, pc.utf8_length(visible_tail)), 0
        )
        stars = pc.binary_repeat(pa.scalar("*", values.type), hidden)
        masked = pc.binary_join_element_wise(
            stars, visible_tail, pa.scalar("", values.type)
        )
        return pc.cast(masked, pa.string())

    def mask(item: Any) -> str:
        text = str(item)
        kept = text[-keep_last:] if keep_last else ""
        return "*" * (len(text) - len(kept)) + kept

    return _map_unique(values, mask)


def generalize_values(values: pa.Array, rule: dict[str, Any]) -> pa.Array:
    """Coarsen coordinates, dates or numbers as the rule specifies."""
    arrow_type = values.type
    if "cell" in rule:
        cell = float(rule["cell"])
        numbers = pc.cast(values, pa.float64())
        cells = pc.floor(pc.divide(numbers, cell))
        return pc.round(pc.multiply(cells, cell), 6)
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        unit = rule.get("to", "month")
        return _on_distinct(
            values, lambda distinct: pc.floor_temporal(distinct, unit=unit)
        )
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        length = 4 if rule.get("to") == "year" else 7
        return _on_distinct(
            values, lambda distinct: pc.utf8_slice_codeunits(distinct, 0, length)
        )
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        band = int(rule.get("band", 10))
        return _map_unique(
            values,
            lambda item: (
                f"{int(item // band * band)}-{int(item // band * band) + band - 1}"
            ),
        )
    raise InvalidInput(
        f"cannot generalize a column of type {str(arrow_type)!r}: use drop, mask "
        "or hash for it"
    )


def deidentify_batch(
    batch: pa.RecordBatch,
    rules: dict[str, dict[str, Any]],
    secret: bytes,
    pseudonyms: Pseudonymizer | None = None,
) -> pa.RecordBatch:
    """Return ``batch`` with every rule applied; unnamed columns are kept.

    ``pseudonyms`` carries hashed values over from earlier batches of the
    same stream.
    """
    pseudonyms = pseudonyms or Pseudonymizer(secret)
    names, arrays = [], []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        rule = rules.get(name, {"action": "keep"})
        action = rule["action"]
        if action == "drop":
            continue
        if action == "hash":
            column = pseudonyms.apply(column)
        elif action == "mask":
            column = mask_values(column, int(rule.get("keep_last", 0)))
        elif action == "generalize":
            column = generalize_values(column, rule)
        names.append(name)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def deidentify(
    batches: Iterable[pa.RecordBatch], rules: dict[str, dict[str, Any]], secret: bytes
) -> Iterator[pa.RecordBatch]:
    """Apply ``rules`` to each batch as it streams past."""
    pseudonyms = Pseudonymizer(secret)
    for batch in batches:
        yield deidentify_batch(batch, rules, secret, pseudonyms)


@dataclass(frozen=True)
class KAnonymity:
    """Result of a k-anonymity check over quasi-identifier columns."""

    k: int
    smallest_group: int
    groups: int
    violating_groups: int
    violating_rows: int

    @property
    def ok(self) -> bool:
        return self.violating_groups == 0


def k_anonymity(
    batches: Iterable[pa.RecordBatch], quasi_identifiers: list[str], k: int
) -> KAnonymity:
    """Count rows per combination of quasi-identifier values; groups under k fail.

    Memory grows with the number of distinct combinations, not with rows.
    """
    if k < 1:
        raise InvalidInput(f"invalid k {k!r}: use 1 or more")
    counts: Counter = Counter()
    for batch in batches:
        table = pa.Table.from_batches([batch]).select(quasi_identifiers)
        grouped = table.group_by(quasi_identifiers, use_threads=False).aggregate(
            [([], "count_all")]
        )
        columns = [grouped.column(name).to_pylist() for name in quasi_identifiers]
        keys = zip(*columns, strict=True)
        for key, count in zip(
            keys, grouped.column("count_all").to_pylist(), strict=True
        ):
            counts[key] += count
    if not counts:
        return KAnonymity(k, 0, 0, 0, 0)
    small = [count for count in counts.values() if count < k]
    return KAnonymity(
        k=k,
        smallest_group=min(counts.values()),
        groups=len(counts),
        violating_groups=len(small),
        violating_rows=sum(small),
    )
