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

A receipt the consumer does not confirm within ``RECEIPT_TIMEOUT_S`` is
appended with the provider's signature alone and ``receipt: unconfirmed`` in
its detail, so every extract reaches the log.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from citymesh.catalog.deid import deidentify, k_anonymity
from citymesh.catalog.names import dataset_path
from citymesh.catalog.policy import ExtractPlan, ExtractRequest, plan_extract
from citymesh.errors import AuthError, NotFound, PolicyViolation
from citymesh.node.signing import SignerInfo

log = logging.getLogger("citymesh.node")

RECEIPT_TIMEOUT_S = 300.0
SCAN_BATCH_ROWS = 65_536
ARROW_STREAM_MEDIA_TYPE = "application/vnd.apache.arrow.stream"


@dataclass
class PendingReceipt:
    """A provider-signed exchange event waiting for the consumer's signature."""

    event: Any
    consumer: str
    consumer_pubkey: bytes
    created: float


class _ChunkSink:
    """A write-only file object that collects what the IPC writer emits."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
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
        self._pending: dict[str, PendingReceipt] = {}
        self._lock = threading.Lock()

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
            use_threads=False,
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
        try:
            writer = None
            for batch in deidentify(
                self._scan(path, plan), plan.rules, self.context.secret
            ):
                if writer is None:
                    writer = pa.ipc.new_stream(sink, batch.schema)
                writer.write_batch(batch)
                rows += batch.num_rows
                chunk = sink.take()
                digest.update(chunk)
                sent += len(chunk)
                yield chunk
            if writer is None:
                schema = self._output_schema(path, plan)
                writer = pa.ipc.new_stream(sink, schema)
            writer.close()
            chunk = sink.take()
            digest.update(chunk)
            sent += len(chunk)
            # The receipt is registered before the last chunk leaves, so a
            # consumer that asks for it right after the stream ends finds it.
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
        with self._lock:
            self._pending[exchange_id] = PendingReceipt(
                event, signer.account.lower(), signer.pubkey, time.monotonic()
            )
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
        with self._lock:
            return len(self._pending)

    def receipt(self, exchange_id: str, signer: SignerInfo) -> dict[str, Any]:
        """Return the provider-signed event of an extract to its consumer."""
        return self._pending_for(exchange_id, signer).event.to_dict()

    def _pending_for(self, exchange_id: str, signer: SignerInfo) -> PendingReceipt:
        with self._lock:
            pending = self._pending.get(exchange_id)
        if pending is None:
            raise NotFound(
                f"no receipt is pending for exchange {exchange_id!r}: it was "
                "confirmed, timed out or never finished"
            )
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
        with self._lock:
            if self._pending.pop(exchange_id, None) is None:
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
        now = time.monotonic()
        with self._lock:
            expired = [
                key
                for key, item in self._pending.items()
                if now - item.created >= max_age_s
            ]
            items = [self._pending.pop(key) for key in expired]
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
