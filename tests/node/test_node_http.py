from pathlib import Path

import httpx
import pytest

from citymesh.catalog.ingest import FileTooLarge
from citymesh.catalog.names import UnsafeName
from citymesh.errors import AuthError, InvalidInput, NotFound
from citymesh.node.client import NodeClient
from citymesh.node.signing import sign_headers


@pytest.fixture
def flights_csv(flights_head) -> Path:
    """The first 3,000 flights as CSV."""
    return flights_head(3000)


def operator_client(node) -> NodeClient:
    return NodeClient(node.url, operator_token=node.operator_token, timeout=30)


def ingest_flights(node, flights_csv, name="flights"):
    with operator_client(node) as client:
        return client.ingest(
            flights_csv,
            name=name,
            code="04.5.4",
            grade="general",
            title="Flights from Newark",
            keywords=["air"],
        )


def test_health_and_identity(running_node):
    with NodeClient(running_node.url) as client:
        health = client.health()
        identity = client.identity()
    assert health == {"status": "ok", "city": "ewr", "datasets": 0, "usage_head": 0}
    assert identity["account"] == running_node.identity.account
    assert identity["pubkey"] == running_node.identity.public_key.hex()
    assert identity["code_list"]["version"] == "1.0.0"


def test_ingest_over_http_logs_event(running_node, flights_csv):
    entry = ingest_flights(running_node, flights_csv)
    assert entry["id"] == "ewr:flights"
    assert entry["rows"] == 3000
    assert (running_node.settings.data_dir / "flights.parquet").is_file()
    assert list((running_node.settings.data_dir / ".incoming").iterdir()) == []
    with NodeClient(running_node.url, running_node.regulator) as client:
        events = client.events()
    assert len(events) == 1
    assert events[0]["seq"] == 1
    assert events[0]["event"]["kind"] == "ingest"
    assert events[0]["event"]["dataset_id"] == "ewr:flights"
    assert events[0]["event"]["rows"] == 3000


def test_ingest_without_token_rejected(running_node, flights_csv):
    with (
        NodeClient(running_node.url, operator_token="wrong") as client,
        pytest.raises(AuthError, match="HTTP 401.*operator token"),
    ):
        client.ingest(flights_csv, name="flights", code="04.5.4")
    response = httpx.post(
        f"{running_node.url}/catalog/ingest",
        params={"name": "x", "code": "04.5.4", "format": "csv"},
        content=b"a\n1\n",
        timeout=10,
    )
    assert response.status_code == 401
    assert not (running_node.settings.data_dir / "x.parquet").exists()


def test_ingest_bad_inputs_rejected(running_node, flights_csv, tmp_path):
    with operator_client(running_node) as client:
        with pytest.raises(UnsafeName, match="HTTP 400.*invalid dataset name"):
            client.ingest(flights_csv, name="..%2Fescape", code="04.5.4")
        with pytest.raises(InvalidInput, match="unknown classification code"):
            client.ingest(flights_csv, name="flights", code="99.1")
        empty = tmp_path / "empty.csv"
        empty.write_bytes(b"")
        with pytest.raises(InvalidInput, match="is empty"):
            client.ingest(empty, name="empty", code="04.5.4")
        big = tmp_path / "big.csv"
        big.write_bytes(b"a\n" + b"1\n" * 1_100_000)
        with pytest.raises(FileTooLarge, match="HTTP 413"):
            client.ingest(big, name="big", code="04.5.4")
    assert sorted(p.name for p in running_node.settings.data_dir.iterdir()) == [
        ".incoming"
    ]


def test_search_and_read_over_http(running_node, flights_csv):
    ingest_flights(running_node, flights_csv)
    with NodeClient(running_node.url) as client:
        page = client.search(code="04.5")
        empty = client.search(code="07")
        entry = client.dataset("ewr:flights")
        with pytest.raises(NotFound, match="HTTP 404"):
            client.dataset("ewr:none")
    assert [item["id"] for item in page["items"]] == ["ewr:flights"]
    assert page["total"] == 1
    assert empty["items"] == []
    assert entry["quality"]["rows"] == 3000
    with NodeClient(running_node.url, running_node.regulator) as client:
        kinds = [(e["event"]["kind"], e["event"]["consumer"]) for e in client.events()]
    assert kinds == [
        ("ingest", "operator"),
        ("query", "anonymous"),
        ("query", "anonymous"),
    ]


def test_signed_search_records_consumer(running_node, flights_csv):
    ingest_flights(running_node, flights_csv)
    with NodeClient(running_node.url, running_node.peer) as client:
        client.search(keyword="newark")
        events = client.events(from_seq=2)
    assert events[0]["event"]["consumer"] == running_node.peer.account
    assert events[0]["event"]["dataset_id"] == "ewr:flights"


def test_events_unsigned_rejected(running_node):
    response = httpx.get(f"{running_node.url}/ledger/events", timeout=10)
    assert response.status_code == 401
    assert "unsigned request" in response.json()["detail"]


def test_events_revoked_and_replay_rejected(running_node):
    with (
        NodeClient(running_node.url, running_node.revoked) as client,
        pytest.raises(AuthError, match="revoked signer"),
    ):
        client.events()
    headers = sign_headers(
        running_node.peer,
        "GET",
        b"/ledger/events",
        b"",
        target_account=running_node.identity.account,
    )
    first = httpx.get(f"{running_node.url}/ledger/events", headers=headers, timeout=10)
    again = httpx.get(f"{running_node.url}/ledger/events", headers=headers, timeout=10)
    assert first.status_code == 200
    assert again.status_code == 401
    assert "replayed request" in again.json()["detail"]


def test_events_range(running_node, flights_csv):
    ingest_flights(running_node, flights_csv, name="one")
    ingest_flights(running_node, flights_csv, name="two")
    ingest_flights(running_node, flights_csv, name="three")
    with NodeClient(running_node.url, running_node.regulator) as client:
        events = client.events(from_seq=2, to_seq=3)
    assert [e["seq"] for e in events] == [2, 3]
    assert [e["event"]["dataset_id"] for e in events] == ["ewr:two", "ewr:three"]


def test_anchor_without_chain_rejected(running_node):
    with (
        operator_client(running_node) as client,
        pytest.raises(InvalidInput, match="no chain configured"),
    ):
        client.anchor()
