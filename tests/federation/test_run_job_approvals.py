"""run_job with the nodes' approval files: an unapproved city rejects the job."""

from pathlib import Path

import pytest

from citymesh.federation import JobSpec, run_job
from citymesh.federation.approval import Approvals
from citymesh.federation.server_app import FederationError
from citymesh.ledger.log import UsageLog


def approved_files(
    spec: JobSpec, cities: list[str], tmp_path: Path, approved: set[str]
) -> dict[str, Path]:
    paths = {city: tmp_path / f"approvals-{city}.json" for city in cities}
    for city in approved:
        Approvals(paths[city]).approve(spec, operator=f"{city}-office")
    return paths


def kinds(path: Path) -> list[str]:
    with UsageLog(path) as log:
        return [entry.event.kind for entry in log.entries()]


def test_unapproved_city_rejects_job(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "job_id": "a1", "rounds": 2})
    approvals = approved_files(spec, sorted(city_files), tmp_path, {"EWR", "LGA"})
    logs = {city: tmp_path / f"{city}.db" for city in city_files}
    result = run_job(
        spec, city_files, usage_logs=logs, approvals=approvals, contributions="none"
    )
    assert sorted(result.rounds[-1].per_city) == ["EWR", "LGA"]
    assert kinds(logs["JFK"]) == ["refusal"]
    assert kinds(logs["EWR"]) == ["train_round", "train_round"]


def test_job_without_enough_approvals_fails(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    spec = JobSpec.from_dict(
        {
            **quick_spec.to_dict(),
            "job_id": "a2",
            "rounds": 1,
            "min_nodes": 3,
            "round_timeout_s": 2.0,
        }
    )
    approvals = approved_files(spec, sorted(city_files), tmp_path, {"EWR"})
    with pytest.raises(FederationError, match="only 1 member node"):
        run_job(spec, city_files, approvals=approvals, contributions="none")


def test_changed_spec_rejected_by_node(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "job_id": "a3", "rounds": 1})
    approvals = approved_files(spec, sorted(city_files), tmp_path, set(city_files))
    # Same job id, another seed: every node's approval is for a different spec.
    # The short timeout ends the survey soon after all nodes refused.
    changed = JobSpec.from_dict({**spec.to_dict(), "seed": 99, "round_timeout_s": 2.0})
    logs = {city: tmp_path / f"{city}.db" for city in city_files}
    with pytest.raises(FederationError, match="only 0 member node"):
        run_job(
            changed,
            city_files,
            usage_logs=logs,
            approvals=approvals,
            contributions="none",
        )
    assert kinds(logs["EWR"]) == ["refusal"]
