"""Comparison of the three architectures and the claim checks."""

from __future__ import annotations

import pytest

from citymesh.netsim import check_claims, compare, load_scenario

from .builders import scenario, workload


@pytest.fixture(scope="module")
def default_comparison():
    return compare(load_scenario("default"), hours=1)


def test_compare_runs_three_architectures(default_comparison):
    names = [result.architecture for result in default_comparison.results]

    assert names == ["isolated", "hub", "hub_edge"]
    assert default_comparison.hours == 1
    assert default_comparison.seed == 1


def test_compare_isolated_buys_department_hardware(default_comparison):
    isolated = default_comparison.result("isolated")
    hub = default_comparison.result("hub")

    # 32 department GPUs and 31 CPUs against the hub's pools.
    assert sum(p.units for p in isolated.pools if p.kind == "gpu") == 32
    assert sum(p.units for p in isolated.pools if p.kind == "cpu") == 31
    assert {p.site_kind for p in isolated.pools} == {"department"}
    assert {p.site_kind for p in hub.pools} == {"hub"}


def test_compare_claims_cover_four_figures(default_comparison):
    claims = {claim.name: claim for claim in default_comparison.claims}
    isolated = default_comparison.result("isolated")
    pooled = default_comparison.result("hub_edge")

    assert list(claims) == [
        "utilization_gain",
        "cost_cut",
        "district_circle",
        "inference_under_100ms",
    ]
    assert claims["utilization_gain"].measured == pytest.approx(
        pooled.utilization / isolated.utilization - 1
    )
    assert claims["cost_cut"].measured == pytest.approx(
        1 - pooled.cost_per_day / isolated.cost_per_day
    )
    assert claims["district_circle"].measured == max(
        d.network_p99_ms for d in pooled.districts
    )


def test_compare_to_dict_drops_samples(default_comparison):
    data = default_comparison.to_dict()

    assert len(data["results"]) == 3
    assert "latencies_ms" not in data["results"][0]
    assert data["claims"][0]["name"] == "utilization_gain"


def test_claims_reject_when_pooling_is_worse():
    # One request and identical hardware everywhere: pooling gains nothing and
    # the hub plus edge architecture pays for more sites.
    spec = scenario(
        workload("infer", "inference", at_s=[0.0], work_ms="{ gpu = 5 }"),
        edge_pools='{ kind = "gpu", count = 1 }',
    )
    comparison = compare(spec)
    claims = {claim.name: claim for claim in comparison.claims}

    assert claims["utilization_gain"].supported is False
    assert claims["cost_cut"].supported is False
    assert claims["district_circle"].supported is True
    assert claims["inference_under_100ms"].supported is True


def test_claims_need_both_runs():
    spec = scenario(workload("infer", "inference", at_s=[0.0], work_ms="{ gpu = 5 }"))
    comparison = compare(spec, ["hub"])

    assert comparison.claims == []
    assert check_claims(comparison.results) == []
