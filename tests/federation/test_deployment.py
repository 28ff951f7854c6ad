"""A real Flower deployment: SuperLink and three SuperNodes as subprocesses."""

from pathlib import Path

import pytest

from citymesh.federation import JobSpec, run_job
from citymesh.federation.deployment import LocalFederation

pytestmark = pytest.mark.slow


def test_deployment_job_matches_inprocess(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "rounds": 2, "job_id": "dep"})
    calls: list[tuple[str, int, int]] = []
    deployed = run_job(
        spec,
        city_files,
        mode="deployment",
        contributions="none",
        on_round=lambda city, round_, rows: calls.append((city, round_, rows)),
    )
    local = run_job(spec, city_files, contributions="none")
    assert [r.round for r in deployed.rounds] == [1, 2]
    assert sorted(deployed.rounds[-1].per_city) == ["EWR", "JFK", "LGA"]
    assert len(calls) == 6
    # Same spec, seed and data: the two modes train the same model, up to the
    # order in which FedAvg sums the replies.
    assert deployed.final_auc == pytest.approx(local.final_auc, abs=1e-3)
    for name, tensor in local.model_state.items():
        assert deployed.model_state[name].allclose(tensor, atol=1e-4)


def test_deployment_job_only_named_cities(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    nodes = {
        city: {"data-path": str(path), "dataset-id": f"{city.lower()}-flights"}
        for city, path in city_files.items()
    }
    spec = JobSpec.from_dict(
        {
            **quick_spec.to_dict(),
            "rounds": 1,
            "datasets": {"EWR": "ewr-flights", "LGA": "lga-flights"},
        }
    )
    with LocalFederation(tmp_path / "federation", nodes) as federation:
        result = run_job(
            spec,
            {city: city_files[city] for city in ("EWR", "LGA")},
            mode="deployment",
            federation=federation,
            contributions="none",
        )
    assert sorted(result.rounds[0].per_city) == ["EWR", "LGA"]
    assert federation.processes == []
