from citymesh.audit import grade_policy
from citymesh.ledger.events import UsageEvent


def _event(kind, grade, **detail):
    return UsageEvent(
        kind=kind,
        dataset_id="north:stops",
        provider="north",
        consumer="0xabc",
        purpose="research",
        detail={"grade": grade, **detail},
    )


def test_grade_policy_flags_core_exchange():
    check = grade_policy()
    reason = check(_event("exchange", "core"))
    assert reason == "core dataset 'north:stops' was used: exchange event"


def test_grade_policy_flags_important_without_deid():
    check = grade_policy()
    assert check(_event("exchange", "important", deid={})) == (
        "important dataset 'north:stops' left its node without de-identification"
    )
    assert check(_event("exchange", "important", deid={"name": "drop"})) is None


def test_grade_policy_flags_important_training_without_secagg():
    check = grade_policy()
    assert check(_event("train_round", "important", privacy="dp")) is not None
    assert check(_event("train_round", "important", privacy="secagg")) is None


def test_grade_policy_catalog_grade_overrides_event():
    check = grade_policy({"north:stops": "core"})
    assert check(_event("train_round", "general.1")) is not None
    assert grade_policy()(_event("train_round", "general.1")) is None
