"""SQLite storage for the embedded EVM chain.

One SQLite file contains py-evm's key-value database (table ``kv``) and the indexes that
the JSON-RPC server reads (tables ``transactions`` and ``logs``). py-evm writes go to
an in-memory overlay first. ``ChainStore.commit_block`` then writes the overlay and the
block's index rows in one SQLite transaction, so a crash leaves either the whole block
or none of it in the file.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eth.abc import AtomicWriteBatchAPI
from eth.db.atomic import AtomicDBWriteBatch
from eth.db.backends.base import BaseAtomicDB

from citymesh.errors import ChainError, InvalidInput

logger = logging.getLogger("citymesh.ledger")

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    hash BLOB PRIMARY KEY,
    block_number INTEGER NOT NULL,
    block_hash BLOB NOT NULL,
    tx_index INTEGER NOT NULL,
    sender BLOB NOT NULL,
    recipient BLOB,
    contract_address BLOB,
    status INTEGER NOT NULL,
    gas_used INTEGER NOT NULL,
    cumulative_gas_used INTEGER NOT NULL,
    effective_gas_price INTEGER NOT NULL,
    type INTEGER NOT NULL,
    logs_bloom BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS transactions_block
    ON transactions (block_number, tx_index);
CREATE TABLE IF NOT EXISTS logs (
    block_number INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    block_hash BLOB NOT NULL,
    block_timestamp INTEGER NOT NULL,
    tx_index INTEGER NOT NULL,
    tx_hash BLOB NOT NULL,
    address BLOB NOT NULL,
    topic0 BLOB,
    topic1 BLOB,
    topic2 BLOB,
    topic3 BLOB,
    data BLOB NOT NULL,
    PRIMARY KEY (block_number, log_index)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS logs_address ON logs (address, block_number);
CREATE INDEX IF NOT EXISTS logs_address_topic0
    ON logs (address, topic0, block_number);
CREATE INDEX IF NOT EXISTS logs_topic0 ON logs (topic0, block_number);
CREATE INDEX IF NOT EXISTS logs_topic1 ON logs (topic1, block_number);
CREATE INDEX IF NOT EXISTS logs_topic2 ON logs (topic2, block_number);
CREATE INDEX IF NOT EXISTS logs_topic3 ON logs (topic3, block_number);
"""

_TRANSACTION_COLUMNS = (
    "hash, block_number, block_hash, tx_index, sender, recipient, contract_address, "
    "status, gas_used, cumulative_gas_used, effective_gas_price, type, logs_bloom"
)
_LOG_COLUMNS = (
    "block_number, log_index, block_hash, block_timestamp, tx_index, tx_hash, "
    "address, topic0, topic1, topic2, topic3, data"
)

# Marks a key deleted in the write overlay until the next commit.
_DELETED = object()


class StateFileInUse(ChainError):
    """Another process, or another open chain, has the state file open."""


@dataclass(frozen=True, slots=True)
class TransactionRecord:
    """Index row of one mined transaction: what a receipt needs beyond the block."""

    hash: bytes
    block_number: int
    block_hash: bytes
    tx_index: int
    sender: bytes
    recipient: bytes | None
    contract_address: bytes | None
    status: int
    gas_used: int
    cumulative_gas_used: int
    effective_gas_price: int
    type: int
    logs_bloom: bytes


@dataclass(frozen=True, slots=True)
class LogRecord:
    """Index row of one log entry. ``log_index`` counts logs within the block."""

    block_number: int
    log_index: int
    block_hash: bytes
    block_timestamp: int
    tx_index: int
    tx_hash: bytes
    address: bytes
    topics: tuple[bytes, ...]
    data: bytes


