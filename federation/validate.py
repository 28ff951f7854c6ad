"""Check a job spec against the catalog entries of its datasets before it starts.

``job_problems`` lists every problem it finds, so one run of ``citymesh job
validate`` shows them all. It checks for an unknown dataset, a dataset of
another city, a column the job needs that a city lacks, and a column whose type
differs between cities. It also checks each grade against the job's privacy
mode (the rule is ``citymesh.catalog.policy.check_training``) and the privacy
spend against the budget.
"""

from __future__ import annotations

from collections.abc import Mapping

from citymesh.catalog.models import DatasetEntry
from citymesh.catalog.policy import check_training
from citymesh.errors import InvalidInput, PolicyViolation

from .privacy import planned_epsilon
from .spec import JobSpec

# Derived features and the source columns each one can be computed from.
DERIVED_SOURCES = {
    "weekday": ("year", "month", "day"),
    "hour": ("sched_dep_time",),
}


def needed_columns(spec: JobSpec, available: set[str]) -> set[str]:
    """Return the source columns the job reads from a table with ``available``."""
    needed = {spec.target.column}
    for column in spec.features.categorical + spec.features.numeric:
        if column in available or column not in DERIVED_SOURCES:
            needed.add(column)
        else:
            needed.update(DERIVED_SOURCES[column])
    return needed


def job_problems(
    spec: JobSpec, entries: Mapping[str, DatasetEntry | None]
) -> list[str]:
    """Return every problem of ``spec`` given the catalog entry found per city.

    ``entries`` maps each city of ``spec.datasets`` to its catalog entry, or to
    None when the catalog has no dataset with that id.
    """
    problems: list[str] = []
    if not spec.datasets:
        problems.append("the job names no datasets; add a [datasets] table")
    if len(spec.datasets) < spec.min_nodes:
        problems.append(
            f"min_nodes = {spec.min_nodes} but the job names only "
            f"{len(spec.datasets)} dataset(s)"
        )

    types: dict[str, dict[str, str]] = {}
    for city, dataset_id in sorted(spec.datasets.items()):
        entry = entries.get(city)
        if entry is None:
            problems.append(f"dataset {dataset_id!r} of city {city!r} not found")
            continue
        if entry.id != dataset_id:
            problems.append(
                f"city {city!r}: catalog returned dataset {entry.id!r}, "
                f"expected {dataset_id!r}"
            )
        if entry.city != city:
            problems.append(
                f"dataset {dataset_id!r} belongs to city {entry.city!r}, not {city!r}"
            )
        columns = {str(c["name"]): str(c.get("type", "")) for c in entry.columns}
        for column in sorted(needed_columns(spec, set(columns)) - set(columns)):
            what = "target column" if column == spec.target.column else "column"
            problems.append(f"{what} {column!r} missing in dataset {dataset_id!r}")
        for column in needed_columns(spec, set(columns)) & set(columns):
            types.setdefault(column, {})[city] = columns[column]
        try:
            check_training(entry, secure_aggregation=spec.privacy.mode == "secagg")
        except PolicyViolation as exc:
            problems.append(str(exc))

    for column, by_city in sorted(types.items()):
        if len(set(by_city.values())) > 1:
            listed = ", ".join(f"{t} in {c}" for c, t in sorted(by_city.items()))
            problems.append(f"column {column!r} has different types: {listed}")

    if spec.privacy.mode == "secagg" and spec.min_nodes < 2:
        problems.append(
            f"secure aggregation needs min_nodes >= 2, got {spec.min_nodes}: the "
            "sum of one update is the update itself"
        )
    try:
        epsilon = planned_epsilon(spec)
    except InvalidInput as exc:
        problems.append(str(exc))
    else:
        budget = spec.privacy.epsilon_budget
        if budget is not None and epsilon > budget:
            problems.append(
                f"the job would spend epsilon {epsilon:.3f}, above its budget "
                f"{budget:.3f}"
            )
    return problems


def validate_job(spec: JobSpec, entries: Mapping[str, DatasetEntry | None]) -> None:
    """Raise InvalidInput listing every problem of the job, or return None."""
    problems = job_problems(spec, entries)
    if problems:
        listed = "\n".join(f"- {p}" for p in problems)
        raise InvalidInput(f"job {spec.id!r} is invalid:\n{listed}")
