"""Prepared extracts: encoded Arrow IPC streams kept on disk and sent as they are.

Decoding Parquet, de-identifying and compressing the Arrow stream cost a node
several times what sending the result costs. Most extracts repeat: the same
dataset, columns, filter and de-identification rules, so the node keeps the
encoded stream of an extract and sends that file the next time.

A prepared stream is identified by a key that hashes everything its bytes
depend on: the dataset file's SHA-256, columns, filter, de-identification
rules, k-anonymity settings, IPC compression, a fingerprint of the node's
de-identification secret and the format version. A new dataset file, policy
or secret gives new keys, so a stale stream is never sent. The node also
drops a dataset's streams when its policy changes.

Files live in ``<home>/extracts``: ``<key>.json`` names the stream file and
records its rows, bytes and SHA-256. A stream is written under a temporary
name, flushed to disk, renamed, and only then published by writing the JSON
file atomically, so a stream cut off by a crash is never found. A file found
with another size than its record is deleted. A stream file whose
modification time changed since it was last hashed is hashed again as it is
sent. If it no longer matches its record, it is deleted and sent without its
end, so the consumer never takes it for a complete extract.

The total size is bounded by ``limit_bytes``, and the least recently sent
streams go first. A limit of 0 turns preparing off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger("citymesh.node")

FORMAT_VERSION = 1
READ_CHUNK_BYTES = 4 * 1024 * 1024
DEFAULT_LIMIT_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class PreparedStream:
    """A complete encoded extract on disk."""

    key: str
    path: Path
    dataset_id: str
    rows: int
    bytes: int
    sha256: str


def extract_key(
    *,
    dataset_sha256: str,
    columns: list[str],
    row_filter: list[list[Any]],
    rules: dict[str, Any],
    quasi_identifiers: list[str],
    k: int | None,
    compression: str,
    secret: bytes,
) -> str:
    """Return the key of an extract: a SHA-256 over what its bytes depend on."""
    secret_print = hashlib.sha256(b"citymesh-deid-secret:" + secret).hexdigest()
    material = {
        "format": FORMAT_VERSION,
        "dataset_sha256": dataset_sha256,
        "columns": columns,
        "filter": row_filter,
        "rules": rules,
        "quasi_identifiers": quasi_identifiers,
        "k": k,
        "compression": compression,
        "secret": secret_print,
    }
    encoded = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


class PreparedExtracts:
    """The prepared streams of one node (see the module docstring)."""

    def __init__(self, folder: Path, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        if limit_bytes < 0:
            raise ValueError(
                f"invalid prepared extract limit {limit_bytes!r}: use 0 (off) or more"
            )
        self.folder = Path(folder)
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._committing: set[threading.Thread] = set()
        # Stream key -> (inode, size, mtime in ns) of a file whose hash matched
        # its record, when written or when last sent.
        self._verified: dict[str, tuple[int, int, int]] = {}
        if self.enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()

    @property
    def enabled(self) -> bool:
        return self.limit_bytes > 0

    def _record_path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def find(self, key: str) -> PreparedStream | None:
        """Return the prepared stream of ``key``, or None."""
        if not self.enabled:
            return None
        try:
            text = self._record_path(key).read_text()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
            path = self.folder / record["file"]
            if path.parent != self.folder or path.stat().st_size != record["bytes"]:
                raise ValueError("size differs from the record")
            return PreparedStream(
                key,
                path,
                record["dataset_id"],
                int(record["rows"]),
                int(record["bytes"]),
                record["sha256"],
            )
        except (ValueError, KeyError, TypeError, OSError) as error:
            log.warning("dropping prepared extract %s: %s", key, error)
            self._delete(key)
            return None

    def open(self, stream: PreparedStream) -> BinaryIO | None:
        """Open ``stream`` for sending; None when it was evicted meanwhile.

        The open file stays readable when the stream is evicted while it is
        sent.
        """
        try:
            handle = open(stream.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return None
        if os.fstat(handle.fileno()).st_size != stream.bytes:
            handle.close()
            return None
        try:
            os.utime(self._record_path(stream.key))
        except FileNotFoundError:
            # The record was replaced or evicted meanwhile; the open file is
            # still the stream the record named.
            pass
        return handle

    @staticmethod
    def identity(handle: BinaryIO) -> tuple[int, int, int]:
        """Return the inode, size and modification time (ns) of an open file."""
        return _identity(handle)

    def is_verified(
        self, stream: PreparedStream, identity: tuple[int, int, int]
    ) -> bool:
        """Tell whether the file with ``identity`` matched its hash when last read.

        A write to the file changes its modification time, so only a change
        that bypasses the file system (a failing disk) goes unseen here. The
        consumer still checks the bytes against the recorded hash, and a
        mismatch leaves the receipt unsigned.
        """
        with self._lock:
            return self._verified.get(stream.key) == identity

    def mark_verified(
        self, stream: PreparedStream, identity: tuple[int, int, int]
    ) -> None:
        """Remember that the file of ``stream`` hashed to its record."""
        with self._lock:
            self._verified[stream.key] = identity

    @staticmethod
    def read(handle: BinaryIO) -> Iterator[bytes]:
        """Yield the bytes of an opened stream in chunks, then close it."""
        with handle:
            while chunk := handle.read(READ_CHUNK_BYTES):
                yield chunk

    def writer(self, key: str, dataset_id: str) -> PreparedWriter | None:
        """Return a writer for a new stream of ``key``, or None when disabled."""
        if not self.enabled:
            return None
        return PreparedWriter(self, key, dataset_id)

    def wait_idle(self, timeout_s: float | None = None) -> None:
        """Wait until streams being flushed in the background are published."""
        with self._lock:
            running = list(self._committing)
        for worker in running:
            worker.join(timeout_s)

    def discard(self, stream: PreparedStream) -> None:
        """Delete ``stream``, for example after it failed its hash check."""
        with self._lock:
            self._delete(stream.key)

    def drop_dataset(self, dataset_id: str) -> int:
        """Delete every prepared stream of ``dataset_id``; return how many."""
        if not self.enabled:
            return 0
        dropped = 0
        for record_path in self.folder.glob("*.json"):
            try:
                record = json.loads(record_path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("dataset_id") == dataset_id:
                self._delete(record_path.stem)
                dropped += 1
        return dropped

    def total_bytes(self) -> int:
        return sum(
            path.stat().st_size
            for path in self.folder.glob("*.arrows")
            if path.is_file()
        )

    def _publish(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            record_path = self._record_path(key)
            previous = None
            if record_path.is_file():
                try:
                    previous = json.loads(record_path.read_text()).get("file")
                except (OSError, ValueError):
                    previous = None
            temporary = record_path.with_name(f"{key}.json.{uuid.uuid4().hex}.tmp")
            temporary.write_text(json.dumps(record))
            os.replace(temporary, record_path)
            if previous and previous != record["file"]:
                (self.folder / previous).unlink(missing_ok=True)
            self._evict()

    def _evict(self) -> None:
        records = []
        for record_path in self.folder.glob("*.json"):
            try:
                record = json.loads(record_path.read_text())
                used = record_path.stat().st_mtime
            except (OSError, ValueError):
                continue
            records.append((used, record_path.stem, int(record.get("bytes", 0))))
        total = sum(size for _, _, size in records)
        for _, key, size in sorted(records):
            if total <= self.limit_bytes:
                break
            self._delete(key)
            total -= size

    def _delete(self, key: str) -> None:
        self._verified.pop(key, None)
        record_path = self._record_path(key)
        try:
            name = json.loads(record_path.read_text()).get("file")
        except (OSError, ValueError, AttributeError):
            name = None
        record_path.unlink(missing_ok=True)
        if isinstance(name, str) and "/" not in name and name.endswith(".arrows"):
            (self.folder / name).unlink(missing_ok=True)

    def _remove_leftovers(self) -> None:
        """Delete temporary files and stream files no record names."""
        named = set()
        for record_path in self.folder.glob("*.json"):
            try:
                named.add(json.loads(record_path.read_text()).get("file"))
            except (OSError, ValueError, AttributeError):
                record_path.unlink(missing_ok=True)
        for path in self.folder.iterdir():
            if path.name.endswith(".tmp") or (
                path.suffix == ".arrows" and path.name not in named
            ):
                path.unlink(missing_ok=True)


def _identity(handle: BinaryIO) -> tuple[int, int, int]:
    status = os.fstat(handle.fileno())
    return status.st_ino, status.st_size, status.st_mtime_ns


class PreparedWriter:
    """Writes one stream while it is sent; ``commit`` publishes it."""

    def __init__(self, store: PreparedExtracts, key: str, dataset_id: str) -> None:
        self.store = store
        self.key = key
        self.dataset_id = dataset_id
        self.name = f"{key}-{uuid.uuid4().hex[:12]}.arrows"
        self.temporary = store.folder / f"{self.name}.tmp"
        self._handle = open(self.temporary, "wb")  # noqa: SIM115
        self._size = 0
        self._room = store.limit_bytes

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; a stream over the whole limit is abandoned."""
        if self._handle is None:
            return
        self._size += len(chunk)
        if self._size > self._room:
            self.abort()
            return
        self._handle.write(chunk)

    def commit(self, rows: int, sha256: str) -> PreparedStream | None:
        """Flush the stream to disk and publish it; return it (None if abandoned)."""
        if self._handle is None:
            return None
        handle, self._handle = self._handle, None
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        path = self.store.folder / self.name
        os.replace(self.temporary, path)
        with open(path, "rb") as written:
            identity = _identity(written)
        record = {
            "file": self.name,
            "dataset_id": self.dataset_id,
            "rows": rows,
            "bytes": self._size,
            "sha256": sha256,
            "created_at": time.time(),
        }
        self.store._publish(self.key, record)
        with self.store._lock:
            # Hashed as it was written, so the first send need not hash again.
            self.store._verified[self.key] = identity
        return PreparedStream(self.key, path, self.dataset_id, rows, self._size, sha256)

    def commit_in_background(self, rows: int, sha256: str) -> threading.Thread:
        """Run ``commit`` in a thread; a failure is logged and the copy dropped.

        ``PreparedExtracts.wait_idle`` waits for these threads.
        """
        committing = self.store._committing

        def run() -> None:
            try:
                self.commit(rows, sha256)
            except Exception as error:  # the extract itself was sent already
                log.warning(
                    "could not keep the extract of %s: %s", self.dataset_id, error
                )
                self.abort()
            finally:
                with self.store._lock:
                    committing.discard(worker)

        worker = threading.Thread(target=run, name="citymesh-prepare")
        with self.store._lock:
            committing.add(worker)
        worker.start()
        return worker

    def abort(self) -> None:
        """Discard the partial stream."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.temporary.unlink(missing_ok=True)
