"""Derived datasets and their lineage: parents, transform, children.

A derived dataset (tier ``thematic`` or ``topic``) is built from catalog
entries with a transform spec, a JSON object applied in this order::

    {"filter": [[column, operator, value], ...],
     "select": [column, ...],
     "group_by": [column, ...],
     "aggregate": [[column, function], ...]}

``function`` is an Arrow hash aggregation such as "count", "sum", "mean",
"min", "max" or "count_distinct". The derived dataset takes the most sensitive
grade among its parents unless a more sensitive one is given, and the spec is
stored with the entry as its ``transform``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from citymesh.catalog.codes import shared_codes
from citymesh.catalog.ingest import ingest_file
from citymesh.catalog.models import DatasetEntry
from citymesh.catalog.names import dataset_path
from citymesh.catalog.policy import filter_expression
from citymesh.catalog.store import CatalogStore
from citymesh.errors import InvalidInput, PolicyViolation

AGGREGATIONS = ("count", "sum", "mean", "min", "max", "count_distinct", "stddev")


@dataclass
class LineageGraph:
    """Datasets linked to one dataset through parents and children."""

    root: str
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "nodes": self.nodes,
            "edges": [
                {"parent": parent, "child": child, "transform": transform}
                for parent, child, transform in self.edges
            ],
        }


def lineage(store: CatalogStore, dataset_id: str) -> LineageGraph:
    """Return the ancestors and descendants of ``dataset_id``."""
    entries = {entry.id: entry for entry in store.all()}
    if dataset_id not in entries:
        store.get(dataset_id)
    children: dict[str, list[str]] = {}
    for entry in entries.values():
        for parent in entry.parents or []:
            children.setdefault(parent, []).append(entry.id)
    graph = LineageGraph(dataset_id)
    edges: set[tuple[str, str, str]] = set()
    _walk(dataset_id, entries, lambda e: e.parents or [], graph, edges, up=True)
    _walk(dataset_id, entries, lambda e: children.get(e.id, []), graph, edges, up=False)
    graph.edges = sorted(edges)
    return graph


def _walk(start, entries, neighbours, graph, edges, *, up: bool) -> None:  # noqa: ANN001
    pending = [start]
    seen = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        entry = entries.get(current)
        graph.nodes[current] = _node(entry) if entry else {"missing": True}
        if entry is None:
            continue
        for other in neighbours(entry):
            child = current if up else other
            parent = other if up else current
            transform = entries[child].transform if child in entries else ""
            edges.add((parent, child, transform))
            pending.append(other)


def _node(entry: DatasetEntry) -> dict[str, Any]:
    return {
        "tier": entry.tier,
        "code": entry.code,
        "grade": entry.grade,
        "title": entry.title,
        "rows": entry.rows,
    }


def render_lineage(graph: LineageGraph) -> str:
    """Render the graph as text, one 'parent -> child  [transform]' line per edge."""
    lines = [f"lineage of {graph.root}"]
    for dataset_id, node in sorted(graph.nodes.items()):
        if node.get("missing"):
            lines.append(f"  {dataset_id}: missing from this catalog")
        else:
            lines.append(
                f"  {dataset_id}: {node['tier']}, code {node['code']}, grade "
                f"{node['grade']}, {node['rows']} rows"
            )
    for parent, child, transform in graph.edges:
        lines.append(f"  {parent} -> {child}  [{transform or 'no transform'}]")
    return "\n".join(lines)


def apply_transform(table: pa.Table, spec: dict[str, Any]) -> pa.Table:
    """Apply a transform spec (see the module docstring) to ``table``."""
    unknown = set(spec) - {"filter", "select", "group_by", "aggregate"}
    if unknown:
        raise InvalidInput(
            f"unknown transform keys {sorted(unknown)!r}: use filter, select, "
            "group_by and aggregate"
        )
    expression = filter_expression(spec.get("filter") or [], table.column_names, {})
    if expression is not None:
        table = table.filter(expression)
    if spec.get("select"):
        missing = [c for c in spec["select"] if c not in table.column_names]
        if missing:
            raise InvalidInput(f"transform selects unknown columns {missing!r}")
        table = table.select(spec["select"])
    group_by = spec.get("group_by")
    aggregate = spec.get("aggregate")
    if aggregate:
        for item in aggregate:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or item[1] not in AGGREGATIONS
            ):
                raise InvalidInput(
                    f"invalid aggregation {item!r}: use [column, function] with a "
                    f"function from {', '.join(AGGREGATIONS)}"
                )
        table = table.group_by(group_by or [], use_threads=False).aggregate(
            [tuple(item) for item in aggregate]
        )
    return table


def derive(
    store: CatalogStore,
    data_dir: Path,
    *,
    city: str,
    name: str,
    parents: list[str],
    transform: dict[str, Any],
    tier: str = "thematic",
    code: str | None = None,
    grade: str | None = None,
    title: str = "",
    description: str = "",
) -> DatasetEntry:
    """Build a derived dataset from catalog entries and record its lineage.

    The parents are read whole and concatenated (their schemas must agree), so
    the memory needed grows with their size.
    """
    if tier == "raw":
        raise InvalidInput("a derived dataset needs tier 'thematic' or 'topic'")
    if not parents:
        raise InvalidInput("a derived dataset needs at least one parent")
    entries = [store.get(parent) for parent in parents]
    codes = shared_codes()
    strictest = max(entries, key=lambda e: codes.grade(e.grade).rank).grade
    if grade is None:
        grade = strictest
    elif codes.grade(grade).rank < codes.grade(strictest).rank:
        raise PolicyViolation(
            f"grade {grade!r} is less sensitive than parent grade {strictest!r}: a "
            "derived dataset keeps at least its parents' grade"
        )
    tables = [pq.read_table(dataset_path(data_dir, entry.name)) for entry in entries]
    try:
        combined = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowInvalid as error:
        raise InvalidInput(
            f"parents {parents!r} have incompatible schemas: {error}"
        ) from None
    result = apply_transform(combined, transform)
    scratch = Path(data_dir) / f".derive-{uuid.uuid4().hex}.parquet"
    pq.write_table(result, scratch)
    try:
        return ingest_file(
            scratch,
            data_dir=data_dir,
            store=store,
            city=city,
            name=name,
            code=code or entries[0].code,
            grade=grade,
            tier=tier,
            title=title or name,
            description=description,
            parents=parents,
            transform=json.dumps(transform, sort_keys=True),
        )
    finally:
        scratch.unlink(missing_ok=True)
