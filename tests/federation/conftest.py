"""Shared fixtures: a sample of nycflights13 split into one Parquet file per city."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from citymesh.federation import JobSpec, split_flights

SAMPLE_ROWS = 12_000


@pytest.fixture(scope="session", autouse=True)
def quiet_flower() -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def city_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12,000 random flights split by origin: EWR, JFK and LGA Parquet files."""
    return split_flights(tmp_path_factory.mktemp("cities"), rows=SAMPLE_ROWS, seed=0)


@pytest.fixture
def quick_spec() -> JobSpec:
    """Logistic regression, 3 rounds, with a learning rate that suits a small sample."""
    return JobSpec.from_dict(
        {
            "name": "quick",
            "rounds": 3,
            "model": {"kind": "logreg", "learning_rate": 0.05, "batch_size": 256},
        }
    )
