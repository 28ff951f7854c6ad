"""Extracts between nodes: policy check, Arrow IPC streaming and signed receipts.

An extract runs in two requests, each signed by the consumer node:

1. ``POST /exchange/extract`` checks the request against the dataset's grade
   and policy, then streams the de-identified rows as an Arrow IPC stream. A
   rejected request appends a ``refusal`` event. The response header
   ``X-Citymesh-Receipt-Draft`` carries the ``exchange`` usage event the
   provider will log, with rows, bytes and SHA-256 left empty. When the
   stream ends, the provider fills them in, signs the event and keeps it
   pending.
2. ``POST /exchange/{id}/receipt`` carries the consumer's Ed25519 signature of
   that event, completed from what the consumer received; the provider checks
   it and appends the event, signed by both. A signature over other rows,
   bytes or SHA-256 than the provider's does not verify.

``GET /exchange/{id}/receipt`` returns the provider's completed event, for a
consumer that did not keep the draft (the header is left out when the draft
is too long for a header).

A whole-dataset extract is usually sent from a prepared stream (see
citymesh.node.prepared), encoded when the dataset was ingested or its
policy changed.

Pending receipts live in the node database, so they survive a restart. A
receipt the consumer does not confirm within ``RECEIPT_TIMEOUT_S`` is appended
with the provider's signature alone and ``receipt: unconfirmed`` in its detail,
so every extract reaches the log. Expired receipts are swept when the next
extract starts and when the node stops. An extract cut off mid-stream is
appended with ``complete: false`` as soon as the response ends, with the
bytes the HTTP server took before the consumer went away.
"""

from __future__ import annotations

import base64
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
from citymesh.catalog.policy import (
    ExtractPlan,
    ExtractRequest,
    grade_family,
    plan_extract,
)
from citymesh.errors import AuthError, InvalidInput, NotFound, PolicyViolation
from citymesh.node.prepared import PreparedExtracts, PreparedStream, extract_key
from citymesh.node.signing import SignerInfo

log = logging.getLogger("citymesh.node")

RECEIPT_TIMEOUT_S = 300.0
SCAN_BATCH_ROWS = 65_536
ARROW_STREAM_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
RECEIPT_DRAFT_HEADER = "X-Citymesh-Receipt-Draft"
# HTTP clients cap the total size of response headers (h11: 16 KiB).
MAX_DRAFT_HEADER_BYTES = 8192


def encode_draft(draft: dict[str, Any]) -> str | None:
    """Return the receipt draft as a header value, or None when it is too long."""
    encoded = base64.urlsafe_b64encode(
        json.dumps(draft, separators=(",", ":")).encode()
    ).decode("ascii")
    return encoded if len(encoded) <= MAX_DRAFT_HEADER_BYTES else None


def decode_draft(value: str) -> dict[str, Any]:
    """Parse a receipt draft header; raise InvalidInput when it is malformed."""
    try:
        draft = json.loads(base64.urlsafe_b64decode(value.encode("ascii")))
    except (ValueError, UnicodeError) as error:
        raise InvalidInput(f"malformed receipt draft header: {error}") from None
    if not isinstance(draft, dict) or not isinstance(draft.get("detail"), dict):
        raise InvalidInput("malformed receipt draft header: not an event object")
    return draft


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


@dataclass(frozen=True)
class _Extract:
    """One extract in progress: the request, its signer, start time and source."""

    exchange_id: str
    entry: Any
    plan: ExtractPlan
    request: ExtractRequest
    signer: SignerInfo
    started: float
    prepared: PreparedStream | None


@dataclass(frozen=True)
class OpenExtract:
    """An accepted extract: its id, the receipt event as drafted, and the stream.

    ``draft`` is the exchange event the provider will log, with ``rows``,
    ``bytes`` and ``detail.sha256`` still empty: the consumer fills them in
    from what it received and signs, without asking for the receipt. ``size``
    is the stream's length when it is known before sending (a prepared stream).
    """

    exchange_id: str
    draft: dict[str, Any]
    chunks: Iterator[bytes]
    size: int | None = None


