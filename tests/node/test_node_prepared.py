"""Prepared extract streams: encoded at ingest, sent as stored, never stale."""

import asyncio
import hashlib
import json
import os
import threading

import httpx
import pyarrow.parquet as pq
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from citymesh.catalog.deid import hash_values
from citymesh.catalog.policy import ExtractRequest
from citymesh.errors import CitymeshError, PolicyViolation
from citymesh.ledger.events import UsageEvent, invalid_signers, signing_payload
from citymesh.node import prepared as prepared_module
from citymesh.node.app import ClosingStreamingResponse, create_app
from citymesh.node.client import NodeClient
from citymesh.node.home import init_home
from citymesh.node.identity import NodeIdentity
from citymesh.node.prepared import PreparedExtracts, extract_key
from citymesh.node.signing import SignerInfo, dict_resolver

HASHED = {"deid": {"tailnum": {"action": "hash"}}}


def operator(node) -> NodeClient:
    return NodeClient(node.url, operator_token=node.operator_token)


def consumer(node) -> NodeClient:
    return NodeClient(node.url, node.peer)


def records(node) -> list[dict]:
    folder = node.settings.home / "extracts"
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def exchange_events(node) -> list[UsageEvent]:
    with NodeClient(node.url, node.regulator) as client:
        items = client.events()
    events = [UsageEvent.from_dict(item["event"]) for item in items]
    return [event for event in events if event.kind == "exchange"]


