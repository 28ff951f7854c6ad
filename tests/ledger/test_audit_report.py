"""Usage reports per dataset, consumer, city and purpose, with policy flags."""

import csv
import io
import json

from citymesh.ledger.events import UsageEvent
from citymesh.ledger.log import UsageLog
from citymesh.ledger.report import report_csv, report_json, report_table, usage_report


def _events():
    return [
        UsageEvent(
            "query",
            "bcn-traffic",
            "barcelona",
            "madrid",
            "planning",
            rows=100,
            bytes=1_000,
            time=1_000.0,
        ),
        UsageEvent(
            "query",
            "bcn-traffic",
            "barcelona",
            "madrid",
            "planning",
            rows=50,
            bytes=500,
            time=1_500.0,
        ),
        UsageEvent(
            "train_round",
            "bcn-health",
            "barcelona",
            "hub",
            "research",
            rows=2_000,
            time=1_200.0,
        ),
        UsageEvent(
            "exchange",
            "mad-air",
            "madrid",
            "barcelona",
            "marketing",
            rows=10,
            bytes=80,
            time=1_300.0,
        ),
        UsageEvent(
            "query",
            "bcn-traffic",
            "barcelona",
            "madrid",
            "planning",
            rows=7,
            time=5_000.0,
        ),
    ]


def _no_marketing(event):
    return (
        "purpose 'marketing' is not allowed" if event.purpose == "marketing" else None
    )


def test_report_groups_and_sums(tmp_path):
    log = UsageLog(tmp_path / "usage.db")
    log.append_many(_events())
    report = usage_report(log.entries(), since=1_000.0, until=2_000.0)
    keys = [(r.dataset_id, r.consumer, r.city, r.purpose) for r in report.rows]
    assert keys == [
        ("bcn-health", "hub", "barcelona", "research"),
        ("bcn-traffic", "madrid", "barcelona", "planning"),
        ("mad-air", "barcelona", "madrid", "marketing"),
    ]
    traffic = report.rows[1]
    assert traffic.events == 2
    assert traffic.rows == 150
    assert traffic.bytes == 1_500
    assert traffic.first_time == 1_000.0
    assert traffic.last_time == 1_500.0


def test_report_flags_policy_violations(tmp_path):
    log = UsageLog(tmp_path / "usage.db")
    log.append_many(_events())
    report = usage_report(log.entries(), policy=_no_marketing)
    assert len(report.violations) == 1
    violation = report.violations[0]
    assert violation.seq == 4
    assert violation.city == "madrid"
    assert violation.reason == "purpose 'marketing' is not allowed"
    assert [r.violations for r in report.rows] == [0, 0, 1]


def test_report_kinds_filter():
    report = usage_report(_events(), kinds=["train_round"])
    assert [r.dataset_id for r in report.rows] == ["bcn-health"]
    assert report.rows[0].rows == 2_000


def test_report_csv_json_table():
    report = usage_report(_events(), until=2_000.0, policy=_no_marketing)
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert len(rows) == 3
    assert rows[1]["rows"] == "150"
    assert rows[2]["violations"] == "1"
    data = json.loads(report_json(report))
    assert data["until"] == 2_000.0
    assert data["rows"][1]["events"] == 2
    assert data["violations"][0]["seq"] is None
    table = report_table(report)
    assert table[0][:4] == ["dataset_id", "consumer", "city", "purpose"]
    assert table[2][4] == "2"


def test_report_counts_unconfirmed_extracts():
    def extract(time, **detail):
        return UsageEvent(
            kind="exchange",
            dataset_id="ewr:flights",
            provider="ewr",
            consumer="jfk",
            purpose="research",
            rows=100,
            bytes=1_000,
            time=time,
            detail={"complete": True, **detail},
        )

    events = [
        extract(1.0),
        extract(2.0, complete=False),
        extract(3.0, receipt="unconfirmed"),
    ]
    [row] = usage_report(events).rows
    assert row.events == 3
    assert row.unconfirmed == 2
    assert row.rows == 300
    assert report_csv(usage_report(events)).splitlines()[0].endswith(",unconfirmed")
