"""A node's usage log: append-only, hash-chained events in one SQLite file.

The file runs in WAL mode with ``synchronous=FULL``, so a committed transaction is
in the fsynced write-ahead log when ``append`` returns. Appends take SQLite's write lock
(``BEGIN IMMEDIATE``) before reading the head, so processes that share the file, such
as the node service and a Flower ClientApp, extend one chain without gaps or forks.
Triggers reject UPDATE and DELETE of entries. They stop mistakes, not an operator
who edits the file; the hash chain and the anchored Merkle roots expose such edits.

The same file contains the anchoring batches: each records the Merkle root over a range
of entry hashes and the hashes themselves as they were when the batch was made, so
inclusion proofs still verify for untouched entries after another entry was changed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from citymesh.errors import CitymeshError, InvalidInput, NotFound

from .events import (
    GENESIS_HASH,
    LogEntry,
    UsageEvent,
    canonical_event,
    chain_hash,
)
from .merkle import MerkleTree
from .proofs import BoundaryLink, EventProof
from .segment import load_segment, segment_lines, write_segment

SCHEMA_VERSION = "1"
HASH_SIZE = 32
READ_CHUNK = 10_000  # entries fetched per query when streaming

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    event BLOB NOT NULL,
    event_hash BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    entry_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    from_seq INTEGER PRIMARY KEY,
    to_seq INTEGER NOT NULL,
    root BLOB NOT NULL,
    leaves BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'anchored')),
    tx TEXT,
    created_ms INTEGER NOT NULL,
    anchored_ms INTEGER
);
CREATE TRIGGER IF NOT EXISTS entries_append_only_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'usage log entries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_append_only_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'usage log entries are append-only'); END;
"""


class LogIntegrityError(CitymeshError):
    """Stored entries do not match their hashes; ``seq`` is the first bad entry."""

    def __init__(self, message: str, seq: int) -> None:
        super().__init__(message)
        self.seq = seq


@dataclass(frozen=True)
class Batch:
    """A range of entries whose Merkle root is, or is about to be, anchored.

    ``state`` is ``pending`` from the moment the batch is recorded until the chain
    confirmed the anchor transaction ``tx``, then ``anchored``.
    """

    from_seq: int
    to_seq: int
    root: bytes
    state: str
    tx: str | None
    created_ms: int
    anchored_ms: int | None

    @property
    def count(self) -> int:
        """Number of entries in the batch."""
        return self.to_seq - self.from_seq + 1


