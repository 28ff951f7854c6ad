from pathlib import Path

import pytest
import torch

from citymesh.errors import PolicyViolation
from citymesh.federation import JobSpec, run_job
from citymesh.federation.privacy import PrivacyBudgets, planned_epsilon

usage_log = pytest.importorskip("citymesh.ledger.log")


def dp_spec(quick_spec: JobSpec, **privacy: object) -> JobSpec:
    settings = {"mode": "dp", "noise_multiplier": 1.0, "clipping_norm": 1.0}
    return JobSpec.from_dict(
        {
            **quick_spec.to_dict(),
            "job_id": "dp-job",
            "privacy": {**settings, **privacy},
        }
    )


def test_planned_epsilon_grows_with_rounds(quick_spec: JobSpec) -> None:
    three = planned_epsilon(dp_spec(quick_spec))
    six = planned_epsilon(
        JobSpec.from_dict({**dp_spec(quick_spec).to_dict(), "rounds": 6})
    )
    assert three > 0
    assert six > three
    assert planned_epsilon(quick_spec) == 0.0


def test_planned_epsilon_falls_with_noise(quick_spec: JobSpec) -> None:
    low_noise = planned_epsilon(dp_spec(quick_spec, noise_multiplier=1.0))
    high_noise = planned_epsilon(dp_spec(quick_spec, noise_multiplier=4.0))
    assert high_noise < low_noise


def test_dp_job_reports_epsilon(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    spec = dp_spec(quick_spec, noise_multiplier=0.5, clipping_norm=5.0)
    result = run_job(spec, city_files, contributions="none")
    spent = [r.epsilon for r in result.rounds]
    assert all(value is not None for value in spent)
    assert spent[0] < spent[1] < spent[2]
    assert result.epsilon == pytest.approx(planned_epsilon(spec), rel=1e-6)
    for tensor in result.model_state.values():
        assert torch.isfinite(tensor).all()


def test_dp_job_over_spec_budget_rejected(
    city_files: dict[str, Path], quick_spec: JobSpec
) -> None:
    spec = dp_spec(quick_spec, epsilon_budget=1.0)
    with pytest.raises(PolicyViolation, match="above its budget 1.000"):
        run_job(spec, city_files, contributions="none")


def test_budget_reserve_enforced(tmp_path: Path) -> None:
    budgets = PrivacyBudgets(tmp_path / "budgets.json")
    budgets.set_budget("ewr-flights", 10.0)
    assert budgets.reserve("ewr-flights", "job-1", 6.0) == pytest.approx(6.0)
    # Reserving again for the same job replaces its amount.
    assert budgets.reserve("ewr-flights", "job-1", 4.0) == pytest.approx(4.0)
    assert budgets.reserve("ewr-flights", "job-2", 5.0) == pytest.approx(9.0)
    with pytest.raises(PolicyViolation, match="above its budget 10.000"):
        budgets.reserve("ewr-flights", "job-3", 2.0)
    assert budgets.spent("ewr-flights") == pytest.approx(9.0)
    with pytest.raises(PolicyViolation, match="has no privacy budget"):
        budgets.reserve("jfk-flights", "job-1", 1.0)


def test_node_budget_rejects_city(
    city_files: dict[str, Path], quick_spec: JobSpec, tmp_path: Path
) -> None:
    spec = dp_spec(quick_spec)
    epsilon = planned_epsilon(spec)
    budgets_path = tmp_path / "budgets.json"
    budgets = PrivacyBudgets(budgets_path)
    budgets.set_budget("EWR", epsilon * 2)
    budgets.set_budget("JFK", epsilon * 2)
    budgets.set_budget("LGA", epsilon / 2)
    logs = {city: tmp_path / f"{city}.db" for city in city_files}

    from citymesh.federation.client_app import make_client_app
    from citymesh.federation.inprocess import InProcessGrid, run_server_app
    from citymesh.federation.runner import job_run_config, node_configs, read_result
    from citymesh.federation.server_app import make_server_app

    configs = node_configs(spec, city_files, usage_logs=logs)
    for config in configs:
        config["privacy-budgets"] = str(budgets_path)
    run_config = job_run_config(spec, tmp_path / "out")
    grid = InProcessGrid(make_client_app(), configs, run_config=run_config)
    try:
        run_server_app(make_server_app(), grid, run_config)
    finally:
        grid.close()
    result = read_result(tmp_path / "out")

    assert sorted(result.rounds[0].per_city) == ["EWR", "JFK"]
    assert budgets.spent("EWR") == pytest.approx(epsilon)
    assert budgets.spent("LGA") == 0.0
    lga = [e.event.kind for e in usage_log.UsageLog(logs["LGA"]).entries()]
    assert lga == ["refusal"]
    ewr = [e.event.kind for e in usage_log.UsageLog(logs["EWR"]).entries()]
    assert ewr == ["approval", "train_round", "train_round", "train_round"]
