"""The ``sim`` command line: run, compare, JSON output, plots and errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from citymesh.netsim.cli import app

runner = CliRunner()

TINY = """
[scenario]
name = "tiny"
hours = 0.1

[[cities]]
name = "c"
hub_pools = [{ kind = "gpu", count = 1 }]

[[cities.districts]]
name = "d"
latency_ms = 10
bandwidth_gbps = 8
access_latency_ms = 2
access_bandwidth_gbps = 8
edge_pools = [{ kind = "npu", count = 1 }]

[[cities.departments]]
name = "p"
district = "d"
local_pools = [{ kind = "gpu", count = 1 }]

[[cities.departments.workloads]]
name = "infer"
kind = "inference"
at_s = [0.0]
work_ms = { gpu = 5 }
"""


def write_tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_run_json_output(tmp_path):
    result = runner.invoke(
        app,
        ["run", str(write_tiny(tmp_path)), "--architecture", "hub", "--format", "json"],
    )
    data = json.loads(result.stdout)

    assert result.exit_code == 0
    assert data["architecture"] == "hub"
    assert data["inference"]["p50_ms"] == 17.0
    assert data["conservation"]["completed"] == 1


def test_run_table_output(tmp_path):
    result = runner.invoke(app, ["run", str(write_tiny(tmp_path)), "--seed", "4"])

    assert result.exit_code == 0
    assert "tiny: hub plus edge (hub_edge), seed 4, 0.1 h" in result.stdout
    assert "c/hub/gpu" in result.stdout


def test_run_hours_override(tmp_path):
    result = runner.invoke(
        app, ["run", str(write_tiny(tmp_path)), "--hours", "0.5", "--format", "json"]
    )

    assert json.loads(result.stdout)["hours"] == 0.5


def test_compare_writes_plots(tmp_path):
    out = tmp_path / "plots"
    result = runner.invoke(
        app, ["compare", "default", "--hours", "0.25", "--out", str(out)]
    )

    assert result.exit_code == 0
    assert "hub_edge" in result.stdout
    assert "Claims" in result.stdout
    for name in ("utilization.png", "latency.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_json_output(tmp_path):
    result = runner.invoke(
        app, ["compare", str(write_tiny(tmp_path)), "--format", "json"]
    )
    data = json.loads(result.stdout)

    assert result.exit_code == 0
    assert [run["architecture"] for run in data["results"]] == [
        "isolated",
        "hub",
        "hub_edge",
    ]
    assert [run["inference"]["p50_ms"] for run in data["results"]] == [5.0, 17.0, 17.0]


def test_bad_scenario_file_exits_1(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        TINY.replace(
            "count = 1 }]\n\n[[cities.districts]]",
            "count = -1 }]\n\n[[cities.districts]]",
        )
    )
    result = runner.invoke(app, ["run", str(path)])

    assert result.exit_code == 1
    assert result.stderr == (
        "error: bad.toml: cities[0].hub_pools[0].count must be at least 1, got -1\n"
    )
    assert result.stdout == ""


def test_missing_scenario_file_exits_1(tmp_path):
    result = runner.invoke(app, ["compare", str(tmp_path / "none.toml")])

    assert result.exit_code == 1
    assert result.stderr.startswith("error: scenario file ")
    assert result.stderr.count("\n") == 1


def test_unknown_architecture_exits_1(tmp_path):
    result = runner.invoke(app, ["run", str(write_tiny(tmp_path)), "-a", "cloud"])

    assert result.exit_code == 1
    assert result.stderr == (
        "error: unknown architecture 'cloud'; use one of isolated, hub, hub_edge\n"
    )


def test_zero_hours_exits_1(tmp_path):
    result = runner.invoke(app, ["run", str(write_tiny(tmp_path)), "--hours", "0"])

    assert result.exit_code == 1
    assert result.stderr == "error: hours must be greater than 0, got 0.0\n"
