import pytest

from citymesh.catalog.models import DatasetEntry
from citymesh.errors import InvalidInput
from citymesh.federation import JobSpec
from citymesh.federation.validate import job_problems, validate_job

FLIGHT_COLUMNS = [
    {"name": "year", "type": "int64"},
    {"name": "month", "type": "int64"},
    {"name": "day", "type": "int64"},
    {"name": "hour", "type": "int64"},
    {"name": "carrier", "type": "string"},
    {"name": "origin", "type": "string"},
    {"name": "distance", "type": "int64"},
    {"name": "arr_delay", "type": "double"},
]


def entry(city: str, grade: str = "general", columns=None) -> DatasetEntry:
    return DatasetEntry(
        id=f"{city.lower()}-flights",
        name="flights",
        city=city,
        code="04.5",
        grade=grade,
        columns=list(FLIGHT_COLUMNS if columns is None else columns),
    )


def spec(**overrides: object) -> JobSpec:
    data: dict[str, object] = {
        "job_id": "j1",
        "datasets": {"EWR": "ewr-flights", "JFK": "jfk-flights"},
    }
    data.update(overrides)
    return JobSpec.from_dict(data)


def test_validate_accepts_flights_job() -> None:
    entries = {"EWR": entry("EWR"), "JFK": entry("JFK")}
    assert job_problems(spec(), entries) == []
    validate_job(spec(), entries)


def test_validate_unknown_dataset() -> None:
    problems = job_problems(spec(), {"EWR": entry("EWR"), "JFK": None})
    assert problems == ["dataset 'jfk-flights' of city 'JFK' not found"]


def test_validate_missing_target_column() -> None:
    columns = [c for c in FLIGHT_COLUMNS if c["name"] != "arr_delay"]
    problems = job_problems(
        spec(), {"EWR": entry("EWR"), "JFK": entry("JFK", columns=columns)}
    )
    assert problems == ["target column 'arr_delay' missing in dataset 'jfk-flights'"]


def test_validate_underivable_weekday() -> None:
    columns = [c for c in FLIGHT_COLUMNS if c["name"] != "day"]
    problems = job_problems(
        spec(), {"EWR": entry("EWR", columns=columns), "JFK": entry("JFK")}
    )
    assert problems == ["column 'day' missing in dataset 'ewr-flights'"]


def test_validate_mismatched_schema() -> None:
    columns = [
        {"name": "distance", "type": "string"} if c["name"] == "distance" else c
        for c in FLIGHT_COLUMNS
    ]
    problems = job_problems(
        spec(), {"EWR": entry("EWR"), "JFK": entry("JFK", columns=columns)}
    )
    assert problems == [
        "column 'distance' has different types: int64 in EWR, string in JFK"
    ]


def test_validate_grade_rules() -> None:
    entries = {
        "EWR": entry("EWR", grade="core"),
        "JFK": entry("JFK", grade="important"),
    }
    problems = job_problems(spec(), entries)
    assert len(problems) == 2
    assert "graded core" in problems[0]
    assert "graded important" in problems[1]
    # Secure aggregation admits the important dataset but never the core one.
    with_secagg = job_problems(spec(privacy={"mode": "secagg"}), entries)
    assert len(with_secagg) == 1
    assert "graded core" in with_secagg[0]


def test_validate_dataset_of_other_city() -> None:
    problems = job_problems(spec(), {"EWR": entry("EWR"), "JFK": entry("LGA")})
    assert (
        "catalog returned dataset 'lga-flights', expected 'jfk-flights'" in problems[0]
    )
    assert "belongs to city 'LGA', not 'JFK'" in problems[1]


def test_validate_privacy_over_budget() -> None:
    private = spec(
        privacy={"mode": "dp", "noise_multiplier": 1.0, "epsilon_budget": 0.5}
    )
    problems = job_problems(private, {"EWR": entry("EWR"), "JFK": entry("JFK")})
    assert len(problems) == 1
    assert problems[0].startswith("the job would spend epsilon")


def test_validate_job_raises_with_every_problem() -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_job(spec(min_nodes=3), {"EWR": None, "JFK": None})
    message = str(caught.value)
    assert "min_nodes = 3" in message
    assert "'ewr-flights' of city 'EWR' not found" in message
    assert "'jfk-flights' of city 'JFK' not found" in message
