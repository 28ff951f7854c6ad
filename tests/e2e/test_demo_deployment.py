"""The demo with its job on a real SuperLink and one SuperNode process per city."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROWS = 20_000
ROUNDS = 3


def test_demo_deployment_mode_end_to_end(tmp_path):
    report_path = tmp_path / "report.json"
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
            "--federation",
            "deployment",
            "--workdir",
            str(tmp_path / "network"),
            "--report",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())

    federation = report["federation"]
    assert report["options"]["federation"] == "deployment"
    assert [r["round"] for r in federation["rounds"]] == [1, 2, 3]
    assert federation["final_auc"] > 0.6
    assert report["audit"]["ok"]
    for city, ledger in report["ledger"]["per_city"].items():
        # ingest, one catalog query, the job's approval, one event per round and
        # the centralized baseline's read
        assert ledger["head"] == 4 + ROUNDS, city
        assert ledger["anchored_events"] == 4 + ROUNDS, city
    assert report["settlement"]["total"] == report["options"]["budget"]