class ExchangeService:
    """Runs extracts for one node (see the module docstring)."""

    def __init__(self, context) -> None:
        self.context = context
        self.engine = context.store.engine
        self.write_engine = context.store.write_engine
        self.prepared = PreparedExtracts(
            context.settings.home / "extracts", context.settings.prepared_extract_bytes
        )
        SQLModel.metadata.create_all(
            self.write_engine, tables=[PendingExchange.__table__]
        )

    def open_extract(self, request: ExtractRequest, signer: SignerInfo) -> OpenExtract:
        """Check ``request`` and return the extract's id, receipt draft and chunks.

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
            if plan.expression is not None:
                self._check_filter(path, plan, request)
            key = self._key(entry, plan, request.filter, request.compression)
            prepared = self.prepared.find(key)
            handle = self.prepared.open(prepared) if prepared is not None else None
            if handle is None:
                prepared = None
            # A prepared stream passed the same check when it was encoded.
            if prepared is None and plan.k and plan.quasi_identifiers:
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
        extract = _Extract(
            uuid.uuid4().hex, entry, plan, request, signer, time.time(), prepared
        )
        if prepared is not None:
            chunks = self._send_prepared(extract, prepared, handle)
        else:
            chunks = self._stream(extract, path, self.prepared.writer(key, entry.id))
        draft = self._event(extract, rows=0, sent=0, sha256="")
        size = prepared.bytes if prepared is not None else None
        return OpenExtract(extract.exchange_id, draft.to_dict(), chunks, size)

    @staticmethod
    def _check_filter(path, plan: ExtractPlan, request: ExtractRequest) -> None:
        """Raise InvalidInput when the filter does not fit the columns' types.

        Arrow picks its comparison kernels by type even on an empty table, so
        a value of the wrong type fails here instead of in the middle of the
        stream.
        """
        empty = ds.dataset(path, format="parquet").schema.empty_table()
        try:
            empty.filter(plan.expression)
        except (
            pa.ArrowNotImplementedError,
            pa.ArrowInvalid,
            pa.ArrowTypeError,
        ) as error:
            raise InvalidInput(
                f"invalid filter {request.filter!r} for dataset "
                f"{request.dataset_id!r}: {error}; compare each column with a "
                "value of its type"
            ) from None

    def _key(self, entry, plan: ExtractPlan, row_filter, compression: str) -> str:
        return extract_key(
            dataset_sha256=entry.sha256,
            columns=plan.columns,
            row_filter=row_filter,
            rules=plan.rules,
            quasi_identifiers=plan.quasi_identifiers,
            k=plan.k,
            compression=compression,
            secret=self.context.secret,
        )

    def prepare(self, entry) -> PreparedStream | None:
        """Encode the whole-dataset extract of ``entry`` ahead of any request.

        The stream follows the dataset's policy and uses the default
        compression. Returns None for core data, when preparing is off, or
        when the extract would fail its policy or k-anonymity check.
        """
        if not self.prepared.enabled or grade_family(entry) == "core":
            return None
        # Purposes, cities and approvals are checked per request and do not
        # change the bytes, so the plan takes any purpose and city allowed.
        policy = entry.policy or {}
        purpose = (policy.get("purposes") or ["prepare"])[0]
        city = (policy.get("cities") or [""])[0]
        request = ExtractRequest(entry.id, purpose)
        path = dataset_path(self.context.settings.data_dir, entry.name)
        try:
            plan = plan_extract(entry, request, consumer_city=city, approved=True)
            if plan.k and plan.quasi_identifiers:
                self._check_k_anonymity(entry.id, path, plan)
        except PolicyViolation as error:
            log.info("extract of %s not prepared: %s", entry.id, error)
            return None
        key = self._key(entry, plan, request.filter, request.compression)
        writer = self.prepared.writer(key, entry.id)
        digest = hashlib.sha256()
        rows = 0
        try:
            for chunk, batch_rows in self._encode(path, plan, request.compression):
                digest.update(chunk)
                rows += batch_rows
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        stream = writer.commit(rows, digest.hexdigest())
        if stream is not None:
            log.info(
                "prepared the extract of %s: %d rows, %d bytes",
                entry.id,
                rows,
                stream.bytes,
            )
        return stream

    def _send_prepared(
        self, extract: _Extract, stream: PreparedStream, handle
    ) -> Iterator[bytes]:
        """Yield a prepared stream; hold back its end if it fails its hash check.

        A file changed since it was last hashed is hashed as it is sent. If it
        no longer matches its record, it is deleted, and the consumer gets a
        stream without its end, so it never takes the bytes for a complete
        extract. The log then records the hash actually sent.
        """
        identity = self.prepared.identity(handle)
        checked = not self.prepared.is_verified(stream, identity)
        digest = hashlib.sha256()
        sent = 0
        complete = False
        unsent = None
        reader = self.prepared.read(handle)
        try:
            for chunk in reader:
                if checked:
                    digest.update(chunk)
                if unsent is not None:
                    yield unsent
                    sent += len(unsent)
                unsent = chunk
            if checked and digest.hexdigest() != stream.sha256:
                self.prepared.discard(stream)
                log.error(
                    "prepared extract %s of %s changed on disk (SHA-256 %s, "
                    "recorded %s); it was deleted and extract %s stopped before "
                    "its end",
                    stream.key,
                    extract.entry.id,
                    digest.hexdigest(),
                    stream.sha256,
                    extract.exchange_id,
                )
                return
            if checked:
                self.prepared.mark_verified(stream, identity)
            # As in _stream, the receipt is registered before the last chunk.
            complete = True
            self._finish(extract, stream.rows, stream.bytes, stream.sha256)
            if unsent is not None:
                yield unsent
        finally:
            reader.close()
            if not complete:
                sha256 = digest.hexdigest() if checked else ""
                self._finish(extract, 0, sent, sha256, complete=False)

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

    def _encode(
        self, path, plan: ExtractPlan, compression: str
    ) -> Iterator[tuple[bytes, int]]:
        """Yield the Arrow IPC stream of ``plan`` as (chunk, rows in the chunk)."""
        sink = _ChunkSink()
        codec = None if compression == "none" else compression
        options = pa.ipc.IpcWriteOptions(compression=codec)
        writer = None
        for batch in deidentify(
            self._scan(path, plan), plan.rules, self.context.secret
        ):
            if writer is None:
                writer = pa.ipc.new_stream(sink, batch.schema, options=options)
            writer.write_batch(batch)
            yield sink.take(), batch.num_rows
        if writer is None:
            schema = self._output_schema(path, plan)
            writer = pa.ipc.new_stream(sink, schema, options=options)
        writer.close()
        yield sink.take(), 0

    def _stream(self, extract: _Extract, path, keep=None) -> Iterator[bytes]:
        """Encode, hash and yield the extract; ``keep`` (a PreparedWriter) tees it."""
        digest = hashlib.sha256()
        sent = rows = 0
        complete = False
        unsent = None
        compression = extract.request.compression
        try:
            for chunk, batch_rows in self._encode(path, extract.plan, compression):
                digest.update(chunk)
                if keep is not None:
                    keep.write(chunk)
                if unsent is not None:
                    yield unsent
                    sent += len(unsent)
                unsent = chunk
                rows += batch_rows
            sha256 = digest.hexdigest()
            if keep is not None:
                # Flushing the copy to disk must not delay the stream's end.
                keep.commit_in_background(rows, sha256)
                keep = None
            # The receipt is registered before the last chunk leaves, so a
            # consumer that requests it right after the stream ends finds it.
            complete = True
            self._finish(extract, rows, sent + len(unsent), sha256)
            yield unsent
        finally:
            if keep is not None:
                keep.abort()
            if not complete:
                self._finish(extract, rows, sent, digest.hexdigest(), complete=False)

    def _output_schema(self, path, plan: ExtractPlan) -> pa.Schema:
        empty = ds.dataset(path, format="parquet").schema.empty_table()
        empty = empty.select(plan.columns)
        batches = empty.to_batches() or [
            pa.RecordBatch.from_pylist([], schema=empty.schema)
        ]
        return next(deidentify(batches, plan.rules, self.context.secret)).schema

    def _event(
        self,
        extract: _Extract,
        *,
        rows: int,
        sent: int,
        sha256: str,
        complete: bool = True,
    ):
        from citymesh.ledger.events import UsageEvent

        return UsageEvent(
            kind="exchange",
            dataset_id=extract.entry.id,
            provider=self.context.settings.city,
            consumer=extract.signer.account,
            purpose=extract.request.purpose,
            rows=rows,
            bytes=sent,
            time=extract.started,
            detail={
                "exchange_id": extract.exchange_id,
                "grade": extract.entry.grade,
                "columns": extract.plan.columns,
                "filter": extract.request.filter,
                "deid": extract.plan.rules,
                "sha256": sha256,
                "complete": complete,
                "prepared": extract.prepared is not None,
            },
        )

    def _finish(
        self,
        extract: _Extract,
        rows: int,
        sent: int,
        sha256: str,
        complete: bool = True,
    ) -> None:
        from citymesh.ledger.events import sign_event

        event = self._event(
            extract, rows=rows, sent=sent, sha256=sha256, complete=complete
        )
        event = sign_event(event, self.context.identity.signing_key)
        entry, signer = extract.entry, extract.signer
        if not complete:
            self.context.usage.log.append(event)
            log.warning(
                "extract %s of %s to %s ended early after %d rows",
                extract.exchange_id,
                entry.id,
                signer.account,
                rows,
            )
            return
        row = PendingExchange(
            exchange_id=extract.exchange_id,
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
            extract.exchange_id,
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
                f"with the key registered for {signer.account!r}: the signed event "
                "differs from the provider's (other rows, bytes or SHA-256 than "
                "were sent?); compare with GET /exchange/{id}/receipt"
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
