"""Usage events: validation, canonical form, hashes and Ed25519 signatures."""

import hashlib
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from citymesh.errors import InvalidInput
from citymesh.ledger.canonical import canonical_json
from citymesh.ledger.events import (
    GENESIS_HASH,
    KINDS,
    UsageEvent,
    canonical_event,
    chain_hash,
    event_hash,
    invalid_signers,
    sign_event,
)


def _event(**changes):
    fields = dict(
        kind="exchange",
        dataset_id="bcn-traffic-2024",
        provider="barcelona",
        consumer="madrid",
        purpose="mobility-planning",
        rows=1200,
        bytes=48_000,
        time=1_700_000_000.1234,
        detail={"columns": ["hour", "count"], "share": 0.25},
    )
    fields.update(changes)
    return UsageEvent(**fields)


def _public_hex(key):
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def test_event_canonical_bytes_exact():
    event = _event(time=1_700_000_000.5, detail={})
    assert canonical_event(event) == (
        b'{"bytes":48000,"consumer":"madrid","dataset_id":"bcn-traffic-2024",'
        b'"detail":{},"job_id":"","kind":"exchange","provider":"barcelona",'
        b'"purpose":"mobility-planning","round":0,"rows":1200,"signatures":{},'
        b'"time_ms":1700000000500,"v":1}'
    )


def test_event_hash_is_sha256_of_canonical_bytes():
    event = _event()
    assert event_hash(event) == hashlib.sha256(canonical_event(event)).digest()


def test_event_time_rounds_to_milliseconds():
    event = _event(time=1_700_000_000.1234)
    assert event.time_ms == 1_700_000_000_123
    assert event.time == 1_700_000_000.123


def test_event_dict_round_trip_keeps_hash():
    event = _event()
    again = UsageEvent.from_dict(event.to_dict())
    assert again == event
    assert event_hash(again) == event_hash(event)


@pytest.mark.parametrize(
    "changes",
    [
        {"kind": "download"},
        {"rows": -1},
        {"bytes": 1.5},
        {"round": True},
        {"time": float("nan")},
        {"time": -1.0},
        {"provider": None},
        {"detail": {"when": b"x"}},
        {"signatures": {"AB" * 32: "00" * 64}},
        {"signatures": {"ab" * 32: "00" * 63}},
    ],
)
def test_event_rejects_invalid_fields(changes):
    with pytest.raises(InvalidInput):
        _event(**changes)


def test_event_from_dict_rejects_unknown_keys():
    data = _event().to_dict()
    data["extra"] = 1
    with pytest.raises(InvalidInput, match="keys"):
        UsageEvent.from_dict(data)


def test_sign_event_both_parties_verify():
    provider_key = Ed25519PrivateKey.generate()
    consumer_key = Ed25519PrivateKey.generate()
    signed = sign_event(sign_event(_event(), provider_key), consumer_key)
    assert set(signed.signatures) == {
        _public_hex(provider_key),
        _public_hex(consumer_key),
    }
    assert invalid_signers(signed) == []


def test_sign_event_order_of_signers_irrelevant():
    first = Ed25519PrivateKey.generate()
    second = Ed25519PrivateKey.generate()
    one_way = sign_event(sign_event(_event(), first), second)
    other_way = sign_event(sign_event(_event(), second), first)
    assert event_hash(one_way) == event_hash(other_way)


def test_invalid_signers_names_key_after_change():
    key = Ed25519PrivateKey.generate()
    signed = sign_event(_event(), key)
    changed = replace(signed, rows=signed.rows + 1)
    assert invalid_signers(changed) == [_public_hex(key)]


def test_chain_hash_layout():
    digest = bytes(range(32))
    expected = hashlib.sha256(GENESIS_HASH + (7).to_bytes(8, "big") + digest).digest()
    assert chain_hash(GENESIS_HASH, 7, digest) == expected


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(sorted(KINDS)),
    names=st.tuples(texts, texts, texts, texts, texts),
    counts=st.tuples(*[st.integers(0, 2**53 - 1)] * 3),
    time_ms=st.integers(0, 4_102_444_800_000),
    detail=st.dictionaries(st.text(max_size=6), json_values, max_size=5),
)
def test_event_fast_canonical_equals_generic(kind, names, counts, time_ms, detail):
    dataset_id, provider, consumer, purpose, job_id = names
    rows, size, round_number = counts
    event = UsageEvent(
        kind,
        dataset_id,
        provider,
        consumer,
        purpose,
        rows=rows,
        bytes=size,
        job_id=job_id,
        round=round_number,
        time=time_ms / 1000,
        detail=detail,
    )
    event = sign_event(event, Ed25519PrivateKey.from_private_bytes(bytes(32)))
    assert canonical_event(event) == canonical_json(event.to_dict())
    assert event.time_ms == time_ms
