"""The demo as a user runs it: chain, nodes and a Flower job on loopback."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from citymesh.network import Network

pytestmark = pytest.mark.slow

ROWS = 20_000
BUDGET = 1_000_000
ROUNDS = 5
# Each city's log: ingest, one catalog query, the job's approval, the job's rounds,
# the rounds of the two leave-one-out subsets the city belongs to, and the read of
# its dataset by the centralized baseline.
JOB_ROUNDS_PER_CITY = ROUNDS + 2 * ROUNDS
EVENTS_PER_CITY = 3 + JOB_ROUNDS_PER_CITY + 1


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "network"
    report_path = workdir.parent / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "citymesh.cli",
            "demo",
            "--rows",
            str(ROWS),
            "--rounds",
            str(ROUNDS),
            "--budget",
            str(BUDGET),
            "--workdir",
            str(workdir),
            "--report",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, json.loads(report_path.read_text()), result.stdout


def test_demo_finds_three_datasets_by_code(demo_run):
    _, report, _ = demo_run
    found = report["discovered"]
    assert sorted(found) == ["EWR", "JFK", "LGA"]
    for city, entry in found.items():
        assert entry["code"].startswith("04.5")
        assert entry["rows"] == report["ingested"][city]["rows"]
    assert sum(entry["rows"] for entry in found.values()) == ROWS


def test_demo_federated_auc_near_centralized(demo_run):
    _, report, _ = demo_run
    federation = report["federation"]
    assert len(federation["rounds"]) == ROUNDS
    assert federation["final_auc"] > 0.62
    assert federation["centralized_auc"] > 0.62
    assert abs(federation["centralized_auc"] - federation["final_auc"]) < 0.03


def test_demo_every_event_anchored_and_verified(demo_run):
    _, report, _ = demo_run
    for city, verdict in report["audit"]["per_city"].items():
        ledger = report["ledger"]["per_city"][city]
        assert verdict["ok"], verdict["reason"]
        assert ledger["head"] == EVENTS_PER_CITY
        assert ledger["anchored_events"] == EVENTS_PER_CITY
        assert verdict["anchored"] == EVENTS_PER_CITY


def test_demo_credits_sum_to_settled_budget(demo_run):
    _, report, _ = demo_run
    settlement = report["settlement"]
    assert settlement["total"] == BUDGET
    assert sum(settlement["amounts"].values()) == BUDGET
    assert sum(settlement["balances"].values()) == BUDGET
    assert settlement["total_supply"] == BUDGET
    assert all(amount > 0 for amount in settlement["amounts"].values())


def test_demo_prints_summary(demo_run):
    _, _, stdout = demo_run
    assert "citymesh demo summary" in stdout
    assert "audit: PASS" in stdout


def _cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "citymesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_bundles_verify_offline(demo_run):
    workdir, _, _ = demo_run
    bundles = sorted(str(p) for p in (workdir / "audit").glob("*.jsonl"))
    assert [Path(b).name for b in bundles] == ["EWR.jsonl", "JFK.jsonl", "LGA.jsonl"]

    result = _cli("audit", "verify-bundle", *bundles, "--offline", "--format", "json")

    assert result.returncode == 0, result.stderr
    verdicts = json.loads(result.stdout)["per_city"]
    assert all(v["ok"] for v in verdicts.values())


def test_demo_bundle_byte_change_detected(demo_run, tmp_path):
    workdir, _, _ = demo_run
    original = (workdir / "audit" / "LGA.jsonl").read_bytes()
    changed = tmp_path / "LGA.jsonl"
    changed.write_bytes(original.replace(b'"purpose":"', b'"purpose":"x', 1))

    result = _cli("audit", "verify-bundle", str(changed), "--offline")

    assert result.returncode == 1
    assert "FAIL" in result.stdout


def test_demo_usage_report_counts_rounds(demo_run):
    workdir, report, _ = demo_run
    bundles = sorted(str(p) for p in (workdir / "audit").glob("*.jsonl"))

    result = _cli(
        "audit",
        "report",
        *bundles,
        "--offline",
        "--kind",
        "train_round",
        "--format",
        "json",
    )

    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert sorted(row["city"] for row in rows) == ["EWR", "JFK", "LGA"]
    for row in rows:
        assert row["events"] == JOB_ROUNDS_PER_CITY
        assert row["violations"] == 0
        assert row["dataset_id"] == report["discovered"][row["city"]]["id"]


def test_demo_tampered_event_fails_audit(demo_run):
    workdir, _, _ = demo_run
    usage_db = workdir / "nodes" / "JFK" / "usage.db"
    with sqlite3.connect(usage_db) as connection:
        connection.execute("DROP TRIGGER entries_append_only_update")
        (event,) = connection.execute(
            "SELECT event FROM entries WHERE seq = 1"
        ).fetchone()
        text = bytes(event).decode()
        changed = text.replace('"rows":', '"rows":1', 1)
        assert changed != text
        connection.execute(
            "UPDATE entries SET event = ? WHERE seq = 1", (changed.encode(),)
        )

    with Network.open(workdir) as network:
        network.start_chain(deploy=False)
        network.start_nodes()
        audit = network.audit()
        command = subprocess.run(
            [
                sys.executable,
                "-m",
                "citymesh.cli",
                "audit",
                "verify",
                "--chain-url",
                network.chain_url,
                "--deployment",
                str(workdir / "deployment.json"),
                "--keys",
                str(workdir / "regulator" / "keys"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert not audit["ok"]
    assert audit["per_city"]["EWR"]["ok"]
    assert audit["per_city"]["LGA"]["ok"]
    jfk = audit["per_city"]["JFK"]
    assert not jfk["ok"]
    assert jfk["first_bad_seq"] == 1

    assert command.returncode == 1
    lines = command.stdout.splitlines()
    assert lines[0].startswith(
        f"EWR: pass: {EVENTS_PER_CITY} events, {EVENTS_PER_CITY} anchored"
    )
    assert lines[1].startswith("JFK: FAIL")
    assert lines[2].startswith(
        f"LGA: pass: {EVENTS_PER_CITY} events, {EVENTS_PER_CITY} anchored"
    )