class SqliteKeyValueStore(BaseAtomicDB):
    """py-evm key-value database on the ``kv`` table, with an in-memory write overlay.

    Writes and deletes stay in the overlay, visible to reads, until ``ChainStore``
    commits or discards them. Callers serialize access: the object is not thread-safe.
    """

    def __init__(
        self, connection: sqlite3.Connection, cache_entries: int = 200_000
    ) -> None:
        self._connection = connection
        self._overlay: dict[bytes, object] = {}
        # Committed values read or written recently. It stays coherent because this
        # process is the file's only writer (ChainStore holds an exclusive flock).
        self._cache: dict[bytes, bytes] = {}
        self._cache_entries = cache_entries

    def __getitem__(self, key: bytes) -> bytes:
        value = self._overlay.get(key)
        if value is _DELETED:
            raise KeyError(key)
        if value is not None:
            return value  # type: ignore[return-value]
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        row = self._connection.execute(
            "SELECT value FROM kv WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            raise KeyError(key)
        self._remember(key, row[0])
        return row[0]

    def _remember(self, key: bytes, value: bytes) -> None:
        if len(self._cache) >= self._cache_entries:
            self._cache.clear()  # cheaper than LRU upkeep on every read
        self._cache[key] = value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._overlay[key] = bytes(value)

    def __delitem__(self, key: bytes) -> None:
        if not self._exists(key):
            raise KeyError(key)
        self._overlay[key] = _DELETED

    def _exists(self, key: bytes) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    @contextmanager
    def atomic_batch(self) -> Iterator[AtomicWriteBatchAPI]:
        with AtomicDBWriteBatch._commit_unless_raises(self) as batch:
            yield batch

    def pending_changes(self) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes]]]:
        """Return the overlay as (rows to upsert, keys to delete)."""
        upserts: list[tuple[bytes, bytes]] = []
        deletes: list[tuple[bytes]] = []
        for key, value in self._overlay.items():
            if value is _DELETED:
                deletes.append((key,))
            else:
                upserts.append((key, value))  # type: ignore[arg-type]
        return upserts, deletes

    def discard(self) -> None:
        """Drop every write since the last commit."""
        self._overlay.clear()

    def committed(self) -> None:
        """Move the overlay into the read cache once its SQLite commit succeeded."""
        for key, value in self._overlay.items():
            if value is _DELETED:
                self._cache.pop(key, None)
            else:
                self._remember(key, value)  # type: ignore[arg-type]
        self._overlay.clear()

    @property
    def has_pending_changes(self) -> bool:
        return bool(self._overlay)


