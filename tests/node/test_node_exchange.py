import csv
import dataclasses
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from citymesh.errors import AuthError, CitymeshError, InvalidInput, PolicyViolation
from citymesh.ledger.events import UsageEvent, invalid_signers
from citymesh.node.client import NodeClient

RESIDENTS = [
    (
        "Mary Johnson",
        "mary.johnson@example.org",
        "+1 612 555 0101",
        44.977753,
        -93.265015,
        34,
        "F",
        "Whittier",
    ),
    (
        "James Smith",
        "jsmith@example.com",
        "(612) 555-0102",
        44.948351,
        -93.275384,
        35,
        "M",
        "Whittier",
    ),
    (
        "Linda Brown",
        "linda.b@example.net",
        "612-555-0103",
        44.966617,
        -93.246458,
        36,
        "F",
        "Whittier",
    ),
    (
        "Robert Davis",
        "rdavis@example.org",
        "+1 612 555 0104",
        44.973711,
        -93.267431,
        37,
        "M",
        "Whittier",
    ),
    (
        "Patricia Miller",
        "pmiller@example.com",
        "612.555.0105",
        44.962189,
        -93.291214,
        38,
        "F",
        "Whittier",
    ),
    (
        "John Wilson",
        "john.wilson@example.org",
        "+1 612 555 0106",
        44.951042,
        -93.232184,
        41,
        "M",
        "Phillips",
    ),
]


@pytest.fixture(scope="module")
def residents_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "residents.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "full_name",
                "email",
                "phone",
                "lat",
                "long",
                "age",
                "gender",
                "neighborhood",
            ]
        )
        writer.writerows(RESIDENTS)
    return path


def operator(node) -> NodeClient:
    return NodeClient(node.url, operator_token=node.operator_token)


def consumer(node, who=None) -> NodeClient:
    return NodeClient(node.url, who or node.peer)


def log_events(node) -> list[dict]:
    with NodeClient(node.url, node.regulator) as client:
        return client.events()


