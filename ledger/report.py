"""Usage reports for a regulator: totals per dataset, consumer, city and purpose.

A report reads verified entries (or bare events) from any number of nodes. ``city``
in a report is the event's provider, the city whose node logged the use of its
dataset. Policy checks come from the caller as a function, because the rules live
with the catalog, which the ledger does not import.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from .events import LogEntry, UsageEvent

PolicyCheck = Callable[[UsageEvent], str | None]  # returns why the event breaks policy

REPORT_FIELDS = (
    "dataset_id",
    "consumer",
    "city",
    "purpose",
    "events",
    "rows",
    "bytes",
    "first_time",
    "last_time",
    "violations",
    "unconfirmed",
)


@dataclass(frozen=True)
class UsageRow:
    """Totals of one (dataset, consumer, city, purpose) group; times in unix s.

    ``unconfirmed`` counts the events whose receipt the consumer never signed:
    extracts cut off mid-stream (``complete: false``) and receipts that timed
    out (``receipt: unconfirmed``). Their rows and bytes are in the totals,
    as the provider sent them, but the consumer did not confirm receiving them.
    """

    dataset_id: str
    consumer: str
    city: str
    purpose: str
    events: int
    rows: int
    bytes: int
    first_time: float
    last_time: float
    violations: int
    unconfirmed: int = 0


def is_unconfirmed(event: UsageEvent) -> bool:
    """Tell whether an event records a use that its consumer did not confirm."""
    detail = event.detail
    return detail.get("complete") is False or detail.get("receipt") == "unconfirmed"


@dataclass(frozen=True)
class Violation:
    """One event that breaks its dataset's policy; ``seq`` is None for bare events."""

    seq: int | None
    city: str
    dataset_id: str
    consumer: str
    purpose: str
    kind: str
    time: float
    reason: str


@dataclass
class UsageReport:
    """Report rows sorted by their group, and the violations in input order."""

    since: float | None
    until: float | None
    rows: list[UsageRow] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)


def usage_report(
    items: Iterable[LogEntry | UsageEvent],
    *,
    since: float | None = None,
    until: float | None = None,
    kinds: Iterable[str] | None = None,
    policy: PolicyCheck | None = None,
) -> UsageReport:
    """Sum usage per dataset, consumer, city and purpose over ``since <= time < until``.

    ``kinds`` limits the event kinds counted (all when None). ``policy`` is called on
    each counted event, and a non-empty return marks it as a violation.
    """
    selected_kinds = set(kinds) if kinds is not None else None
    groups: dict[tuple[str, str, str, str], dict[str, float]] = {}
    report = UsageReport(since=since, until=until)
    for item in items:
        seq, event = (
            (item.seq, item.event) if isinstance(item, LogEntry) else (None, item)
        )
        if since is not None and event.time < since:
            continue
        if until is not None and event.time >= until:
            continue
        if selected_kinds is not None and event.kind not in selected_kinds:
            continue
        key = (event.dataset_id, event.consumer, event.provider, event.purpose)
        totals = groups.setdefault(
            key,
            {
                "events": 0,
                "rows": 0,
                "bytes": 0,
                "first": event.time,
                "last": event.time,
                "violations": 0,
                "unconfirmed": 0,
            },
        )
        totals["events"] += 1
        totals["unconfirmed"] += is_unconfirmed(event)
        totals["rows"] += event.rows
        totals["bytes"] += event.bytes
        totals["first"] = min(totals["first"], event.time)
        totals["last"] = max(totals["last"], event.time)
        reason = policy(event) if policy is not None else None
        if reason:
            totals["violations"] += 1
            report.violations.append(
                Violation(
                    seq=seq,
                    city=event.provider,
                    dataset_id=event.dataset_id,
                    consumer=event.consumer,
                    purpose=event.purpose,
                    kind=event.kind,
                    time=event.time,
                    reason=reason,
                )
            )
    for key in sorted(groups):
        totals = groups[key]
        report.rows.append(
            UsageRow(
                *key,
                events=int(totals["events"]),
                rows=int(totals["rows"]),
                bytes=int(totals["bytes"]),
                first_time=totals["first"],
                last_time=totals["last"],
                violations=int(totals["violations"]),
                unconfirmed=int(totals["unconfirmed"]),
            )
        )
    return report


def report_csv(report: UsageReport) -> str:
    """Return the report rows as CSV with a header line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_FIELDS)
    for row in report.rows:
        writer.writerow([getattr(row, name) for name in REPORT_FIELDS])
    return buffer.getvalue()


def report_json(report: UsageReport) -> str:
    """Return the report, rows and violations, as indented JSON."""
    data = {
        "since": report.since,
        "until": report.until,
        "rows": [asdict(row) for row in report.rows],
        "violations": [asdict(violation) for violation in report.violations],
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def report_table(report: UsageReport) -> list[list[str]]:
    """Return a header row and one row of strings per group, for a text table."""
    table = [list(REPORT_FIELDS)]
    for row in report.rows:
        table.append([str(getattr(row, name)) for name in REPORT_FIELDS])
    return table
