"""Scenario files: shipped scenarios, validation messages, patterns and surges."""

from __future__ import annotations

import numpy as np
import pytest

from citymesh.errors import InvalidInput
from citymesh.netsim import (
    ScenarioError,
    load_scenario,
    parse_scenario,
    shipped_scenarios,
)
from citymesh.netsim.arrivals import arrival_times, rate_pieces, stream_seed
from citymesh.netsim.specs import SurgeSpec, WorkloadSpec

from .builders import scenario, workload


def test_shipped_scenarios_listed():
    assert shipped_scenarios() == ["default", "two-city", "typhoon"]


def test_default_scenario_shape():
    spec = load_scenario("default")
    city = spec.cities[0]

    assert len(spec.cities) == 1
    assert len(city.departments) == 31
    assert len(city.districts) == 6
    assert {pool.kind for pool in city.hub_pools} == {"cpu", "gpu", "npu"}
    assert spec.hours == 24


def test_two_city_scenario_links_hubs():
    spec = load_scenario("two-city")

    assert [city.name for city in spec.cities] == ["harbor", "ridge"]
    assert spec.links[0].a == "harbor/hub"
    assert spec.links[0].b == "ridge/hub"
    federated = [
        w
        for city in spec.cities
        for d in city.departments
        for w in d.workloads
        if w.kind == "federated"
    ]
    assert len(federated) == 3


def test_typhoon_scenario_has_surges():
    spec = load_scenario("typhoon")

    assert spec.surges[0].multiplier == 3.0
    assert spec.surges[0].categories == ("emergency",)
    assert spec.surges[0].start_hour == 14


def test_department_scale_multiplies_rates():
    spec = load_scenario("default")
    police = next(d for d in spec.cities[0].departments if d.name == "police")
    video = next(w for w in police.workloads if w.name == "incident-video")

    assert police.scale == 2.0
    assert video.rate_per_hour == 2400
    assert video.work_s == {"gpu": 0.030, "npu": 0.045, "cpu": 0.4}


def test_load_missing_file_message(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError) as error:
        load_scenario(missing)

    assert (
        str(error.value) == f"scenario file {str(missing)!r} not found; check the path"
    )
    assert isinstance(error.value, InvalidInput)
    assert isinstance(error.value, ValueError)


def test_load_unknown_name_message():
    with pytest.raises(ScenarioError) as error:
        load_scenario("atlantis")

    assert str(error.value) == (
        "scenario 'atlantis' is neither a .toml file nor a shipped scenario; "
        "use a file path or one of: default, two-city, typhoon"
    )


def test_parse_invalid_toml_message():
    with pytest.raises(ScenarioError) as error:
        parse_scenario("[scenario\n", "bad.toml")

    assert str(error.value).startswith("bad.toml: invalid TOML: ")


def test_parse_unknown_key_message():
    with pytest.raises(ScenarioError) as error:
        scenario(
            workload("infer", "inference", at_s=[0.0], work_ms="{ gpu = 5 }", colour=1)
        )

    assert str(error.value).startswith(
        "test.toml: unknown key 'cities[0].departments[0].workloads[0].colour'; "
        "allowed here: "
    )


def test_parse_negative_count_message():
    with pytest.raises(ScenarioError) as error:
        scenario("", hub_pools='{ kind = "gpu", count = 0 }')

    assert str(error.value) == (
        "test.toml: cities[0].hub_pools[0].count must be at least 1, got 0"
    )


def test_parse_missing_rate_message():
    with pytest.raises(ScenarioError) as error:
        scenario(workload("infer", "inference", work_ms="{ gpu = 5 }"))

    assert str(error.value) == (
        "test.toml: cities[0].departments[0].workloads[0] needs exactly one of "
        "rate_per_hour, rate_per_day or at_s, got none"
    )


def test_parse_unknown_district_message():
    bad = """
[scenario]
name = "x"
[[cities]]
name = "c"
[[cities.districts]]
name = "d"
latency_ms = 1
bandwidth_gbps = 1
[[cities.departments]]
name = "p"
district = "elsewhere"
"""
    with pytest.raises(ScenarioError) as error:
        parse_scenario(bad, "x.toml")

    assert str(error.value) == (
        "x.toml: cities[0].departments[0].district must name a district of this "
        "city (d), got 'elsewhere'"
    )


def test_parse_work_must_be_positive():
    with pytest.raises(ScenarioError) as error:
        scenario(workload("infer", "inference", at_s=[0.0], work_ms="{ gpu = 0 }"))

    assert str(error.value) == (
        "test.toml: cities[0].departments[0].workloads[0].work_ms.gpu must be a "
        "number greater than 0, got 0"
    )


def test_parse_unknown_transfer_destination():
    with pytest.raises(ScenarioError) as error:
        scenario(
            workload("upload", "transfer", at_s=[0.0], size_gb=1, destination="moon")
        )

    assert str(error.value) == (
        "test.toml: department c/p workload 'upload': destination 'moon' is not a "
        "site; use 'hub', a district, a department or city/site"
    )


def test_parse_unknown_federated_partner():
    with pytest.raises(ScenarioError) as error:
        scenario(
            workload(
                "fl",
                "federated",
                at_s=[0.0],
                round_work_s="{ gpu = 1 }",
                partners='["x/y"]',
            )
        )

    assert str(error.value) == (
        "test.toml: department c/p workload 'fl': partner 'x/y' is not a department; "
        "use a department name or city/department"
    )


def test_parse_pattern_needs_24_values():
    with pytest.raises(ScenarioError) as error:
        scenario("", extra="[patterns]\nshort = [1, 2]")

    assert str(error.value) == (
        "test.toml: patterns.short must list 24 hourly multipliers, got (1.0, 2.0)"
    )


def test_rate_pieces_follow_pattern_and_surge():
    pattern = tuple(float(hour) for hour in range(24))
    work = WorkloadSpec(name="w", kind="inference", rate_per_hour=3600.0)
    surge = SurgeSpec(
        "s", start_hour=1.5, hours=1.0, multiplier=10.0, categories=("x",)
    )
    pieces = rate_pieces(work, pattern, [surge], horizon_s=3 * 3600, start_hour=0.0)

    # Rates per second: hour h has multiplier h; the surge covers 1.5 h to 2.5 h.
    assert pieces == [
        (0.0, 3600.0, 0.0),
        (3600.0, 5400.0, 1.0),
        (5400.0, 7200.0, 10.0),
        (7200.0, 9000.0, 20.0),
        (9000.0, 10800.0, 2.0),
    ]


def test_rate_pieces_start_hour_shifts_pattern():
    pattern = tuple(float(hour) for hour in range(24))
    work = WorkloadSpec(name="w", kind="inference", rate_per_hour=3600.0)
    pieces = rate_pieces(work, pattern, [], horizon_s=3600, start_hour=23.5)

    assert pieces == [(0.0, 1800.0, 23.0), (1800.0, 3600.0, 0.0)]


def test_arrival_count_matches_rate():
    work = WorkloadSpec(name="w", kind="inference", rate_per_hour=36000.0)
    times = arrival_times(work, (1.0,) * 24, [], 3600.0, 0.0, stream_seed(1, "w"))

    assert 35_400 < len(times) < 36_600  # Poisson mean 36,000, sd 190
    assert np.all(np.diff(times) >= 0)
    assert times[0] >= 0.0
    assert times[-1] < 3600.0


def test_stream_seed_depends_on_name_only():
    first = stream_seed(7, "c/p/w").random(3)
    again = stream_seed(7, "c/p/w").random(3)
    other = stream_seed(7, "c/p/x").random(3)

    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()
