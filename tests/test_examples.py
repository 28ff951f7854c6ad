from pathlib import Path

from citymesh.federation import JobSpec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_example_job_spec_parses():
    spec = JobSpec.from_toml(EXAMPLES / "late-arrivals.toml")
    assert spec.id == "late-arrivals-example"
    assert sorted(spec.datasets) == ["EWR", "JFK", "LGA"]
    assert spec.target.column == "arr_delay"
    assert "arr_delay" not in spec.features.numeric
    assert "dep_delay" not in spec.features.numeric
