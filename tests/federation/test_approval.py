from pathlib import Path

import pytest

from citymesh.errors import PolicyViolation
from citymesh.federation import JobSpec, read_result
from citymesh.federation.approval import Approvals, code_digest, spec_digest
from citymesh.federation.client_app import make_client_app
from citymesh.federation.inprocess import InProcessGrid, run_server_app
from citymesh.federation.runner import job_run_config, node_configs
from citymesh.federation.server_app import make_server_app

usage_log = pytest.importorskip("citymesh.ledger.log")


def test_approval_matches_spec_and_code(quick_spec: JobSpec, tmp_path: Path) -> None:
    approvals = Approvals(tmp_path / "approvals.json")
    approval = approvals.approve(quick_spec, operator="ewr-office")
    assert approval.spec_sha256 == spec_digest(quick_spec)
    assert approval.code_sha256 == code_digest(quick_spec)
    assert approvals.check(quick_spec) == approval


def test_changed_spec_needs_new_approval(quick_spec: JobSpec, tmp_path: Path) -> None:
    approvals = Approvals(tmp_path / "approvals.json")
    approvals.approve(quick_spec, operator="ewr-office")
    changed = JobSpec.from_dict({**quick_spec.to_dict(), "rounds": 9})
    with pytest.raises(PolicyViolation, match="differs from the spec"):
        approvals.check(changed)


def test_unapproved_job_rejected(quick_spec: JobSpec, tmp_path: Path) -> None:
    with pytest.raises(PolicyViolation, match="is not approved"):
        Approvals(tmp_path / "approvals.json").check(quick_spec)


def test_revoked_approval_rejected(quick_spec: JobSpec, tmp_path: Path) -> None:
    approvals = Approvals(tmp_path / "approvals.json")
    approvals.approve(quick_spec, operator="ewr-office")
    approvals.revoke(quick_spec.id)
    with pytest.raises(PolicyViolation, match="is not approved"):
        approvals.check(quick_spec)


def test_node_runs_only_approved_job(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "rounds": 1, "job_id": "j7"})
    logs = {city: tmp_path / f"{city}.db" for city in city_files}
    configs = node_configs(spec, city_files, usage_logs=logs)
    for config in configs:
        path = tmp_path / f"approvals-{config['city']}.json"
        config["approvals"] = str(path)
        if config["city"] != "JFK":
            Approvals(path).approve(spec, operator=f"{config['city']}-office")
    run_config = job_run_config(spec, tmp_path / "out")
    grid = InProcessGrid(make_client_app(), configs, run_config=run_config)
    try:
        run_server_app(make_server_app(), grid, run_config)
    finally:
        grid.close()
    result = read_result(tmp_path / "out")
    assert sorted(result.rounds[0].per_city) == ["EWR", "LGA"]
    jfk = usage_log.UsageLog(logs["JFK"]).entries()
    assert [e.event.kind for e in jfk] == ["refusal"]
    assert "is not approved" in jfk[0].event.detail["reason"]
    ewr = usage_log.UsageLog(logs["EWR"]).entries()
    assert [e.event.kind for e in ewr] == ["train_round"]
