"""Audit of a node's log and exported segments against anchored Merkle roots."""

import hashlib
import sqlite3
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citymesh.ledger.audit import verify_node, verify_segment
from citymesh.ledger.events import UsageEvent, canonical_event, chain_hash, sign_event
from citymesh.ledger.log import UsageLog
from citymesh.ledger.merkle import merkle_root
from citymesh.ledger.segment import AnchorRecord, load_segment

NODE = "0x5B38Da6a701c568545dCfcB03FcB875f56beddC4"
PROVIDER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
CONSUMER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def _raw(key):
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


PARTY_KEYS = {"barcelona": _raw(PROVIDER_KEY), "madrid": _raw(CONSUMER_KEY)}


def _event(i):
    event = UsageEvent(
        kind="exchange" if i % 4 == 0 else "query",
        dataset_id=f"bcn-{i % 3}",
        provider="barcelona",
        consumer="madrid",
        purpose="mobility-planning",
        rows=10 * i,
        bytes=100 * i,
        time=1_700_000_000 + i * 0.5,
        detail={"columns": ["hour", "count"], "share": i / 8},
    )
    if event.kind == "exchange":
        event = sign_event(sign_event(event, PROVIDER_KEY), CONSUMER_KEY)
    return event


def _anchor(log, from_seq, to_seq):
    """Record a batch as the anchorer does; return the anchor the chain would hold."""
    leaves = log.verified_entry_hashes(from_seq, to_seq)
    batch = log.add_batch(from_seq, to_seq, merkle_root(leaves), leaves)
    tx = "0x" + hashlib.sha256(batch.root).hexdigest()
    log.mark_anchored(from_seq, tx)
    return AnchorRecord(NODE, batch.root, from_seq, to_seq, batch.count, from_seq, tx)


def _anchored_log(path, events=20, batches=((1, 8), (9, 16))):
    log = UsageLog(path)
    log.append_many([_event(i) for i in range(1, events + 1)])
    anchors = [_anchor(log, a, b) for a, b in batches]
    return log, anchors


def _rewrite_from(log, seq, event, *, rechain):
    """Replace entry ``seq``'s event in the file, as an operator with SQL access can.

    With ``rechain`` the operator also recomputes every hash from ``seq`` on, so the
    hash chain alone no longer shows the change.
    """
    conn = sqlite3.connect(log.path)
    conn.execute("DROP TRIGGER entries_append_only_update")
    body = canonical_event(event)
    if not rechain:
        conn.execute("UPDATE entries SET event = ? WHERE seq = ?", (body, seq))
    else:
        prev = conn.execute(
            "SELECT prev_hash FROM entries WHERE seq = ?", (seq,)
        ).fetchone()[0]
        rows = conn.execute(
            "SELECT seq, event FROM entries WHERE seq >= ? ORDER BY seq", (seq,)
        ).fetchall()
        for current, stored in rows:
            data = body if current == seq else stored
            digest = hashlib.sha256(data).digest()
            entry_hash = chain_hash(prev, current, digest)
            conn.execute(
                "UPDATE entries SET event = ?, event_hash = ?, prev_hash = ?, "
                "entry_hash = ? WHERE seq = ?",
                (data, digest, prev, entry_hash, current),
            )
            prev = entry_hash
    conn.commit()
    conn.close()


def test_audit_untouched_log_passes(tmp_path):
    log, anchors = _anchored_log(tmp_path / "usage.db")
    verdict = verify_node(log.entries(), anchors, party_keys=PARTY_KEYS)
    assert verdict.ok, verdict.reason
    assert verdict.events == 20
    assert verdict.anchored == 16
    assert verdict.first_bad_seq is None


def test_audit_changed_event_named(tmp_path):
    log, anchors = _anchored_log(tmp_path / "usage.db")
    changed = replace(log.entry(6).event, rows=999_999)
    _rewrite_from(log, 6, changed, rechain=False)
    verdict = verify_node(log.entries(), anchors)
    assert not verdict.ok
    assert verdict.first_bad_seq == 6
    assert "hash" in verdict.reason


def test_audit_rechained_change_named_by_proofs(tmp_path):
    log, anchors = _anchored_log(tmp_path / "usage.db")
    changed = replace(log.entry(11).event, purpose="marketing")
    _rewrite_from(log, 11, changed, rechain=True)
    path = tmp_path / "segment.jsonl"
    log.export(path, anchors=anchors)
    verdict = verify_segment(path, anchors)
    assert not verdict.ok
    assert verdict.first_bad_seq == 11
    assert "inclusion proof" in verdict.reason


def test_audit_rechained_change_without_proofs_names_batch(tmp_path):
    log, anchors = _anchored_log(tmp_path / "usage.db")
    changed = replace(log.entry(11).event, purpose="marketing")
    _rewrite_from(log, 11, changed, rechain=True)
    verdict = verify_node(log.entries(), anchors)
    assert not verdict.ok
    # Without proofs the anchored root locates the change only to its batch, 9..16.
    assert verdict.first_bad_seq == 9
    assert "anchored root" in verdict.reason