class ChainStore:
    """The chain's SQLite file: py-evm's key-value data, metadata and RPC indexes.

    The file is opened in WAL mode and locked with ``flock`` against a second opener.
    ``durable=True`` sets ``synchronous=FULL``, so a committed block also survives a
    power loss. ``durable=False`` sets ``synchronous=NORMAL``, which survives a killed
    process but may lose the last blocks on power loss.
    """

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise InvalidInput(
                f"state path {str(self.path)!r} is a directory; "
                "pass a file path such as chain.sqlite"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        self._lock_file = open(self.path, "rb")  # noqa: SIM115 - held until close
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._connection.close()
            raise StateFileInUse(
                f"state file {str(self.path)!r} is open in another chain or process; "
                "stop that server or use another file"
            ) from None
        self.kv = SqliteKeyValueStore(self._connection)
        try:
            self._connection.execute("PRAGMA journal_mode=WAL")
            synchronous = "FULL" if durable else "NORMAL"
            self._connection.execute(f"PRAGMA synchronous={synchronous}")
            self._connection.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache
            self._connection.executescript(_SCHEMA)
            self._check_schema_version()
        except sqlite3.DatabaseError as error:
            self.close()
            raise ChainError(
                f"state file {str(self.path)!r} is not a chain state file ({error}); "
                "pass the file a chain server created, or a new path"
            ) from None
        except BaseException:
            self.close()
            raise

    def _check_schema_version(self) -> None:
        stored = self.get_meta("schema_version")
        if stored is None:
            self._connection.execute(
                "INSERT INTO meta (name, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
        elif stored != SCHEMA_VERSION:
            raise ChainError(
                f"state file {str(self.path)!r} has schema version {stored!r}, "
                f"expected {SCHEMA_VERSION!r}; use a state file made by this version"
            )

    def get_meta(self, name: str) -> str | None:
        row = self._connection.execute(
            "SELECT value FROM meta WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else row[0]

    def commit_block(
        self,
        transactions: Sequence[TransactionRecord] = (),
        logs: Sequence[LogRecord] = (),
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """Write the overlay, index rows and metadata in one SQLite transaction.

        On any error the SQLite transaction rolls back and the overlay is dropped, so
        neither the file nor later reads see part of the block.
        """
        upserts, deletes = self.kv.pending_changes()
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", upserts
            )
            connection.executemany("DELETE FROM kv WHERE key = ?", deletes)
            connection.executemany(
                f"INSERT INTO transactions ({_TRANSACTION_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_transaction_row(record) for record in transactions],
            )
            connection.executemany(
                f"INSERT INTO logs ({_LOG_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_log_row(record) for record in logs],
            )
            connection.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                list((meta or {}).items()),
            )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            self.kv.discard()
            raise
        self.kv.committed()

    def discard(self) -> None:
        """Drop uncommitted py-evm writes (after a failed or read-only operation)."""
        self.kv.discard()

    def transaction(self, tx_hash: bytes) -> TransactionRecord | None:
        row = self._connection.execute(
            f"SELECT {_TRANSACTION_COLUMNS} FROM transactions WHERE hash = ?",
            (tx_hash,),
        ).fetchone()
        return None if row is None else TransactionRecord(*row)

    def block_transactions(self, block_number: int) -> list[TransactionRecord]:
        rows = self._connection.execute(
            f"SELECT {_TRANSACTION_COLUMNS} FROM transactions "
            "WHERE block_number = ? ORDER BY tx_index",
            (block_number,),
        ).fetchall()
        return [TransactionRecord(*row) for row in rows]

    def transaction_logs(self, block_number: int, tx_index: int) -> list[LogRecord]:
        rows = self._connection.execute(
            f"SELECT {_LOG_COLUMNS} FROM logs WHERE block_number = ? AND tx_index = ? "
            "ORDER BY log_index",
            (block_number, tx_index),
        ).fetchall()
        return [_log_from_row(row) for row in rows]

    def logs(
        self,
        from_block: int,
        to_block: int,
        addresses: Sequence[bytes] = (),
        topics: Sequence[Sequence[bytes] | None] = (),
        limit: int | None = None,
    ) -> list[LogRecord]:
        """Return the logs in ``[from_block, to_block]`` that match, in chain order.

        ``addresses`` matches any of them (empty: any address). ``topics[i]`` matches
        any of its values at position i (``None`` or empty: any value). ``limit`` caps
        the rows read, so a caller passing ``max + 1`` can detect an oversized result.
        """
        sql, parameters = self._logs_query(from_block, to_block, addresses, topics)
        if limit is not None:
            sql += " LIMIT ?"
            parameters.append(limit)
        rows = self._connection.execute(sql, parameters).fetchall()
        return [_log_from_row(row) for row in rows]

    def logs_query_plan(
        self,
        from_block: int,
        to_block: int,
        addresses: Sequence[bytes] = (),
        topics: Sequence[Sequence[bytes] | None] = (),
    ) -> list[str]:
        """Return SQLite's query plan lines for the ``logs`` query of these filters."""
        sql, parameters = self._logs_query(from_block, to_block, addresses, topics)
        rows = self._connection.execute(
            "EXPLAIN QUERY PLAN " + sql, parameters
        ).fetchall()
        return [row[-1] for row in rows]

    @staticmethod
    def _logs_query(
        from_block: int,
        to_block: int,
        addresses: Sequence[bytes],
        topics: Sequence[Sequence[bytes] | None],
    ) -> tuple[str, list[object]]:
        if len(topics) > 4:
            raise InvalidInput(
                f"a log filter takes at most 4 topic positions, got {len(topics)}; "
                "drop the extra positions"
            )
        conditions = ["block_number BETWEEN ? AND ?"]
        parameters: list[object] = [from_block, to_block]
        if addresses:
            conditions.append(f"address IN ({', '.join('?' * len(addresses))})")
            parameters.extend(addresses)
        for position, values in enumerate(topics):
            if not values:
                continue
            conditions.append(f"topic{position} IN ({', '.join('?' * len(values))})")
            parameters.extend(values)
        sql = (
            f"SELECT {_LOG_COLUMNS} FROM logs WHERE {' AND '.join(conditions)} "
            "ORDER BY block_number, log_index"
        )
        return sql, parameters

    def close(self) -> None:
        """Close the SQLite connection and release the file lock. Idempotent."""
        if self._lock_file.closed:
            return
        self.kv.discard()
        try:
            self._connection.execute("PRAGMA optimize")  # refresh planner statistics
        except sqlite3.Error as error:
            logger.warning("PRAGMA optimize failed on %s: %s", self.path, error)
        self._connection.close()
        fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
        self._lock_file.close()


def _transaction_row(record: TransactionRecord) -> tuple[object, ...]:
    return (
        record.hash,
        record.block_number,
        record.block_hash,
        record.tx_index,
        record.sender,
        record.recipient,
        record.contract_address,
        record.status,
        record.gas_used,
        record.cumulative_gas_used,
        record.effective_gas_price,
        record.type,
        record.logs_bloom,
    )


def _log_row(record: LogRecord) -> tuple[object, ...]:
    topics = list(record.topics) + [None] * (4 - len(record.topics))
    return (
        record.block_number,
        record.log_index,
        record.block_hash,
        record.block_timestamp,
        record.tx_index,
        record.tx_hash,
        record.address,
        *topics,
        record.data,
    )


def _log_from_row(row: tuple) -> LogRecord:
    (
        block_number,
        log_index,
        block_hash,
        block_timestamp,
        tx_index,
        tx_hash,
        address,
        *topics,
        data,
    ) = row
    return LogRecord(
        block_number=block_number,
        log_index=log_index,
        block_hash=block_hash,
        block_timestamp=block_timestamp,
        tx_index=tx_index,
        tx_hash=tx_hash,
        address=address,
        topics=tuple(topic for topic in topics if topic is not None),
        data=data,
    )
