from pathlib import Path

import pytest

from citymesh.errors import InvalidInput
from citymesh.federation import JobSpec

SPEC_TOML = """
name = "late-arrivals"
job_id = "job-7"
rounds = 4
seed = 3

[datasets]
EWR = "ewr-flights"
JFK = "jfk-flights"

[features]
categorical = ["month", "carrier"]
numeric = ["distance"]

[features.scaling]
distance = [1000.0, 700.0]

[target]
column = "arr_delay"
threshold = 30

[model]
kind = "mlp"
hidden = [8]
local_epochs = 2

[privacy]
mode = "dp"
noise_multiplier = 0.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def test_spec_from_toml_reads_sections(tmp_path: Path) -> None:
    spec = JobSpec.from_toml(write(tmp_path, SPEC_TOML))
    assert spec.id == "job-7"
    assert spec.rounds == 4
    assert spec.datasets == {"EWR": "ewr-flights", "JFK": "jfk-flights"}
    assert spec.features.categorical == ("month", "carrier")
    assert spec.features.scaling == {"distance": (1000.0, 700.0)}
    assert spec.target.threshold == 30.0
    assert spec.model.kind == "mlp"
    assert spec.model.hidden == (8,)
    assert spec.model.local_epochs == 2
    assert spec.privacy.mode == "dp"
    assert spec.privacy.noise_multiplier == 0.5


def test_spec_json_round_trip(tmp_path: Path) -> None:
    spec = JobSpec.from_toml(write(tmp_path, SPEC_TOML))
    assert JobSpec.from_json(spec.to_json()) == spec


def test_spec_defaults_match_flights_task() -> None:
    spec = JobSpec()
    assert spec.features.categorical == (
        "month",
        "weekday",
        "hour",
        "carrier",
        "origin",
    )
    assert spec.features.numeric == ("distance",)
    assert spec.target.column == "arr_delay"
    assert spec.target.threshold == 15.0
    assert spec.test_fraction == 0.2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rounds = 0", "rounds must be at least 1"),
        ("colour = 'red'", "unknown key(s) ['colour']"),
        ("[model]\nkind = 'forest'", "model kind 'forest' is unknown"),
        ("[model]\nepochs = 2", "unknown key(s) ['epochs'] in [model]"),
        ("[privacy]\nmode = 'magic'", "privacy mode 'magic' is unknown"),
        ("test_fraction = 1.0", "test_fraction must lie strictly between 0 and 1"),
        (
            "[features]\nnumeric = ['arr_delay']",
            "target column 'arr_delay' is also a feature",
        ),
        (
            "[features]\ncategorical = ['month']\nnumeric = ['month']",
            "listed as both categorical and numeric",
        ),
        ("rounds = ", "is not valid TOML"),
    ],
)
def test_spec_invalid_values_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        JobSpec.from_toml(write(tmp_path, text))
    assert message in str(caught.value)


def test_spec_missing_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not found"):
        JobSpec.from_toml(tmp_path / "absent.toml")
