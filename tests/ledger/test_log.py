"""The usage log: appends, the hash chain, batches, proofs and export on real SQLite."""

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from citymesh.errors import InvalidInput, NotFound
from citymesh.ledger.events import GENESIS_HASH, UsageEvent, chain_hash, event_hash
from citymesh.ledger.log import LogIntegrityError, UsageLog
from citymesh.ledger.merkle import merkle_root
from citymesh.ledger.proofs import verify_anchor_consistency, verify_event_proof
from citymesh.ledger.segment import AnchorRecord, load_segment


def _event(i, **changes):
    fields = dict(
        kind="query",
        dataset_id=f"ds-{i % 3}",
        provider="barcelona",
        consumer="madrid",
        purpose="research",
        rows=i,
        time=1_700_000_000 + i,
    )
    fields.update(changes)
    return UsageEvent(**fields)


def _anchor_batch(log, from_seq, to_seq, tx="0x01"):
    leaves = log.verified_entry_hashes(from_seq, to_seq)
    batch = log.add_batch(from_seq, to_seq, merkle_root(leaves), leaves)
    log.mark_anchored(from_seq, tx)
    return AnchorRecord("0xNode", batch.root, from_seq, to_seq, batch.count, 5, tx)


@pytest.fixture
def log(tmp_path):
    with UsageLog(tmp_path / "usage.db") as opened:
        yield opened


def test_log_append_returns_chained_entries(log):
    first = log.append(_event(1))
    second = log.append(_event(2))
    assert first.seq == 1
    assert second.seq == 2
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.entry_hash
    assert first.event_hash == event_hash(_event(1))
    assert second.entry_hash == chain_hash(first.entry_hash, 2, second.event_hash)


def test_log_entries_read_back_equal(log):
    appended = log.append_many([_event(i) for i in range(1, 8)])
    assert log.head() == 7
    assert log.entries() == appended
    assert log.entries(3, 5) == appended[2:5]
    assert log.entry(4) == appended[3]


def test_log_empty_head_zero(log):
    assert log.head() == 0
    assert log.entries() == []
    with pytest.raises(NotFound):
        log.entry(1)


def test_log_persists_across_reopen(tmp_path):
    path = tmp_path / "usage.db"
    with UsageLog(path) as first:
        appended = first.append_many([_event(i) for i in range(5)])
    with UsageLog(path) as again:
        assert again.entries() == appended
        assert again.append(_event(9)).prev_hash == appended[-1].entry_hash


def test_log_uses_wal_and_full_sync(log):
    conn = sqlite3.connect(log.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert log._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_log_rejects_update_and_delete(log):
    log.append(_event(1))
    conn = sqlite3.connect(log.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE entries SET event = x'00' WHERE seq = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM entries")
    finally:
        conn.close()


def test_log_append_rejects_non_event(log):
    with pytest.raises(InvalidInput, match="UsageEvent"):
        log.append({"kind": "query"})
    assert log.head() == 0


def test_log_missing_folder_not_found(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        UsageLog(tmp_path / "absent" / "usage.db")


def test_log_two_processes_append_one_chain(tmp_path):
    path = tmp_path / "usage.db"
    UsageLog(path).close()
    script = textwrap.dedent(
        """
        import sys
        from citymesh.ledger.events import UsageEvent
        from citymesh.ledger.log import UsageLog
        log = UsageLog(sys.argv[1])
        for i in range(60):
            log.append(UsageEvent("query", "ds", "bcn", sys.argv[2], "research",
                                  rows=i, time=1.0))
        """
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(path), name])
        for name in ("writer-a", "writer-b")
    ]
    for worker in workers:
        assert worker.wait(timeout=60) == 0
    with UsageLog(path) as log:
        entries = log.entries()
        assert [e.seq for e in entries] == list(range(1, 121))
        assert len(log.verified_entry_hashes(1, 120)) == 120
        for name in ("writer-a", "writer-b"):
            rows = [e.event.rows for e in entries if e.event.consumer == name]
            assert rows == list(range(60))


def test_log_verified_hashes_name_changed_row(log):
    log.append_many([_event(i) for i in range(6)])
    conn = sqlite3.connect(log.path)
    conn.execute("DROP TRIGGER entries_append_only_update")
    conn.execute(
        "UPDATE entries SET event = replace(event, 'madrid', 'sevill') WHERE seq = 4"
    )
    conn.commit()
    conn.close()
    with pytest.raises(LogIntegrityError) as caught:
        log.verified_entry_hashes(1, 6)
    assert caught.value.seq == 4


def test_log_batches_in_order_only(log):
    log.append_many([_event(i) for i in range(10)])
    leaves = log.verified_entry_hashes(1, 4)
    assert log.add_batch(2, 4, merkle_root(leaves[1:]), leaves[1:]) is None
    batch = log.add_batch(1, 4, merkle_root(leaves), leaves)
    assert batch.state == "pending"
    more = log.verified_entry_hashes(5, 6)
    assert log.add_batch(5, 6, merkle_root(more), more) is None  # 1..4 still pending
    log.mark_anchored(1, "0xaa")
    assert log.batches()[0].state == "anchored"
    assert log.batches()[0].tx == "0xaa"
    assert log.add_batch(5, 6, merkle_root(more), more).from_seq == 5


def test_log_proof_verifies_against_batch_root(log):
    log.append_many([_event(i) for i in range(13)])
    anchor = _anchor_batch(log, 1, 13)
    for entry in log.entries():
        proof = log.proof(entry.seq)
        assert verify_event_proof(entry.entry_hash, proof, anchor)
    assert log.proof(14) is None


def test_log_consistency_proof_links_batches(log):
    log.append_many([_event(i) for i in range(30)])
    anchors = [
        _anchor_batch(log, 1, 7),
        _anchor_batch(log, 8, 20),
        _anchor_batch(log, 21, 30),
    ]
    links = log.consistency_proof(3, 25)
    assert len(links) == 2
    assert verify_anchor_consistency(anchors, links)
    assert not verify_anchor_consistency(anchors[:2], links)
    swapped = [anchors[0], anchors[2], anchors[1]]
    assert not verify_anchor_consistency(swapped, links)


def test_log_export_round_trip(log, tmp_path):
    log.append_many([_event(i) for i in range(12)])
    anchors = [_anchor_batch(log, 1, 5), _anchor_batch(log, 6, 10)]
    path = tmp_path / "segment.jsonl"
    lines = log.export(path, 3, 12, anchors=anchors)
    assert lines == 1 + 10 + 2
    segment = load_segment(path)
    assert segment.node == "0xNode"
    assert (segment.from_seq, segment.to_seq) == (3, 12)
    assert segment.entries == log.entries(3, 12)
    assert sorted(segment.proofs) == list(range(3, 11))
    assert segment.anchors == anchors


def test_log_export_rejects_range_past_head(log, tmp_path):
    log.append_many([_event(i) for i in range(3)])
    with pytest.raises(InvalidInput, match="within 1..3"):
        log.export(tmp_path / "segment.jsonl", 1, 4)