class UsageLog:
    """The usage log of one node, stored at ``path`` (created when missing).

    One instance may be shared by threads; several processes may open the same file.
    ``busy_timeout_s`` bounds the wait for another writer's lock.
    """

    load_segment = staticmethod(load_segment)

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise NotFound(
                f"folder of the usage log {str(self.path)!r} does not exist; create it "
                f"first"
            )
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            str(self.path),
            timeout=busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        self._tree_cache: tuple[int, MerkleTree] | None = None
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise InvalidInput(
                f"usage log {str(self.path)!r} could not switch to WAL mode (got "
                f"{mode!r}); put it on a local file system"
            )
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._write() as conn:
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (SCHEMA_VERSION,),
                )
            elif row[0] != SCHEMA_VERSION:
                raise InvalidInput(
                    f"usage log {str(self.path)!r} has schema version {row[0]!r}; this "
                    f"code reads version {SCHEMA_VERSION!r}"
                )

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """Run a write transaction that holds SQLite's write lock from its start."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Run reads in one transaction, so they see one snapshot."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    # -- appending ------------------------------------------------------------------

    def append(self, event: UsageEvent) -> LogEntry:
        """Append one event; return its entry once the transaction is durable."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[UsageEvent]) -> list[LogEntry]:
        """Append events in one transaction, in order; all are durable on return."""
        prepared = []
        for event in events:
            if not isinstance(event, UsageEvent):
                raise InvalidInput(
                    f"the usage log appends UsageEvent objects, got {event!r}"
                )
            body = canonical_event(event)
            prepared.append((event, body, hashlib.sha256(body).digest()))
        if not prepared:
            return []
        entries = []
        rows = []
        with self._write() as conn:
            seq, prev_hash = self._head_row(conn)
            for event, body, digest in prepared:
                seq += 1
                entry_hash = chain_hash(prev_hash, seq, digest)
                rows.append((seq, body, digest, prev_hash, entry_hash))
                entries.append(LogEntry(seq, event, digest, prev_hash, entry_hash))
                prev_hash = entry_hash
            conn.executemany(
                "INSERT INTO entries (seq, event, event_hash, prev_hash, entry_hash) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        return entries

    @staticmethod
    def _head_row(conn: sqlite3.Connection) -> tuple[int, bytes]:
        row = conn.execute(
            "SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return 0, GENESIS_HASH
        return row[0], bytes(row[1])

    # -- reading --------------------------------------------------------------------

    def head(self) -> int:
        """Return the last sequence number (0 for an empty log)."""
        with self._lock:
            row = self._conn.execute("SELECT MAX(seq) FROM entries").fetchone()
        return row[0] or 0

    def entry(self, seq: int) -> LogEntry:
        """Return the entry at ``seq``; raise NotFound when there is none."""
        found = self.entries(seq, seq)
        if not found:
            raise NotFound(
                f"usage log {str(self.path)!r} has no entry {seq!r}; its head is "
                f"{self.head()}"
            )
        return found[0]

    def entries(self, from_seq: int = 1, to_seq: int | None = None) -> list[LogEntry]:
        """Return the entries ``from_seq..to_seq`` (to the head when None), in order."""
        return list(self.iter_entries(from_seq, to_seq))

    def iter_entries(
        self, from_seq: int = 1, to_seq: int | None = None
    ) -> Iterator[LogEntry]:
        """Yield the entries ``from_seq..to_seq`` in order, reading in chunks."""
        last = self.head() if to_seq is None else to_seq
        start = max(from_seq, 1)
        while start <= last:
            stop = min(last, start + READ_CHUNK - 1)
            with self._lock:
                rows = self._conn.execute(
                    "SELECT seq, event, event_hash, prev_hash, entry_hash FROM entries "
                    "WHERE seq BETWEEN ? AND ? ORDER BY seq",
                    (start, stop),
                ).fetchall()
            for row in rows:
                yield self._entry_from_row(row)
            start = stop + 1

    def _entry_from_row(self, row: Sequence[Any]) -> LogEntry:
        seq = row[0]
        body, digest, prev_hash, entry_hash = map(_blob, row[1:])
        try:
            event = UsageEvent.from_dict(json.loads(body.decode("utf-8")))
        except (ValueError, InvalidInput) as exc:
            raise LogIntegrityError(
                f"usage log {str(self.path)!r} entry {seq} contains no valid event: "
                f"{exc}",
                seq,
            ) from exc
        return LogEntry(seq, event, digest, prev_hash, entry_hash)

    def verified_entry_hashes(self, from_seq: int, to_seq: int) -> list[bytes]:
        """Return the entry hashes ``from_seq..to_seq`` after checking the stored rows.

        Each row's event bytes must hash to its event hash, and each entry hash must
        chain from the previous one. Raises LogIntegrityError at the first bad seq.
        """
        with self._read() as conn:
            if from_seq == 1:
                expected_prev = GENESIS_HASH
            else:
                row = conn.execute(
                    "SELECT entry_hash FROM entries WHERE seq = ?", (from_seq - 1,)
                ).fetchone()
                if row is None:
                    raise NotFound(f"usage log has no entry {from_seq - 1}")
                expected_prev = bytes(row[0])
            rows = conn.execute(
                "SELECT seq, event, event_hash, prev_hash, entry_hash FROM entries "
                "WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (from_seq, to_seq),
            ).fetchall()
        hashes = []
        expected_seq = from_seq
        for row in rows:
            seq = row[0]
            body, digest, prev_hash, entry_hash = map(_blob, row[1:])
            problem = None
            if seq != expected_seq:
                problem = f"entry {expected_seq} is missing"
                seq = expected_seq
            elif hashlib.sha256(body).digest() != digest:
                problem = "its event bytes do not hash to the stored event hash"
            elif prev_hash != expected_prev:
                problem = "its previous hash is not the entry hash before it"
            elif chain_hash(prev_hash, seq, digest) != entry_hash:
                problem = "its entry hash does not match its fields"
            if problem is not None:
                raise LogIntegrityError(
                    f"usage log {str(self.path)!r} entry {seq} is corrupt: {problem}",
                    seq,
                )
            hashes.append(entry_hash)
            expected_prev = entry_hash
            expected_seq += 1
        if expected_seq <= to_seq:
            raise LogIntegrityError(
                f"usage log {str(self.path)!r} ends before entry {expected_seq}",
                expected_seq,
            )
        return hashes

    # -- batches --------------------------------------------------------------------

    def batches(self, state: str | None = None) -> list[Batch]:
        """Return the recorded batches in sequence order, optionally of one state."""
        query = (
            "SELECT from_seq, to_seq, root, state, tx, created_ms, anchored_ms "
            "FROM batches"
        )
        params: tuple[Any, ...] = ()
        if state is not None:
            query += " WHERE state = ?"
            params = (state,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY from_seq", params).fetchall()
        return [_batch(row) for row in rows]

    def batch_containing(self, seq: int) -> Batch | None:
        """Return the batch whose range contains ``seq``, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT from_seq, to_seq, root, state, tx, created_ms, anchored_ms "
                "FROM batches WHERE from_seq <= ? AND to_seq >= ?",
                (seq, seq),
            ).fetchone()
        return None if row is None else _batch(row)

    def last_batch(self) -> Batch | None:
        """Return the batch with the highest range, or None before the first."""
        with self._lock:
            row = self._conn.execute(
                "SELECT from_seq, to_seq, root, state, tx, created_ms, anchored_ms "
                "FROM batches ORDER BY from_seq DESC LIMIT 1"
            ).fetchone()
        return None if row is None else _batch(row)

    def add_batch(
        self, from_seq: int, to_seq: int, root: bytes, leaves: Sequence[bytes]
    ) -> Batch | None:
        """Record a pending batch durably; return None if the range was taken.

        The batch must start right after the last recorded batch, and no batch may be
        pending, so batches are anchored one at a time and in order. None means another
        anchorer recorded a batch first.
        """
        if len(leaves) != to_seq - from_seq + 1:
            raise InvalidInput(
                f"a batch {from_seq}..{to_seq} needs {to_seq - from_seq + 1} leaves, "
                f"got {len(leaves)}"
            )
        with self._write() as conn:
            row = conn.execute(
                "SELECT to_seq, state FROM batches ORDER BY from_seq DESC LIMIT 1"
            ).fetchone()
            last_to = 0 if row is None else row[0]
            if (row is not None and row[1] == "pending") or from_seq != last_to + 1:
                return None
            conn.execute(
                "INSERT INTO batches (from_seq, to_seq, root, leaves, state, "
                "created_ms) VALUES (?, ?, ?, ?, 'pending', ?)",
                (from_seq, to_seq, root, b"".join(leaves), _now_ms()),
            )
        return self.batch_containing(from_seq)

    def mark_anchored(self, from_seq: int, tx: str) -> None:
        """Record that the chain confirmed the batch starting at ``from_seq``."""
        with self._write() as conn:
            conn.execute(
                "UPDATE batches SET state = 'anchored', tx = ?, anchored_ms = ? "
                "WHERE from_seq = ? AND state = 'pending'",
                (tx, _now_ms(), from_seq),
            )

    def batch_leaves(self, from_seq: int) -> list[bytes]:
        """Return the entry hashes recorded with the batch starting at ``from_seq``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT leaves FROM batches WHERE from_seq = ?", (from_seq,)
            ).fetchone()
        if row is None:
            raise NotFound(f"usage log has no batch starting at {from_seq!r}")
        blob = bytes(row[0])
        return [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]

    def _batch_tree(self, from_seq: int) -> MerkleTree:
        cached = self._tree_cache
        if cached is not None and cached[0] == from_seq:
            return cached[1]
        tree = MerkleTree(self.batch_leaves(from_seq))
        self._tree_cache = (from_seq, tree)
        return tree

    # -- proofs ---------------------------------------------------------------------

    def proof(self, seq: int) -> EventProof | None:
        """Return the inclusion proof of entry ``seq`` in its batch, or None.

        The proof comes from the entry hashes recorded with the batch, not from the
        entries as they are now.
        """
        batch = self.batch_containing(seq)
        if batch is None:
            return None
        tree = self._batch_tree(batch.from_seq)
        path = tuple(tree.proof(seq - batch.from_seq))
        return EventProof(seq, batch.from_seq, batch.to_seq, path)

    def proofs(
        self, from_seq: int, to_seq: int, *, anchored_only: bool = True
    ) -> dict[int, EventProof]:
        """Return the inclusion proofs of the entries ``from_seq..to_seq`` by seq."""
        result = {}
        for batch in self.batches():
            if batch.to_seq < from_seq or batch.from_seq > to_seq:
                continue
            if anchored_only and batch.state != "anchored":
                continue
            tree = self._batch_tree(batch.from_seq)
            start = max(from_seq, batch.from_seq)
            for seq in range(start, min(to_seq, batch.to_seq) + 1):
                path = tuple(tree.proof(seq - batch.from_seq))
                result[seq] = EventProof(seq, batch.from_seq, batch.to_seq, path)
        return result

    def consistency_proof(self, first_seq: int, second_seq: int) -> list[BoundaryLink]:
        """Prove that the batches holding two seqs are linked by one hash chain.

        Returns one BoundaryLink per boundary between the batch holding ``first_seq``
        and the batch holding ``second_seq``; check it with
        ``proofs.verify_anchor_consistency``.
        """
        first = self.batch_containing(first_seq)
        second = self.batch_containing(second_seq)
        if first is None or second is None:
            raise NotFound(
                f"seqs {first_seq!r} and {second_seq!r} must both be in recorded "
                f"batches; anchor them first"
            )
        links = []
        for batch in self.batches():
            if not first.from_seq <= batch.from_seq < second.from_seq:
                continue
            last = self.entry(batch.to_seq)
            following = self.batch_containing(batch.to_seq + 1)
            if following is None:
                raise NotFound(f"no batch starts at {batch.to_seq + 1}")
            first_entry = self.entry(following.from_seq)
            links.append(
                BoundaryLink(
                    last_seq=last.seq,
                    last_prev_hash=last.prev_hash,
                    last_event_hash=last.event_hash,
                    last_path=tuple(
                        self._batch_tree(batch.from_seq).proof(batch.count - 1)
                    ),
                    first_event_hash=first_entry.event_hash,
                    first_path=tuple(self._batch_tree(following.from_seq).proof(0)),
                )
            )
        return links

    # -- export ---------------------------------------------------------------------

    def export(
        self,
        path: Path,
        from_seq: int = 1,
        to_seq: int | None = None,
        *,
        anchors: Sequence[Any] = (),
        node: str | None = None,
    ) -> int:
        """Write entries ``from_seq..to_seq`` as a segment file; return its line count.

        Entries of anchored batches carry their inclusion proofs. ``anchors`` (for
        example ``ChainClient.anchors(account)``) are copied into the file when they
        overlap the range, so a regulator can verify it offline. ``node`` defaults to
        the anchors' node account.
        """
        head = self.head()
        last = head if to_seq is None else to_seq
        if from_seq < 1 or last > head or last < from_seq - 1:
            raise InvalidInput(
                f"export range {from_seq!r}..{last!r} must lie within 1..{head} "
                f"(the log's head)"
            )
        overlapping = [
            a for a in anchors if a.to_seq >= from_seq and a.from_seq <= last
        ]
        anchored = {(a.from_seq, a.to_seq, bytes(a.root)) for a in overlapping}
        proofs = self.proofs(from_seq, last, anchored_only=False)
        keep = {
            (b.from_seq, b.to_seq)
            for b in self.batches()
            if b.state == "anchored" or (b.from_seq, b.to_seq, b.root) in anchored
        }
        proofs = {seq: p for seq, p in proofs.items() if (p.from_seq, p.to_seq) in keep}
        if node is None:
            node = str(overlapping[0].node) if overlapping else ""
        lines = segment_lines(
            node, from_seq, last, self.iter_entries(from_seq, last), proofs, overlapping
        )
        return write_segment(path, lines)


def _batch(row: Sequence[Any]) -> Batch:
    from_seq, to_seq, root, state, tx, created_ms, anchored_ms = row
    return Batch(from_seq, to_seq, bytes(root), state, tx, created_ms, anchored_ms)


def _blob(value: Any) -> bytes:
    """Return a stored column as bytes; an edited row may hold TEXT where BLOB was."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if value is None:
        return b""
    return bytes(value)


def _now_ms() -> int:
    return int(time.time() * 1000)
