import pytest

from citymesh.catalog.models import DatasetEntry
from citymesh.catalog.policy import ExtractRequest, check_training, plan_extract
from citymesh.errors import InvalidInput, PolicyViolation

COLUMNS = [{"name": "hour", "type": "int64"}, {"name": "email", "type": "string"}]


def entry(grade: str, **policy) -> DatasetEntry:
    return DatasetEntry(
        id="ewr:x",
        name="x",
        city="ewr",
        code="04.5.1",
        grade=grade,
        columns=COLUMNS,
        policy=policy,
        pii=[{"column": "email", "category": "email"}],
    )


def test_training_by_grade():
    check_training(entry("general.2"), secure_aggregation=False)
    check_training(entry("important"), secure_aggregation=True)
    with pytest.raises(PolicyViolation, match="only with secure aggregation"):
        check_training(entry("important"), secure_aggregation=False)
    with pytest.raises(PolicyViolation, match="takes part in no job"):
        check_training(entry("core"), secure_aggregation=True)


def test_extract_plan_general():
    plan = plan_extract(
        entry("general", deid={"email": {"action": "hash"}}),
        ExtractRequest("ewr:x", "study", ["hour"], [["hour", ">=", 7]]),
        consumer_city="jfk",
        approved=False,
    )
    assert plan.columns == ["hour"]
    assert plan.rules == {"email": {"action": "hash"}}
    assert str(plan.expression) == "(hour >= 7)"


def test_extract_important_needs_rules_for_personal_columns():
    request = ExtractRequest("ewr:x", "study")
    with pytest.raises(PolicyViolation, match=r"personal columns \['email'\]"):
        plan_extract(entry("important"), request, consumer_city="jfk", approved=True)
    plan = plan_extract(
        entry("important", deid={"email": {"action": "drop"}}),
        request,
        consumer_city="jfk",
        approved=True,
    )
    assert plan.columns == ["hour", "email"]


def test_extract_request_validation():
    with pytest.raises(InvalidInput, match="invalid purpose ''"):
        ExtractRequest.from_json({"dataset_id": "ewr:x", "purpose": ""})
    with pytest.raises(InvalidInput, match="invalid compression 'gzip'"):
        ExtractRequest.from_json(
            {"dataset_id": "ewr:x", "purpose": "p", "compression": "gzip"}
        )
    with pytest.raises(InvalidInput, match="needs a list value"):
        plan_extract(
            entry("general"),
            ExtractRequest("ewr:x", "p", filter=[["hour", "in", 3]]),
            consumer_city="jfk",
            approved=False,
        )