def test_audit_missing_anchored_entry_named(tmp_path):
    log, anchors = _anchored_log(tmp_path / "usage.db")
    entries = [e for e in log.entries() if e.seq != 13]
    verdict = verify_node(entries, anchors)
    assert not verdict.ok
    assert verdict.first_bad_seq == 13
    assert "missing" in verdict.reason


def test_audit_withheld_tail_detected(tmp_path):
    log, anchors = _anchored_log(tmp_path / "usage.db")
    verdict = verify_node(log.entries(1, 12), anchors)
    assert not verdict.ok
    assert verdict.first_bad_seq == 13


def test_audit_bad_signature_named(tmp_path):
    log = UsageLog(tmp_path / "usage.db")
    log.append_many([_event(1), _event(2)])
    signed = _event(4)
    forged = dict(signed.signatures)
    forged[_raw(CONSUMER_KEY).hex()] = "00" * 64
    log.append(replace(signed, signatures=forged))  # a receipt logged with a forgery
    verdict = verify_node(log.entries(), [])
    assert not verdict.ok
    assert verdict.first_bad_seq == 3
    assert _raw(CONSUMER_KEY).hex() in verdict.reason


def test_audit_exchange_needs_both_parties(tmp_path):
    log = UsageLog(tmp_path / "usage.db")
    unsigned = replace(_event(4), signatures={})
    log.append(sign_event(unsigned, PROVIDER_KEY))
    verdict = verify_node(log.entries(), [], party_keys=PARTY_KEYS)
    assert not verdict.ok
    assert verdict.first_bad_seq == 1
    assert "consumer 'madrid'" in verdict.reason
    assert verify_node(log.entries(), []).ok  # without known keys, only validity


def test_audit_gap_between_anchors_rejected(tmp_path):
    log, anchors = _anchored_log(
        tmp_path / "usage.db", batches=((1, 4), (5, 9), (10, 16))
    )
    verdict = verify_node(log.entries(), [anchors[0], anchors[2]])
    assert not verdict.ok
    assert "not consecutive" in verdict.reason


def test_audit_segment_offline_passes(tmp_path):
    log, anchors = _anchored_log(tmp_path / "usage.db")
    path = tmp_path / "segment.jsonl"
    log.export(path, 5, 20, anchors=anchors)
    offline = verify_segment(path)
    assert offline.ok, offline.reason
    assert offline.events == 16
    assert offline.anchored == 12
    assert verify_segment(path, anchors).ok


def test_audit_segment_anchor_not_on_chain(tmp_path):
    log, anchors = _anchored_log(tmp_path / "usage.db")
    path = tmp_path / "segment.jsonl"
    log.export(path, anchors=anchors)
    chain = [anchors[0], replace(anchors[1], block=999)]
    verdict = verify_segment(path, chain)
    assert not verdict.ok
    assert "not on the chain" in verdict.reason


def test_audit_segment_broken_line_named(tmp_path):
    log, anchors = _anchored_log(tmp_path / "usage.db")
    path = tmp_path / "segment.jsonl"
    log.export(path, anchors=anchors)
    lines = path.read_bytes().split(b"\n")
    lines[7] = lines[7][:-5]  # line 8 contains entry 7
    path.write_bytes(b"\n".join(lines))
    verdict = verify_segment(path, anchors)
    assert not verdict.ok
    assert verdict.first_bad_seq == 7
    assert verdict.events == 6


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segment")
    log, anchors = _anchored_log(
        folder / "usage.db", events=12, batches=((1, 5), (6, 10))
    )
    path = folder / "segment.jsonl"
    log.export(path, anchors=anchors)
    log.close()
    original = path.read_bytes()
    assert verify_segment(path, anchors).ok
    assert load_segment(path).to_seq == 12
    return folder / "mutated.jsonl", original, anchors


single_byte_changes = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 10**9), st.integers(1, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**9), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**9), st.integers(0, 255)),
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(change=single_byte_changes)
def test_audit_detects_every_single_byte_change(exported, change):
    path, original, anchors = exported
    action, position, value = change
    data = bytearray(original)
    if action == "replace":
        index = position % len(data)
        data[index] ^= value  # value is 1..255, so the byte always changes
    elif action == "delete":
        del data[position % len(data)]
    else:
        data.insert(position % (len(data) + 1), value)
    path.write_bytes(bytes(data))
    verdict = verify_segment(path, anchors)
    assert not verdict.ok, f"{action} at {position % len(original)} went unnoticed"


def test_audit_segment_broken_anchor_line_not_blamed_on_entry(tmp_path):
    log, anchors = _anchored_log(tmp_path / "usage.db")
    path = tmp_path / "segment.jsonl"
    log.export(path, anchors=anchors)
    lines = path.read_bytes().split(b"\n")
    lines[-2] = lines[-2].replace(b'"type":"anchor"', b'"type":"anchr"')
    path.write_bytes(b"\n".join(lines))
    verdict = verify_segment(path)
    assert not verdict.ok
    assert verdict.first_bad_seq is None
    assert "line 23" in verdict.reason