def test_ingest_prepares_and_extract_sends_it(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    [record] = records(running_node)
    assert record["dataset_id"] == "ewr:flights"
    assert record["rows"] == 2000
    with consumer(running_node) as client:
        result = client.extract("ewr:flights", purpose="research")
    local = pq.read_table(running_node.settings.data_dir / "flights.parquet")
    assert result.table.equals(local)
    assert result.size == record["bytes"]
    assert result.sha256 == record["sha256"]
    event = UsageEvent.from_dict(result.receipt["event"])
    assert event.detail["prepared"] is True
    assert event.detail["sha256"] == record["sha256"]
    assert invalid_signers(event) == []
    assert len(event.signatures) == 2


def test_filtered_extract_is_encoded_then_kept(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    request = {
        "columns": ["carrier", "distance"],
        "row_filter": [["distance", ">", 1000]],
    }
    with consumer(running_node) as client:
        first = client.extract("ewr:flights", purpose="research", **request)
        # The copy is flushed to disk in the background after the stream ends.
        running_node.app.state.context.exchange.prepared.wait_idle()
        second = client.extract("ewr:flights", purpose="research", **request)
    assert len(records(running_node)) == 2
    assert first.table.equals(second.table)
    assert first.sha256 == second.sha256
    flags = [event.detail["prepared"] for event in exchange_events(running_node)]
    assert flags == [False, True]


def test_policy_change_drops_stale_streams(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
        [before] = records(running_node)
        client.set_policy("ewr:flights", HASHED)
    [after] = records(running_node)
    assert after["sha256"] != before["sha256"]
    folder = running_node.settings.home / "extracts"
    assert not (folder / before["file"]).exists()
    with consumer(running_node) as client:
        result = client.extract("ewr:flights", purpose="research")
    local = pq.read_table(running_node.settings.data_dir / "flights.parquet")
    secret = running_node.app.state.context.secret
    expected = hash_values(local["tailnum"].combine_chunks(), secret)
    assert result.table["tailnum"].to_pylist() == expected.to_pylist()
    assert result.sha256 == after["sha256"]


def test_changed_stream_fails_the_consumers_check(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    [record] = records(running_node)
    path = running_node.settings.home / "extracts" / record["file"]
    data = bytearray(path.read_bytes())
    # Same length, one byte different near the end-of-stream marker, so the
    # Arrow stream still parses but no longer hashes to the record.
    data[-9] ^= 0xFF
    path.write_bytes(bytes(data))
    with consumer(running_node) as client:
        with pytest.raises(CitymeshError, match="broke off after 0 bytes"):
            client.extract("ewr:flights", purpose="research")
        # The node deleted the changed stream and encodes the extract again.
        result = client.extract("ewr:flights", purpose="research")
    assert result.sha256 == record["sha256"]
    first, second = exchange_events(running_node)
    assert first.detail["complete"] is False
    assert first.detail["sha256"] == hashlib.sha256(bytes(data)).hexdigest()
    assert len(first.signatures) == 1
    assert second.detail["prepared"] is False
    assert len(second.signatures) == 2


def test_truncated_stream_is_dropped_and_encoded_again(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    [record] = records(running_node)
    path = running_node.settings.home / "extracts" / record["file"]
    path.write_bytes(path.read_bytes()[:1000])
    with consumer(running_node) as client:
        result = client.extract("ewr:flights", purpose="research")
    assert result.table.num_rows == 2000
    assert result.sha256 == record["sha256"]
    [event] = exchange_events(running_node)
    assert event.detail["prepared"] is False


def test_preparing_off_keeps_nothing(tmp_path, running_node, flights_csv, serve_app):
    settings = init_home(tmp_path / "off", "off").model_copy(
        update={"prepared_extract_bytes": 0}
    )
    peer = running_node.peer
    resolver = dict_resolver({peer.account: (peer.public_key, 1, True, "jfk")})
    app = create_app(settings, resolve_signer=resolver)
    url = serve_app(app)
    context = app.state.context
    context.ingest(flights_csv, name="flights", code="04.5.4")
    with NodeClient(url, peer) as client:
        first = client.extract("off:flights", purpose="research")
        second = client.extract("off:flights", purpose="research")
    assert first.sha256 == second.sha256
    assert not list((settings.home / "extracts").glob("*"))


def test_core_dataset_is_not_prepared(running_node, flights_csv):
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4", grade="core")
    assert records(running_node) == []


def test_key_depends_on_everything_the_bytes_depend_on():
    base = {
        "dataset_sha256": "ab" * 32,
        "columns": ["a", "b"],
        "row_filter": [],
        "rules": {},
        "quasi_identifiers": [],
        "k": None,
        "compression": "lz4",
        "secret": b"s" * 32,
    }
    key = extract_key(**base)
    changes = {
        "dataset_sha256": "cd" * 32,
        "columns": ["b", "a"],
        "row_filter": [["a", ">", 1]],
        "rules": {"a": {"action": "hash"}},
        "quasi_identifiers": ["a"],
        "k": 5,
        "compression": "zstd",
        "secret": b"t" * 32,
    }
    for name, value in changes.items():
        assert extract_key(**{**base, name: value}) != key, name
    assert extract_key(**base) == key


def write_stream(store: PreparedExtracts, key: str, size: int):
    writer = store.writer(key, f"ewr:{key[:4]}")
    writer.write(b"x" * size)
    return writer.commit(rows=1, sha256="00" * 32)


def test_eviction_keeps_the_recently_sent(tmp_path):
    store = PreparedExtracts(tmp_path, limit_bytes=250)
    old = write_stream(store, "a" * 64, 100)
    newer = write_stream(store, "b" * 64, 100)
    os.utime(tmp_path / f"{old.key}.json", (1, 1))
    os.utime(tmp_path / f"{newer.key}.json", (2, 2))
    write_stream(store, "c" * 64, 100)
    assert store.find(old.key) is None
    assert store.find(newer.key) is not None
    assert store.total_bytes() == 200


def test_stream_over_the_limit_is_abandoned(tmp_path):
    store = PreparedExtracts(tmp_path, limit_bytes=50)
    assert write_stream(store, "a" * 64, 100) is None
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_crash_are_removed(tmp_path):
    store = PreparedExtracts(tmp_path, limit_bytes=10_000)
    published = write_stream(store, "a" * 64, 10)
    # A stream cut off before its record was written, and a temporary file.
    orphan = tmp_path / ("c" * 64 + "-000000000000.arrows")
    orphan.write_bytes(b"partial")
    partial = tmp_path / ("d" * 64 + "-000000000000.arrows.tmp")
    partial.write_bytes(b"partial")
    reopened = PreparedExtracts(tmp_path, limit_bytes=10_000)
    assert not orphan.exists()
    assert not partial.exists()
    assert reopened.find(published.key) == published


def test_record_without_its_file_is_ignored(tmp_path):
    store = PreparedExtracts(tmp_path, limit_bytes=10_000)
    stream = write_stream(store, "a" * 64, 10)
    stream.path.unlink()
    assert store.find(stream.key) is None
    assert not (tmp_path / f"{stream.key}.json").exists()


def test_negative_limit_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="invalid prepared extract limit -1"):
        PreparedExtracts(tmp_path, limit_bytes=-1)


def test_restricted_dataset_is_prepared_for_allowed_consumers(
    running_node, flights_csv
):
    policy = {"purposes": ["research"], "cities": ["jfk"], **HASHED}
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
        client.set_policy("ewr:flights", policy)
    [record] = records(running_node)
    with consumer(running_node) as client:
        result = client.extract("ewr:flights", purpose="research")
        with pytest.raises(PolicyViolation, match="purpose 'ads' is not allowed"):
            client.extract("ewr:flights", purpose="ads")
    assert result.sha256 == record["sha256"]


def test_cut_off_stream_logged_when_closed(running_node, flights_csv, monkeypatch):
    monkeypatch.setattr(prepared_module, "READ_CHUNK_BYTES", 1024)
    with operator(running_node) as client:
        client.ingest(flights_csv, name="flights", code="04.5.4")
    context = running_node.app.state.context
    signer = SignerInfo(running_node.peer.account, running_node.peer.public_key, 1)
    opened = context.exchange.open_extract(
        ExtractRequest("ewr:flights", "research"), signer
    )
    next(opened.chunks)
    next(opened.chunks)
    opened.chunks.close()
    [event] = exchange_events(running_node)
    assert event.detail["complete"] is False
    assert event.bytes == 1024
    assert context.exchange.pending() == 0


def test_response_closes_generator_on_disconnect(serve_app):
    closed = threading.Event()

    def chunks():
        try:
            for _ in range(10_000):
                yield b"x" * 1_000_000
        finally:
            closed.set()

    async def endpoint(request):
        return ClosingStreamingResponse(chunks())

    url = serve_app(Starlette(routes=[Route("/", endpoint)]))
    with httpx.stream("GET", url) as response:
        next(response.iter_raw())
    assert closed.wait(timeout=10)


def run_lifespan(app, work):
    """Start ``app``'s lifespan, call ``work()``, then stop it; return the result."""

    async def cycle():
        async with app.router.lifespan_context(app):
            return work()

    return asyncio.run(cycle())


def test_pending_receipt_survives_restart(tmp_path, flights_csv):
    settings = init_home(tmp_path / "ewr", "ewr")
    peer = NodeIdentity.generate()
    resolver = dict_resolver({peer.account: (peer.public_key, 1, True, "jfk")})
    signer = SignerInfo(peer.account, peer.public_key, 1, True, "jfk")
    app = create_app(settings, resolve_signer=resolver)

    def extract():
        context = app.state.context
        context.ingest(flights_csv, name="flights", code="04.5.4")
        opened = context.exchange.open_extract(
            ExtractRequest("ewr:flights", "research"), signer
        )
        return opened.exchange_id, b"".join(opened.chunks)

    exchange_id, received = run_lifespan(app, extract)
    restarted = create_app(settings, resolve_signer=resolver)

    def confirm():
        exchange = restarted.state.context.exchange
        assert exchange.pending() == 1
        event = UsageEvent.from_dict(exchange.receipt(exchange_id, signer))
        assert event.detail["sha256"] == hashlib.sha256(received).hexdigest()
        signature = peer.sign(signing_payload(event)).hex()
        return exchange.confirm(exchange_id, signer, signature)

    entry = run_lifespan(restarted, confirm)
    assert len(entry.event.signatures) == 2


def test_stream_hashed_at_write_needs_no_second_hash(tmp_path):
    store = PreparedExtracts(tmp_path, limit_bytes=10_000)
    stream = write_stream(store, "a" * 64, 10)
    with open(stream.path, "rb") as handle:
        assert store.is_verified(stream, store.identity(handle))
    os.utime(stream.path, ns=(1, 1))
    with open(stream.path, "rb") as handle:
        assert not store.is_verified(stream, store.identity(handle))
