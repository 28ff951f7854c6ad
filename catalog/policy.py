"""The policy that decides whether and how data leaves its node, by grade.

- ``core``: never leaves its node in any form and takes part in no job.
- ``important``: only through federated training with secure aggregation, or
  as a de-identified extract that the provider's operator approved for this
  consumer and purpose.
- ``general`` (and its levels): federated training, or extracts within the
  dataset's allowed purposes and cities.

Every extract has the dataset's de-identification rules applied. A row filter
may not test a column that those rules change, because the filter would
reveal the raw values.

A dataset's ``policy`` dict may hold ``purposes`` and ``cities`` (lists; empty
or missing means any), ``deid`` ({column: rule}, see citymesh.catalog.deid),
``quasi_identifiers`` (list) and ``k`` (minimum group size of an extract).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from citymesh.catalog.codes import CodeList, shared_codes
from citymesh.catalog.deid import check_rules
from citymesh.catalog.models import DatasetEntry
from citymesh.catalog.pii import personal_columns
from citymesh.errors import InvalidInput, PolicyViolation

FILTER_OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")
POLICY_KEYS = ("purposes", "cities", "deid", "quasi_identifiers", "k")


def check_policy(policy: dict[str, Any], columns: list[dict[str, Any]]) -> None:
    """Raise InvalidInput unless ``policy`` is a valid policy for ``columns``.

    ``columns`` are the dataset's {"name", "type"} entries. A key outside
    POLICY_KEYS is rejected, because a misspelled key would restrict nothing.
    """
    if not isinstance(policy, dict):
        raise InvalidInput(f"a policy must be a JSON object, got {policy!r}")
    unknown = sorted(set(policy) - set(POLICY_KEYS))
    if unknown:
        raise InvalidInput(
            f"unknown policy keys {unknown!r}: a policy may set "
            f"{', '.join(POLICY_KEYS)}"
        )
    for key in ("purposes", "cities", "quasi_identifiers"):
        value = policy.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidInput(f"policy {key} must be a list of strings, got {value!r}")
    names = [column["name"] for column in columns]
    missing = [
        name for name in policy.get("quasi_identifiers", []) if name not in names
    ]
    if missing:
        raise InvalidInput(
            f"policy quasi_identifiers {missing!r} are not columns of the dataset: "
            f"its columns are {names!r}"
        )
    k = policy.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InvalidInput(f"policy k must be a whole number of 1 or more, got {k!r}")
    if k is not None and not policy.get("quasi_identifiers"):
        raise InvalidInput(
            f"policy k {k!r} needs quasi_identifiers: name the columns whose "
            "combinations must each cover at least k rows"
        )
    types = {column["name"]: column.get("type", "") for column in columns}
    check_rules(policy.get("deid", {}), names, types)


COMPRESSIONS = ("lz4", "zstd", "none")


@dataclass
class ExtractRequest:
    """A consumer's request for rows of one dataset.

    ``compression`` is the Arrow IPC buffer compression of the stream: lz4
    (the default), zstd or none.
    """

    dataset_id: str
    purpose: str
    columns: list[str] | None = None
    filter: list[list[Any]] = field(default_factory=list)
    compression: str = "lz4"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExtractRequest:
        """Build a request from its JSON form, checking field types."""
        if not isinstance(data, dict):
            raise InvalidInput(
                f"an extract request must be a JSON object, got {data!r}"
            )
        dataset_id = data.get("dataset_id")
        purpose = data.get("purpose")
        if not isinstance(dataset_id, str) or not dataset_id:
            raise InvalidInput(f"invalid dataset_id {dataset_id!r}: give a catalog id")
        if not isinstance(purpose, str) or not purpose:
            raise InvalidInput(
                f"invalid purpose {purpose!r}: state why the data is requested"
            )
        columns = data.get("columns")
        if columns is not None and (
            not isinstance(columns, list)
            or not all(isinstance(c, str) for c in columns)
        ):
            raise InvalidInput(f"invalid columns {columns!r}: give a list of names")
        row_filter = data.get("filter") or []
        if not isinstance(row_filter, list):
            raise InvalidInput(
                f"invalid filter {row_filter!r}: give a list of [column, operator, "
                "value] conditions"
            )
        compression = data.get("compression") or "lz4"
        if compression not in COMPRESSIONS:
            raise InvalidInput(
                f"invalid compression {compression!r}: use one of "
                f"{', '.join(COMPRESSIONS)}"
            )
        return cls(dataset_id, purpose, columns, row_filter, compression)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset_id,
            "purpose": self.purpose,
            "columns": self.columns,
            "filter": self.filter,
            "compression": self.compression,
        }


@dataclass(frozen=True)
class ExtractPlan:
    """The columns, filter and de-identification rules of an allowed extract."""

    columns: list[str]
    expression: pc.Expression | None
    rules: dict[str, dict[str, Any]]
    quasi_identifiers: list[str]
    k: int | None


def grade_family(entry: DatasetEntry, codes: CodeList | None = None) -> str:
    """Return 'general', 'important' or 'core' for a dataset."""
    return (codes or shared_codes()).grade_family(entry.grade)


def check_training(entry: DatasetEntry, *, secure_aggregation: bool) -> None:
    """Raise PolicyViolation unless the dataset may join a federated job."""
    family = grade_family(entry)
    if family == "core":
        raise PolicyViolation(
            f"dataset {entry.id!r} is graded core: core data takes part in no "
            "job; remove it from the job spec"
        )
    if family == "important" and not secure_aggregation:
        raise PolicyViolation(
            f"dataset {entry.id!r} is graded important: it may join a federated "
            "job only with secure aggregation; enable it in the job spec"
        )


def plan_extract(
    entry: DatasetEntry,
    request: ExtractRequest,
    *,
    consumer_city: str,
    approved: bool,
) -> ExtractPlan:
    """Check an extract request against the dataset's grade and policy.

    Returns the plan to execute or raises PolicyViolation saying which rule
    rejected the request, and InvalidInput for a malformed request.
    """
    family = grade_family(entry)
    if family == "core":
        raise PolicyViolation(
            f"dataset {entry.id!r} is graded core: core data never leaves its node "
            "in any form"
        )
    policy = entry.policy or {}
    purposes = policy.get("purposes") or []
    if purposes and request.purpose not in purposes:
        raise PolicyViolation(
            f"purpose {request.purpose!r} is not allowed for dataset {entry.id!r}: "
            f"allowed purposes are {purposes!r}"
        )
    cities = policy.get("cities") or []
    if cities and consumer_city not in cities:
        raise PolicyViolation(
            f"city {consumer_city!r} may not receive dataset {entry.id!r}: allowed "
            f"cities are {cities!r}"
        )
    available = [column["name"] for column in entry.columns]
    columns = request.columns or available
    unknown = [name for name in columns if name not in available]
    if unknown:
        raise InvalidInput(
            f"dataset {entry.id!r} has no columns {unknown!r}: its columns are "
            f"{available!r}"
        )
    rules = dict(policy.get("deid") or {})
    types = {column["name"]: column.get("type", "") for column in entry.columns}
    check_rules(rules, available, types)
    if family == "important":
        if not approved:
            raise PolicyViolation(
                f"dataset {entry.id!r} is graded important: an extract needs an "
                f"approval by the provider's operator for this consumer and purpose "
                f"{request.purpose!r} (citymesh exchange approve)"
            )
        uncovered = [
            name
            for name in personal_columns(entry.pii or [])
            if name in columns and rules.get(name, {}).get("action", "keep") == "keep"
        ]
        if uncovered:
            raise PolicyViolation(
                f"dataset {entry.id!r} is graded important and leaves only "
                f"de-identified, but personal columns {uncovered!r} have no "
                "de-identification rule; set one in the dataset policy"
            )
    expression = filter_expression(request.filter, available, rules)
    quasi = [name for name in policy.get("quasi_identifiers") or [] if name in columns]
    k = policy.get("k")
    return ExtractPlan(columns, expression, rules, quasi, int(k) if k else None)


def filter_expression(
    conditions: list[list[Any]],
    available: list[str],
    rules: dict[str, dict[str, Any]],
) -> pc.Expression | None:
    """Build an Arrow filter from [column, operator, value] conditions (AND)."""
    expression = None
    for condition in conditions:
        if not isinstance(condition, list | tuple) or len(condition) != 3:
            raise InvalidInput(
                f"invalid filter condition {condition!r}: use [column, operator, value]"
            )
        column, operator, value = condition
        if column not in available:
            raise InvalidInput(
                f"filter column {column!r} is not in the dataset: its columns are "
                f"{available!r}"
            )
        if rules.get(column, {}).get("action", "keep") != "keep":
            raise PolicyViolation(
                f"a filter on de-identified column {column!r} would reveal its raw "
                "values: filter on another column"
            )
        if operator not in FILTER_OPERATORS:
            raise InvalidInput(
                f"invalid filter operator {operator!r}: use one of "
                f"{', '.join(FILTER_OPERATORS)}"
            )
        term = _term(pc.field(column), operator, value)
        expression = term if expression is None else expression & term
    return expression


def _term(field_ref: pc.Expression, operator: str, value: Any) -> pc.Expression:
    if operator in ("in", "not in"):
        if not isinstance(value, list):
            raise InvalidInput(
                f"operator {operator!r} needs a list value, got {value!r}"
            )
        term = field_ref.isin(pa.array(value))
        return ~term if operator == "not in" else term
    if isinstance(value, list | dict):
        raise InvalidInput(f"operator {operator!r} needs a single value, got {value!r}")
    return {
        "==": field_ref == value,
        "!=": field_ref != value,
        "<": field_ref < value,
        "<=": field_ref <= value,
        ">": field_ref > value,
        ">=": field_ref >= value,
    }[operator]
