"""The regulator's audit of a running network: node logs checked against the chain."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from citymesh.errors import CitymeshError, InvalidInput
from citymesh.ledger.audit import verify_node
from citymesh.ledger.events import LogEntry, UsageEvent

logger = logging.getLogger("citymesh.audit")

__all__ = ["audit_nodes", "entry_from_json"]

ROLE_CITY_NODE = 1


def _hash(value: Any, what: str, seq: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise InvalidInput(
            f"log entry {seq!r}: {what} must be 64 hex digits, got {value!r}"
        )
    return bytes.fromhex(value)


def entry_from_json(data: Mapping[str, Any]) -> LogEntry:
    """Rebuild a LogEntry from a node's ``/ledger/events`` JSON.

    The hashes are taken as the node states them; ``verify_node`` recomputes each
    one from the event, so a node that lies about them fails the audit.
    """
    seq = data.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise InvalidInput(f"log entry seq must be a positive integer, got {seq!r}")
    return LogEntry(
        seq=seq,
        event=UsageEvent.from_dict(data["event"]),
        event_hash=_hash(data.get("event_hash"), "event_hash", seq),
        prev_hash=_hash(data.get("prev_hash"), "prev_hash", seq),
        entry_hash=_hash(data.get("entry_hash"), "entry_hash", seq),
    )


def audit_nodes(
    chain: Any, signer: Any, cities: Iterable[str] | None = None
) -> dict[str, Any]:
    """Verify each city node's whole log against the anchors the chain holds for it.

    ``chain`` is a ChainClient; the nodes and their endpoints come from its registry.
    ``signer`` is the regulator's identity, which signs the requests for the logs.
    A node that cannot be reached fails the audit with the reason.
    """
    from citymesh.node.client import NodeClient

    records = [r for r in chain.nodes() if r.role == ROLE_CITY_NODE and r.active]
    if cities is not None:
        wanted = set(cities)
        records = [r for r in records if r.city in wanted]
    per_city: dict[str, Any] = {}
    for record in records:
        try:
            with NodeClient(record.endpoint, signer=signer) as client:
                entries = [entry_from_json(item) for item in client.events()]
            anchors = chain.anchors(record.account)
            verdict = verify_node(entries, anchors)
            per_city[record.city] = {
                "ok": verdict.ok,
                "events": verdict.events,
                "anchored": verdict.anchored,
                "first_bad_seq": verdict.first_bad_seq,
                "reason": verdict.reason,
            }
        except (CitymeshError, OSError) as error:
            logger.error(
                "audit of %s at %s failed: %s", record.city, record.endpoint, error
            )
            per_city[record.city] = {
                "ok": False,
                "events": 0,
                "anchored": 0,
                "first_bad_seq": None,
                "reason": f"could not audit: {error}",
            }
    ok = bool(per_city) and all(v["ok"] for v in per_city.values())
    return {"ok": ok, "per_city": per_city}
