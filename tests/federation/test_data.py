from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from citymesh.errors import InvalidInput, NotFound
from citymesh.federation import JobSpec, load_flights, read_city
from citymesh.federation.data import add_derived_columns


def test_flights_full_table_shape() -> None:
    frame = load_flights()
    assert len(frame) == 336_776
    assert sorted(frame["origin"].unique()) == ["EWR", "JFK", "LGA"]
    assert int(frame["arr_delay"].isna().sum()) == 9_430


def test_split_flights_one_file_per_origin(city_files: dict[str, Path]) -> None:
    assert sorted(city_files) == ["EWR", "JFK", "LGA"]
    total = 0
    for city, path in city_files.items():
        frame = pd.read_parquet(path)
        assert set(frame["origin"]) == {city}
        total += len(frame)
    assert total == 12_000


def test_read_city_split_is_deterministic(city_files: dict[str, Path]) -> None:
    spec = JobSpec(seed=5)
    first = read_city(city_files["JFK"], spec)
    second = read_city(city_files["JFK"], spec)
    assert first.train.equals(second.train)
    assert np.array_equal(first.test_labels, second.test_labels)


def test_read_city_split_follows_seed(city_files: dict[str, Path]) -> None:
    seed_one = read_city(city_files["JFK"], JobSpec(seed=1))
    seed_two = read_city(city_files["JFK"], JobSpec(seed=2))
    assert len(seed_one.test) == len(seed_two.test)
    assert not seed_one.test.equals(seed_two.test)


def test_read_city_drops_missing_target(city_files: dict[str, Path]) -> None:
    raw = pd.read_parquet(city_files["EWR"])
    known = int(raw["arr_delay"].notna().sum())
    split = read_city(city_files["EWR"], JobSpec())
    assert split.rows == known
    assert len(split.test) == round(known * 0.2)
    late = int((raw["arr_delay"] > 15).sum())
    labelled_late = int(split.train_labels.sum() + split.test_labels.sum())
    assert labelled_late == late


def test_read_city_keeps_only_features(city_files: dict[str, Path]) -> None:
    split = read_city(city_files["LGA"], JobSpec())
    assert list(split.train.columns) == [
        "month",
        "weekday",
        "hour",
        "carrier",
        "origin",
        "distance",
    ]
    assert "arr_delay" not in split.test.columns
    assert "dep_delay" not in split.test.columns


def test_derived_weekday_monday_is_zero() -> None:
    # 2013-01-01 was a Tuesday and 2013-01-07 a Monday.
    frame = pd.DataFrame({"year": [2013, 2013], "month": [1, 1], "day": [1, 7]})
    derived = add_derived_columns(frame, ("weekday",))
    assert derived["weekday"].tolist() == [1, 0]


def test_derived_hour_from_schedule() -> None:
    frame = pd.DataFrame({"sched_dep_time": [515, 2359, 45]})
    derived = add_derived_columns(frame, ("hour",))
    assert derived["hour"].tolist() == [5, 23, 0]


def test_read_city_missing_column_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"month": [1], "arr_delay": [3.0]}).to_parquet(path)
    spec = JobSpec.from_dict({"features": {"categorical": ["month", "carrier"]}})
    with pytest.raises(
        InvalidInput, match=r"lacks column\(s\) \['carrier', 'distance'\]"
    ):
        read_city(path, spec)


def test_read_city_underivable_weekday_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"month": [1], "arr_delay": [3.0]}).to_parquet(path)
    with pytest.raises(InvalidInput, match="'weekday' needs columns"):
        read_city(path, JobSpec())


def test_read_city_missing_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not found"):
        read_city(tmp_path / "absent.parquet", JobSpec())
