from pathlib import Path

import numpy as np
import pytest
import torch

from citymesh.errors import InvalidInput
from citymesh.federation import (
    JobSpec,
    RoundMetrics,
    read_city,
    run_job,
    train_centralized,
)


def test_run_job_trains_every_city(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    calls: list[tuple[str, int, int]] = []
    progress: list[RoundMetrics] = []
    result = run_job(
        quick_spec,
        city_files,
        on_round=lambda city, round_, rows: calls.append((city, round_, rows)),
        on_metrics=progress.append,
        contributions="none",
    )
    assert [r.round for r in result.rounds] == [1, 2, 3]
    assert [r.round for r in progress] == [1, 2, 3]
    assert sorted(c for c, r, _ in calls if r == 1) == ["EWR", "JFK", "LGA"]
    assert len(calls) == 9
    last = result.rounds[-1]
    assert sorted(last.per_city) == ["EWR", "JFK", "LGA"]
    for city, rows in ((c, n) for c, r, n in calls if r == 3):
        assert last.per_city[city].train_rows == rows
    assert result.final_auc == last.auc
    assert result.final_auc > 0.6
    assert 0.7 < result.final_accuracy < 0.85
    assert set(result.model_state) == {"linear.weight", "linear.bias"}
    assert torch.isfinite(result.model_state["linear.weight"]).all()


def test_run_job_close_to_centralized(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "rounds": 6})
    federated = run_job(spec, city_files, contributions="none")
    centralized = train_centralized(spec, city_files)
    assert centralized.test_rows == sum(
        m.test_rows for m in federated.rounds[-1].per_city.values()
    )
    assert centralized.auc == pytest.approx(centralized.auc_exact, abs=2e-3)
    assert abs(centralized.auc - federated.final_auc) < 0.02


def test_run_job_same_seed_same_model(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "rounds": 2})
    first = run_job(spec, city_files, contributions="none")
    second = run_job(spec, city_files, contributions="none")
    # Replies arrive in thread order, so FedAvg may sum in another order: the
    # models agree up to float rounding, not bit for bit.
    for name, tensor in first.model_state.items():
        assert torch.allclose(tensor, second.model_state[name], atol=1e-6)
    assert first.final_auc == pytest.approx(second.final_auc, abs=1e-4)


def test_run_job_mlp(city_files: dict[str, Path], quick_spec: JobSpec) -> None:
    spec = JobSpec.from_dict(
        {**quick_spec.to_dict(), "rounds": 2, "model": {"kind": "mlp", "hidden": [8]}}
    )
    result = run_job(spec, city_files, contributions="none")
    assert "layers.0.weight" in result.model_state
    assert result.model_state["layers.0.weight"].shape[0] == 8
    assert result.final_auc > 0.55


def test_run_job_writes_result_files(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "rounds": 1})
    result = run_job(spec, city_files, output_dir=tmp_path, contributions="none")
    assert (tmp_path / "result.json").is_file()
    assert (tmp_path / "model.pt").is_file()
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert torch.equal(saved["linear.bias"], result.model_state["linear.bias"])
    encoding = result.encoding
    assert encoding["categories"]["origin"] == ["EWR", "JFK", "LGA"]
    # The vocabulary is the union of the cities' train splits, and nothing more.
    carriers = set()
    for path in city_files.values():
        carriers.update(read_city(path, spec).train["carrier"])
    assert encoding["categories"]["carrier"] == sorted(carriers)


def test_run_job_size_contributions(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "rounds": 1})
    result = run_job(spec, city_files, contributions="size")
    shares = {city: c.size_share for city, c in result.contributions.items()}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert sum(c.rows for c in result.contributions.values()) == sum(
        result.rows_per_city.values()
    )
    assert all(c.loo is None for c in result.contributions.values())


def test_run_job_leave_one_out(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "rounds": 2})
    result = run_job(spec, city_files, contributions="loo")
    assert sorted(result.contributions) == ["EWR", "JFK", "LGA"]
    for contribution in result.contributions.values():
        assert contribution.loo is not None
        assert np.isfinite(contribution.loo)
        assert abs(contribution.loo) < 0.2


def test_run_job_too_few_cities_rejected(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    spec = JobSpec.from_dict({**quick_spec.to_dict(), "min_nodes": 4})
    with pytest.raises(InvalidInput, match="min_nodes = 4"):
        run_job(spec, city_files)


def test_run_job_unknown_mode_rejected(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    with pytest.raises(InvalidInput, match="run mode 'cloud' is unknown"):
        run_job(quick_spec, city_files, mode="cloud")


def test_run_job_secagg_needs_two_nodes(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    spec = JobSpec.from_dict(
        {**quick_spec.to_dict(), "min_nodes": 1, "privacy": {"mode": "secagg"}}
    )
    with pytest.raises(InvalidInput, match="SecAgg\\+ needs min_nodes >= 2"):
        run_job(spec, city_files)
