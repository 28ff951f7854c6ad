from pathlib import Path

import pytest

from citymesh.federation import JobSpec, run_job

usage_log = pytest.importorskip("citymesh.ledger.log")


def test_client_logs_one_event_per_round(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    spec = JobSpec.from_dict(
        {
            **quick_spec.to_dict(),
            "rounds": 2,
            "job_id": "job-42",
            "consumer": "analyst",
            "purpose": "delay research",
        }
    )
    logs = {city: tmp_path / f"{city}.db" for city in city_files}
    run_job(
        spec,
        city_files,
        usage_logs=logs,
        dataset_ids={"EWR": "ewr-flights"},
        contributions="none",
    )
    for city, path in logs.items():
        entries = usage_log.UsageLog(path).entries()
        assert [e.event.round for e in entries] == [1, 2]
        for entry in entries:
            assert entry.event.kind == "train_round"
            assert entry.event.provider == city
            assert entry.event.job_id == "job-42"
            assert entry.event.consumer == "analyst"
            assert entry.event.purpose == "delay research"
            assert entry.event.rows > 0
    ewr = usage_log.UsageLog(logs["EWR"]).entries()
    assert ewr[0].event.dataset_id == "ewr-flights"
