"""Usage events that the node appends to its own usage log."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("citymesh.node")

ANONYMOUS = "anonymous"
OPERATOR = "operator"


class UsageRecorder:
    """Appends the node's usage events (ingest, query, exchange) to its UsageLog.

    ``provider`` is the node's city id; ``consumer`` is the signer's account,
    ``operator`` for operator actions, or ``anonymous`` for unsigned queries.
    """

    def __init__(self, log_or_path: Any, city: str) -> None:
        from citymesh.ledger.log import UsageLog

        self.log = (
            UsageLog(Path(log_or_path))
            if isinstance(log_or_path, str | Path)
            else log_or_path
        )
        self.city = city

    def record(
        self,
        kind: str,
        dataset_id: str,
        consumer: str,
        purpose: str,
        *,
        rows: int = 0,
        size: int = 0,
        detail: dict[str, Any] | None = None,
        signatures: dict[str, str] | None = None,
    ) -> Any:
        """Append one event and return the log entry."""
        from citymesh.ledger.events import UsageEvent

        event = UsageEvent(
            kind=kind,
            dataset_id=dataset_id,
            provider=self.city,
            consumer=consumer,
            purpose=purpose,
            rows=rows,
            bytes=size,
            time=time.time(),
            detail=detail or {},
            signatures=signatures or {},
        )
        entry = self.log.append(event)
        log.info("usage event %s #%s: %s by %s", kind, entry.seq, dataset_id, consumer)
        return entry

    def head(self) -> int:
        """Return the sequence number of the last event (0 when empty)."""
        return self.log.head()
