"""Extracts between nodes: policy check, Arrow IPC streaming and signed receipts.

An extract runs in three requests, each signed by the consumer node:

1. ``POST /exchange/extract`` checks the request against the dataset's grade
   and policy, then streams the de-identified rows as an Arrow IPC stream. A
   rejected request appends a ``refusal`` event. When the stream ends, the
   provider signs an ``exchange`` usage event with the rows, bytes and SHA-256
   of the stream and keeps it pending.
2. ``GET /exchange/{id}/receipt`` returns that event, so the consumer can
   compare it with what it received.
3. ``POST /exchange/{id}/receipt`` carries the consumer's Ed25519 signature of
   the event; the provider checks it and appends the event, signed by both.

Pending receipts live in the node database, so they survive a restart. A
receipt the consumer does not confirm within ``RECEIPT_TIMEOUT_S`` is appended
with the provider's signature alone and ``receipt: unconfirmed`` in its detail,
so every extract reaches the log. Expired receipts are swept when the next
extract starts and when the node stops. An extract cut off mid-stream is
appended at once with ``complete: false``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from sqlalchemy import Column, Text, delete, func
from sqlmodel import Field, Session, SQLModel, col, select

from citymesh.catalog.deid import deidentify, k_anonymity
from citymesh.catalog.names import dataset_path
from citymesh.catalog.policy import ExtractPlan, ExtractRequest, plan_extract
from citymesh.errors import AuthError, NotFound, PolicyViolation
from citymesh.node.signing import SignerInfo

log = logging.getLogger("citymesh.node")

RECEIPT_TIMEOUT_S = 300.0
SCAN_BATCH_ROWS = 65_536
ARROW_STREAM_MEDIA_TYPE = "application/vnd.apache.arrow.stream"


class PendingExchange(SQLModel, table=True):
    """A provider-signed exchange event waiting for the consumer's signature.

    Kept in the node database, so a receipt survives a restart of the node and
    an extract whose receipt never comes still reaches the usage log.
    """

    __tablename__ = "pending_exchange"

    exchange_id: str = Field(primary_key=True, max_length=32)
    event: str = Field(sa_column=Column(Text, nullable=False))
    consumer: str = Field(max_length=42)
    consumer_pubkey: str = Field(max_length=64)
    created_at: float = Field(index=True)


@dataclass
class PendingReceipt:
    """A pending exchange with its event parsed."""

    event: Any
    consumer: str
    consumer_pubkey: bytes
    created_at: float

    @classmethod
    def from_row(cls, row: PendingExchange) -> PendingReceipt:
        from citymesh.ledger.events import UsageEvent

        return cls(
            UsageEvent.from_dict(json.loads(row.event)),
            row.consumer,
            bytes.fromhex(row.consumer_pubkey),
            row.created_at,
        )


class _ChunkSink:
    """A write-only file object that collects what the IPC writer emits.

    The IPC writer passes column buffers as ``pyarrow.Buffer`` objects that own
    their memory, and metadata as ``bytes``. Both are kept as they are, so this
    class copies the stream once, in ``take``.
    """

    closed = False

    def __init__(self) -> None:
        self.parts: list[bytes | pa.Buffer] = []

    def write(self, data: bytes | pa.Buffer) -> int:
        if not isinstance(data, (bytes, pa.Buffer)):
            data = bytes(data)
        self.parts.append(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        return None

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class ExchangeService:
    """Runs extracts for one node (see the module docstring)."""

    def __init__(self, context) -> None:
        self.context = context
        self.engine = context.store.engine
        self.write_engine = context.store.write_engine
        SQLModel.metadata.create_all(
            self.write_engine, tables=[PendingExchange.__table__]
        )

    def open_extract(
        self, request: ExtractRequest, signer: SignerInfo
    ) -> tuple[str, Iterator[bytes]]:
        """Check ``request`` and return the exchange id and the stream's chunks.

        Raises NotFound, InvalidInput or PolicyViolation before any row is read;
        a PolicyViolation also appends a refusal event.
        """
        self.sweep()
        context = self.context
        entry = context.store.get(request.dataset_id)
        approved = (
            context.approvals.find(entry.id, signer.account, request.purpose)
            is not None
        )
        try:
            plan = plan_extract(
                entry, request, consumer_city=signer.city, approved=approved
            )
            path = dataset_path(context.settings.data_dir, entry.name)
            if plan.k and plan.quasi_identifiers:
                self._check_k_anonymity(entry.id, path, plan)
        except PolicyViolation as error:
            context.usage.record(
                "refusal",
                entry.id,
                signer.account,
                request.purpose,
                detail={"request": request.to_json(), "reason": str(error)},
            )
            log.warning(
                "extract of %s by %s rejected: %s", entry.id, signer.account, error
            )
            raise
        exchange_id = uuid.uuid4().hex
        chunks = self._stream(exchange_id, entry, path, plan, request, signer)
        return exchange_id, chunks

    def _scan(self, path, plan: ExtractPlan) -> Iterator[pa.RecordBatch]:
        dataset = ds.dataset(path, format="parquet")
        scanner = dataset.scanner(
            columns=plan.columns,
            filter=plan.expression,
            batch_size=SCAN_BATCH_ROWS,
            use_threads=True,
        )
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield batch

    def _check_k_anonymity(self, dataset_id: str, path, plan: ExtractPlan) -> None:
        batches = deidentify(self._scan(path, plan), plan.rules, self.context.secret)
        result = k_anonymity(batches, plan.quasi_identifiers, plan.k)
        if not result.ok:
            raise PolicyViolation(
                f"the extract of {dataset_id!r} is not {plan.k}-anonymous on "
                f"{plan.quasi_identifiers!r}: {result.violating_groups} groups "
                f"({result.violating_rows} rows) are smaller than {plan.k}; "
                "narrow the columns or generalize more"
            )

    def _stream(
        self,
        exchange_id: str,
        entry,
        path,
        plan: ExtractPlan,
        request: ExtractRequest,
        signer: SignerInfo,
    ) -> Iterator[bytes]:
        digest = hashlib.sha256()
        sent = rows = 0
        complete = False
        sink = _ChunkSink()
        compression = None if request.compression == "none" else request.compression
        options = pa.ipc.IpcWriteOptions(compression=compression)
        try:
            writer = None
            for batch in deidentify(
                self._scan(path, plan), plan.rules, self.context.secret
            ):
                if writer is None:
                    writer = pa.ipc.new_stream(sink, batch.schema, options=options)
                writer.write_batch(batch)
                rows += batch.num_rows
                chunk = sink.take()
                digest.update(chunk)
                sent += len(chunk)
                yield chunk
            if writer is None:
                schema = self._output_schema(path, plan)
                writer = pa.ipc.new_stream(sink, schema, options=options)
            writer.close()
            chunk = sink.take()
            digest.update(chunk)
            sent += len(chunk)
            # The receipt is registered before the last chunk leaves, so a
            # consumer that requests it right after the stream ends finds it.
            complete = True
            self._finish(
                exchange_id,
                entry,
                plan,
                request,
                signer,
                rows,
                sent,
                digest.hexdigest(),
                complete=True,
            )
            yield chunk
        finally:
            if not complete:
                self._finish(
                    exchange_id,
                    entry,
                    plan,
                    request,
                    signer,
                    rows,
                    sent,
                    digest.hexdigest(),
                    complete=False,
                )

    def _output_schema(self, path, plan: ExtractPlan) -> pa.Schema:
        empty = ds.dataset(path, format="parquet").schema.empty_table()
        empty = empty.select(plan.columns)
        batches = empty.to_batches() or [
            pa.RecordBatch.from_pylist([], schema=empty.schema)
        ]
        return next(deidentify(batches, plan.rules, self.context.secret)).schema

    def _finish(
        self,
        exchange_id: str,
        entry,
        plan: ExtractPlan,
        request: ExtractRequest,
        signer: SignerInfo,
        rows: int,
        sent: int,
        sha256: str,
        complete: bool,
    ) -> None:
        from citymesh.ledger.events import UsageEvent, sign_event

        event = UsageEvent(
            kind="exchange",
            dataset_id=entry.id,
            provider=self.context.settings.city,
            consumer=signer.account,
            purpose=request.purpose,
            rows=rows,
            bytes=sent,
            time=time.time(),
            detail={
                "exchange_id": exchange_id,
                "grade": entry.grade,
                "columns": plan.columns,
                "filter": request.filter,
                "deid": plan.rules,
                "sha256": sha256,
                "complete": complete,
            },
        )
        event = sign_event(event, self.context.identity.signing_key)
        if not complete:
            self.context.usage.log.append(event)
            log.warning(
                "extract %s of %s to %s ended early after %d rows",
                exchange_id,
                entry.id,
                signer.account,
                rows,
            )
            return
        row = PendingExchange(
            exchange_id=exchange_id,
            event=json.dumps(event.to_dict()),
            consumer=signer.account.lower(),
            consumer_pubkey=signer.pubkey.hex(),
            created_at=time.time(),
        )
        with Session(self.write_engine) as session:
            session.add(row)
            session.commit()
        log.info(
            "extract %s of %s to %s: %d rows, %d bytes",
            exchange_id,
            entry.id,
            signer.account,
            rows,
            sent,
        )

    def pending(self) -> int:
        """Return how many receipts wait for their consumer."""
        with Session(self.engine) as session:
            statement = select(func.count()).select_from(PendingExchange)
            return session.exec(statement).one()

    def receipt(self, exchange_id: str, signer: SignerInfo) -> dict[str, Any]:
        """Return the provider-signed event of an extract to its consumer."""
        return self._pending_for(exchange_id, signer).event.to_dict()

    def _pending_for(self, exchange_id: str, signer: SignerInfo) -> PendingReceipt:
        with Session(self.engine) as session:
            row = session.get(PendingExchange, exchange_id)
        if row is None:
            raise NotFound(
                f"no receipt is pending for exchange {exchange_id!r}: it was "
                "confirmed, timed out or never finished"
            )
        pending = PendingReceipt.from_row(row)
        if pending.consumer != signer.account.lower():
            raise AuthError(
                f"exchange {exchange_id!r} belongs to another consumer than "
                f"{signer.account!r}"
            )
        return pending

    def confirm(self, exchange_id: str, signer: SignerInfo, signature: str) -> Any:
        """Append the exchange event signed by provider and consumer; return it."""
        from citymesh.ledger.events import invalid_signers

        pending = self._pending_for(exchange_id, signer)
        consumer_key = pending.consumer_pubkey.hex()
        signatures = {**pending.event.signatures, consumer_key: signature.lower()}
        try:
            event = replace(pending.event, signatures=signatures)
        except ValueError as error:
            raise AuthError(
                f"invalid receipt signature {signature!r}: {error}"
            ) from None
        if invalid_signers(event):
            raise AuthError(
                f"the receipt signature for exchange {exchange_id!r} does not verify "
                f"with the key registered for {signer.account!r}: sign the event "
                "returned by GET /exchange/{id}/receipt"
            )
        if not self._claim(exchange_id):
            raise NotFound(f"exchange {exchange_id!r} was confirmed already")
        entry = self.context.usage.log.append(event)
        log.info(
            "exchange %s confirmed by %s as event %d",
            exchange_id,
            signer.account,
            entry.seq,
        )
        return entry

    def sweep(self, max_age_s: float = RECEIPT_TIMEOUT_S) -> int:
        """Append unconfirmed receipts older than ``max_age_s``; return how many."""
        cutoff = time.time() - max_age_s
        statement = select(PendingExchange).where(
            col(PendingExchange.created_at) <= cutoff
        )
        with Session(self.engine) as session:
            rows = list(session.exec(statement))
        items = [
            PendingReceipt.from_row(row) for row in rows if self._claim(row.exchange_id)
        ]
        for item in items:
            detail = {**item.event.detail, "receipt": "unconfirmed"}
            event = replace(item.event, detail=detail, signatures={})
            from citymesh.ledger.events import sign_event

            event = sign_event(event, self.context.identity.signing_key)
            self.context.usage.log.append(event)
            log.warning(
                "exchange %s logged without the consumer's receipt",
                item.event.detail.get("exchange_id"),
            )
        return len(items)

    def _claim(self, exchange_id: str) -> bool:
        """Delete a pending row; True if this call deleted it (so it logs it)."""
        with Session(self.write_engine) as session:
            result = session.exec(
                delete(PendingExchange).where(
                    col(PendingExchange.exchange_id) == exchange_id
                )
            )
            session.commit()
            return result.rowcount == 1