def test_extract_general_streams_filtered_rows(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    with consumer(running_node) as client:
        result = client.extract(
            "ewr:flights",
            purpose="research",
            columns=["carrier", "distance"],
            row_filter=[["distance", ">", 1000]],
        )
    local = pq.read_table(running_node.settings.data_dir / "flights.parquet")
    expected = local.filter(pc.greater(local["distance"], 1000))
    assert result.table.column_names == ["carrier", "distance"]
    assert result.table.num_rows == expected.num_rows
    assert result.table["carrier"].to_pylist() == expected["carrier"].to_pylist()
    assert result.receipt["seq"] == 2
    event = UsageEvent.from_dict(result.receipt["event"])
    assert event.kind == "exchange"
    assert event.rows == expected.num_rows
    assert event.bytes == result.size
    assert event.detail["sha256"] == result.sha256
    assert set(event.signatures) == {
        running_node.identity.public_key.hex(),
        running_node.peer.public_key.hex(),
    }
    assert invalid_signers(event) == []


def test_extract_core_rejected_and_logged(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="secret", code="04.5.4", grade="core")
    with (
        consumer(running_node) as client,
        pytest.raises(PolicyViolation, match="HTTP 403.*core data never leaves"),
    ):
        client.extract("ewr:secret", purpose="research")
    refusal = log_events(running_node)[-1]["event"]
    assert refusal["kind"] == "refusal"
    assert refusal["consumer"] == running_node.peer.account
    assert "core" in refusal["detail"]["reason"]


def test_extract_important_needs_approval_and_deid(running_node, residents_csv):
    with operator(running_node) as client:
        entry = client.ingest(
            residents_csv, name="residents", code="10.7.0", grade="important"
        )
    found = {item["column"]: item["category"] for item in entry["pii"]}
    assert found["full_name"] == "person_name"
    assert found["email"] == "email"
    assert found["phone"] == "phone"
    assert found["lat"] == "coordinates"
    assert found["long"] == "coordinates"
    assert found["age"] == "quasi_identifier"
    with (
        consumer(running_node) as client,
        pytest.raises(PolicyViolation, match="needs an approval"),
    ):
        client.extract("ewr:residents", purpose="housing study")
    with operator(running_node) as client:
        client.approve("ewr:residents", running_node.peer.account, "housing study")
    with consumer(running_node) as client:
        result = client.extract("ewr:residents", purpose="housing study")
        with pytest.raises(PolicyViolation, match="needs an approval"):
            client.extract("ewr:residents", purpose="marketing")
        with pytest.raises(PolicyViolation, match="would reveal its raw values"):
            client.extract(
                "ewr:residents",
                purpose="housing study",
                row_filter=[["email", "==", "rdavis@example.org"]],
            )
    table = result.table
    assert "full_name" not in table.column_names
    assert table["email"][0].as_py() != RESIDENTS[0][1]
    assert len(table["email"][0].as_py()) == 32
    assert table["phone"][0].as_py() == "*************01"
    assert table["lat"].to_pylist()[0] == pytest.approx(44.97)
    assert table["age"].to_pylist() == [34, 35, 36, 37, 38, 41]


def test_extract_k_anonymity_enforced(running_node, residents_csv):
    with operator(running_node) as client:
        client.ingest(residents_csv, name="residents", code="10.7.0")
        policy = {
            "deid": {
                "full_name": {"action": "drop"},
                "email": {"action": "drop"},
                "phone": {"action": "drop"},
                "age": {"action": "generalize", "band": 10},
            },
            "quasi_identifiers": ["age", "neighborhood"],
            "k": 5,
        }
        client.set_policy("ewr:residents", policy)
    with consumer(running_node) as client:
        with pytest.raises(PolicyViolation, match="not 5-anonymous"):
            client.extract("ewr:residents", purpose="study")
        filtered = client.extract(
            "ewr:residents",
            purpose="study",
            row_filter=[["neighborhood", "==", "Whittier"]],
        )
    assert filtered.table["age"].to_pylist() == ["30-39"] * 5


def test_extract_purpose_and_city_policy(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
        client.set_policy("ewr:flights", {"purposes": ["planning"]})
    with consumer(running_node) as client:
        with pytest.raises(PolicyViolation, match="purpose 'ads' is not allowed"):
            client.extract("ewr:flights", purpose="ads")
        assert client.extract("ewr:flights", purpose="planning").table.num_rows == 2000
    with operator(running_node) as client:
        client.set_policy("ewr:flights", {"cities": ["lga"]})
    with (
        consumer(running_node) as client,
        pytest.raises(PolicyViolation, match="city 'jfk' may not receive"),
    ):
        client.extract("ewr:flights", purpose="planning")


def test_extract_regulator_role_rejected(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    with (
        consumer(running_node, running_node.regulator) as client,
        pytest.raises(AuthError, match="only city nodes and hubs"),
    ):
        client.extract("ewr:flights", purpose="audit")


def test_extract_bad_request_rejected(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    with consumer(running_node) as client:
        with pytest.raises(InvalidInput, match="no columns \\['nope'\\]"):
            client.extract("ewr:flights", purpose="x", columns=["nope"])
        with pytest.raises(InvalidInput, match="invalid filter operator '~'"):
            client.extract(
                "ewr:flights", purpose="x", row_filter=[["distance", "~", 1]]
            )


def test_receipt_unconfirmed_logged_by_sweep(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    with consumer(running_node) as client:
        result = client.extract("ewr:flights", purpose="research", confirm=False)
    context = running_node.app.state.context
    # The server registers the receipt after the last chunk left, so wait for it.
    deadline = time.monotonic() + 10
    while context.exchange.pending() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert context.exchange.sweep(max_age_s=0) == 1
    event = log_events(running_node)[-1]["event"]
    assert event["kind"] == "exchange"
    assert event["detail"]["receipt"] == "unconfirmed"
    assert event["detail"]["exchange_id"] == result.exchange_id
    assert list(event["signatures"]) == [running_node.identity.public_key.hex()]


def test_receipt_bad_signature_rejected(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    with consumer(running_node) as client:
        result = client.extract("ewr:flights", purpose="research", confirm=False)
        path = f"/exchange/{result.exchange_id}/receipt"
        with pytest.raises(AuthError, match="does not verify"):
            client._request("POST", path, signed=True, json={"signature": "ab" * 64})
        receipt = client.confirm_receipt(result)
    assert receipt["event"]["detail"]["exchange_id"] == result.exchange_id


def test_receipt_without_draft_compares_the_providers_event(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    with consumer(running_node) as client:
        result = client.extract("ewr:flights", purpose="research", confirm=False)
        assert result.draft["detail"]["exchange_id"] == result.exchange_id
        assert result.draft["rows"] == 0
        result.draft = None
        result.size += 1
        with pytest.raises(CitymeshError, match="the client received"):
            client.confirm_receipt(result)
        result.size -= 1
        receipt = client.confirm_receipt(result)
    assert receipt["event"]["bytes"] == result.size


def test_receipt_signed_over_other_rows_rejected(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    with consumer(running_node) as client:
        result = client.extract(
            "ewr:flights",
            purpose="research",
            row_filter=[["distance", ">", 1000]],
            confirm=False,
        )
        truncated = dataclasses.replace(result, table=result.table.slice(1))
        with pytest.raises(AuthError, match="differs from the provider"):
            client.confirm_receipt(truncated)
        receipt = client.confirm_receipt(result)
    assert receipt["event"]["rows"] == result.table.num_rows


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"purpose": ["research"]}, "unknown policy keys \\['purpose'\\]"),
        ({"k": 5, "quasi_identifiers": ["nope"]}, "\\['nope'\\] are not columns"),
        ({"k": True, "quasi_identifiers": ["age"]}, "policy k must be a whole"),
        ({"k": 3}, "policy k 3 needs quasi_identifiers"),
        ({"deid": {"email": "drop"}}, "invalid de-identification rule 'drop'"),
        ({"deid": {"lat": {"action": "generalize", "cell": 0}}}, "invalid cell 0"),
        ({"deid": {"lat": {"action": "generalize", "cell": -1}}}, "invalid cell -1"),
        (
            {"deid": {"lat": {"action": "generalize", "cell": "abc"}}},
            "invalid cell 'abc'",
        ),
        (
            {"deid": {"phone": {"action": "mask", "keep_last": "x"}}},
            "invalid keep_last 'x'",
        ),
        (
            {"deid": {"phone": {"action": "mask", "keep": 2}}},
            "unknown options \\['keep'\\] in the mask rule",
        ),
        (
            {"deid": {"neighborhood": {"action": "generalize"}}},
            "column 'neighborhood' contains text",
        ),
        (
            {"deid": {"gender": {"action": "generalize", "band": 10}}},
            "has type string, but cell and band generalize numbers",
        ),
        (
            {"deid": {"age": {"action": "generalize", "to": "week"}}},
            "invalid to 'week'",
        ),
        (
            {"deid": {"age": {"action": "generalize", "band": 5, "cell": 1}}},
            "set one of cell",
        ),
    ],
)
def test_policy_rejects_weak_or_malformed(running_node, residents_csv, policy, message):
    with operator(running_node) as client:
        client.ingest(residents_csv, name="residents", code="03.1.0")
        before = client.dataset("ewr:residents")["policy"]
        with pytest.raises(InvalidInput, match=message):
            client.set_policy("ewr:residents", policy)
        assert client.dataset("ewr:residents")["policy"] == before


def test_filter_of_wrong_type_rejected_before_stream(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    with consumer(running_node) as client:
        with pytest.raises(InvalidInput, match="invalid filter \\[\\['month', '=="):
            client.extract(
                "ewr:flights", purpose="research", row_filter=[["month", "==", "one"]]
            )
    kinds = [item["event"]["kind"] for item in log_events(running_node)]
    assert "exchange" not in kinds


def test_policy_change_and_revocation_logged(running_node, residents_csv):
    policy = {"purposes": ["research"], "deid": {"email": {"action": "hash"}}}
    with operator(running_node) as client:
        client.ingest(residents_csv, name="residents", code="03.1.0")
        client.set_policy("ewr:residents", policy)
        approval = client.approve(
            "ewr:residents", running_node.peer.account, "research"
        )
        client.revoke_approval(approval["id"])
    events = [item["event"] for item in log_events(running_node)]
    kinds = [event["kind"] for event in events]
    assert kinds[-3:] == ["policy", "approval", "revocation"]
    assert events[-3]["detail"]["policy"] == policy
    assert events[-3]["dataset_id"] == "ewr:residents"
    assert events[-1]["detail"]["approval_id"] == approval["id"]
    assert events[-1]["consumer"] == running_node.peer.account.lower()
    assert events[-1]["purpose"] == "research"
