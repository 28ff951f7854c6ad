"""The regulator's audit of a running network: node logs checked against the chain.

For each active city node in the on-chain registry, the regulator downloads the
node's log as a segment file (entries, inclusion proofs and anchor copies), keeps it,
and verifies it against the anchors the chain holds for the node's account. The kept
files can be verified again later against the chain (``verify_bundle_on_chain``).
Offline, a file can only be checked for internal consistency, which a forger can
satisfy by recomputing the hashes and roots of invented entries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from citymesh.errors import CitymeshError, InvalidInput, NotFound
from citymesh.ledger.audit import NodeVerdict, verify_node, verify_segment
from citymesh.ledger.segment import Segment, read_segment

logger = logging.getLogger("citymesh.audit")

__all__ = [
    "audit_nodes",
    "city_nodes",
    "verdict_dict",
    "verify_bundle_on_chain",
]

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
    The checks are those of ``verify_bundle_on_chain``, except that entries after
    the node's last anchor pass and are counted in the verdict's ``unanchored``.
    Raises NotFound when a city in ``cities`` has no active city node.
    """
    from citymesh.node.client import NodeClient

    records = city_nodes(chain, cities)
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
            # The node's own log may run past its last anchor, so unanchored
            # entries pass here, and the verdict's "unanchored" counts them.
            verdict = verify_bundle_on_chain(path, chain, allow_unanchored=True)
            if verdict["ok"] and verdict.get("node") != record.account:
                verdict = _failed(
                    f"the node served the segment of {verdict.get('node')!r}, not "
                    f"its own account {record.account!r}"
                )
            per_city[record.city] = verdict | {"bundle": str(path)}
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


def city_nodes(chain: Any, cities: Iterable[str] | None = None) -> list[Any]:
    """Return the active city nodes of the chain's registry, only ``cities`` if given.

    Raises NotFound naming the first requested city without an active city node,
    with the registered ones, so a misspelt city is not audited as "nothing found".
    """
    city_records = [r for r in chain.nodes() if r.role == ROLE_CITY_NODE]
    active = [r for r in city_records if r.active]
    if cities is None:
        return active
    requested = list(dict.fromkeys(cities))
    active_cities = {r.city for r in active}
    revoked_cities = {r.city for r in city_records if not r.active}
    registered = ", ".join(sorted(active_cities)) or "none"
    for city in requested:
        if city in active_cities:
            continue
        if city in revoked_cities:
            raise NotFound(
                f"the city node named {city!r} is revoked; active city nodes: "
                f"{registered}"
            )
        raise NotFound(
            f"no registered city node is named {city!r}; registered city nodes: "
            f"{registered}"
        )
    return [r for r in active if r.city in set(requested)]


def _failed(reason: str, **extra: Any) -> dict[str, Any]:
    return {
        "ok": False,
        "events": 0,
        "anchored": 0,
        "first_bad_seq": None,
        "reason": reason,
    } | extra


def verify_bundle_on_chain(
    path: Path,
    chain: Any,
    *,
    from_seq: int = 1,
    allow_unanchored: bool = False,
) -> dict[str, Any]:
    """Verify a segment file against the chain; return a verdict dict.

    Beyond the checks of ``verify_node`` against the chain's anchors, the segment's
    node must be a registered city node, the segment must start at or before
    ``from_seq``, and it must contain every entry up to the node's last anchored seq.
    Entries after that seq are only hash-chained, not proven, so they fail the
    verdict unless ``allow_unanchored``. The dict has the keys of ``verdict_dict``
    plus ``node``, ``city``, ``revoked`` and ``unanchored`` (a count).
    Chain errors (unreachable, wrong chain id) are raised, not turned into verdicts.
    """
    segment, error = read_segment(path)
    if error is not None:
        return verdict_dict(verify_segment(path))
    record, problem = _registered_city_node(chain, segment.node)
    if record is None:
        return _failed(problem, node=segment.node)
    about = {
        "node": record.account,
        "city": record.city,
        "revoked": not record.active,
        "unanchored": 0,
    }
    revoked_note = "; the node is revoked on chain" if not record.active else ""
    if segment.from_seq > from_seq:
        return _failed(
            f"the segment starts at seq {segment.from_seq}, so entries "
            f"{from_seq}..{segment.from_seq - 1} are missing; pass --from-seq "
            f"{segment.from_seq} to audit only the later part of the log"
            + revoked_note,
            **about,
        )
    last_anchored = chain.last_anchored_seq(record.account)
    if segment.to_seq < last_anchored:
        first_missing = max(segment.to_seq + 1, segment.from_seq)
        return _failed(
            f"the segment ends at seq {segment.to_seq} but the chain has anchors up "
            f"to seq {last_anchored}, so entries {first_missing}..{last_anchored} "
            f"are missing" + revoked_note,
            **about,
        )
    verdict = verify_node(segment, chain.anchors(record.account))
    result = verdict_dict(verdict) | about
    if not verdict.ok:
        result["reason"] += revoked_note
        return result
    return _check_anchored_part(result, segment, last_anchored, allow_unanchored)


def _registered_city_node(chain: Any, account: str) -> tuple[Any, str]:
    try:
        record = chain.node(account)
    except NotFound:
        return None, (
            f"the segment's node {account!r} is not registered on chain, so its "
            f"entries cannot be the log of a city node"
        )
    except InvalidInput:
        return None, (
            f"the segment's node {account!r} is not an account address, so it "
            f"names no registered node"
        )
    if record.role != ROLE_CITY_NODE:
        return None, (
            f"the segment's node {account!r} is registered with role {record.role}, "
            f"not as a city node (role {ROLE_CITY_NODE})"
        )
    return record, ""


def _check_anchored_part(
    result: dict[str, Any],
    segment: Segment,
    last_anchored: int,
    allow_unanchored: bool,
) -> dict[str, Any]:
    anchored_to = min(segment.to_seq, last_anchored)
    expected_anchored = max(0, anchored_to - segment.from_seq + 1)
    if result["anchored"] != expected_anchored:
        result["ok"] = False
        result["reason"] = (
            f"only {result['anchored']} of the {expected_anchored} entries up to the "
            f"last anchored seq {last_anchored} are proven under an anchor"
        )
        return result
    first_unanchored = max(last_anchored + 1, segment.from_seq)
    unanchored = max(0, segment.to_seq - first_unanchored + 1)
    result["unanchored"] = unanchored
    if result["revoked"]:
        result["reason"] += "; the node is revoked on chain"
    if unanchored == 0:
        return result
    span = f"entries {first_unanchored}..{segment.to_seq}"
    if allow_unanchored:
        result["reason"] += (
            f"; {span} are not yet anchored, so only their hash chain was checked"
        )
        return result
    result["ok"] = False
    result["reason"] = (
        f"{span} are not yet anchored on chain, so nothing proves they are the "
        f"node's; pass --allow-unanchored to accept them, or wait for the next anchor"
    )
    return result


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
