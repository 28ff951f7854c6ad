"""The regulator's audit of a running network: node logs checked against the chain.

For each active city node in the on-chain registry, the regulator downloads the
node's log as a segment file (entries, inclusion proofs and anchor copies), keeps it,
and verifies it against the anchors the chain holds for the node's account. The kept
files can be verified again later, offline or against the chain.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from citymesh.errors import CitymeshError
from citymesh.ledger.audit import NodeVerdict, verify_segment

logger = logging.getLogger("citymesh.audit")

__all__ = ["audit_nodes", "verdict_dict"]

ROLE_CITY_NODE = 1


def verdict_dict(verdict: NodeVerdict) -> dict[str, Any]:
    """Return a verdict as JSON-ready data."""
    return {
        "ok": verdict.ok,
        "events": verdict.events,
        "anchored": verdict.anchored,
        "first_bad_seq": verdict.first_bad_seq,
        "reason": verdict.reason,
    }


def _write_atomic(path: Path, body: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(body)
    partial.replace(path)


def audit_nodes(
    chain: Any,
    signer: Any,
    cities: Iterable[str] | None = None,
    bundle_dir: Path | None = None,
) -> dict[str, Any]:
    """Verify each city node's whole log against the anchors the chain holds for it.

    ``chain`` is a ChainClient; the nodes and their endpoints come from its registry.
    ``signer`` is the regulator's identity, which signs the requests for the logs.
    Each node's segment is kept as ``<city>.jsonl`` in ``bundle_dir`` (a temporary
    folder when None). A node that cannot be reached fails the audit with the reason.
    """
    from citymesh.node.client import NodeClient

    records = [r for r in chain.nodes() if r.role == ROLE_CITY_NODE and r.active]
    if cities is not None:
        wanted = set(cities)
        records = [r for r in records if r.city in wanted]
    if bundle_dir is None:
        import tempfile

        bundle_dir = Path(tempfile.mkdtemp(prefix="citymesh-audit-"))
    bundle_dir.mkdir(parents=True, exist_ok=True)

    per_city: dict[str, Any] = {}
    for record in records:
        path = bundle_dir / f"{record.city}.jsonl"
        try:
            with NodeClient(record.endpoint, signer=signer) as client:
                _write_atomic(path, client.segment())
            verdict = verify_segment(path, chain.anchors(record.account))
            per_city[record.city] = verdict_dict(verdict) | {"bundle": str(path)}
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
                "bundle": None,
            }
    ok = bool(per_city) and all(v["ok"] for v in per_city.values())
    return {"ok": ok, "per_city": per_city}


def grade_policy(grades: dict[str, str] | None = None) -> Any:
    """Return a report policy check for the rules that follow a dataset's grade.

    ``grades`` maps dataset ids to grades (from the nodes' catalogs); without an entry
    the grade recorded in the event's detail is used. The check flags core data that
    was exchanged or trained on, important data exchanged without de-identification,
    and important data trained on without secure aggregation.
    """
    known = grades or {}

    def check(event: Any) -> str | None:
        grade = str(known.get(event.dataset_id) or event.detail.get("grade") or "")
        family = grade.split(".")[0]
        if family == "core" and event.kind in ("exchange", "train_round"):
            return f"core dataset {event.dataset_id!r} was used: {event.kind} event"
        if family == "important" and event.kind == "exchange":
            if not event.detail.get("deid"):
                return (
                    f"important dataset {event.dataset_id!r} left its node without "
                    "de-identification"
                )
        if family == "important" and event.kind == "train_round":
            if event.detail.get("privacy") != "secagg":
                return (
                    f"important dataset {event.dataset_id!r} trained without secure "
                    "aggregation"
                )
        return None

    return check
