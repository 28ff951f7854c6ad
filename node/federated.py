"""Federated catalog search: ask many nodes at once, merge and rank the results.

Each peer gets the same query with a shared deadline. A peer that responds late,
fails or uses another code list version is reported in ``peers`` and left
out, so one slow or dead node never fails the search. Results are ranked by a
score (exact code match 3, code below the prefix 1, each keyword in the title
2, in the keywords 1.5, elsewhere 1), then by id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from citymesh.catalog.codes import shared_codes
from citymesh.node.signing import SignedRequestAuth, Signer

log = logging.getLogger("citymesh.node")

DEFAULT_DEADLINE_S = 2.0


@dataclass
class PeerOutcome:
    """The result of one peer: ok, timeout, error or code_list_mismatch."""

    url: str
    status: str
    detail: str = ""
    ms: float = 0.0
    total: int = 0


@dataclass
class FederatedResult:
    """Merged, ranked results of a federated search and each peer's outcome."""

    items: list[dict[str, Any]]
    total: int
    peers: list[PeerOutcome] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "total": self.total,
            "peers": [outcome.__dict__ for outcome in self.peers],
        }


def score(item: dict[str, Any], code: str | None, keyword: str | None) -> float:
    """Return the ranking score of one result for the query."""
    value = 0.0
    if code:
        value += 3 if item.get("code") == code else 1
    for word in (keyword or "").lower().split():
        if word in str(item.get("title", "")).lower():
            value += 2
        elif any(word in str(k).lower() for k in item.get("keywords") or []):
            value += 1.5
        else:
            value += 1
    return value


async def _ask(
    client: httpx.AsyncClient,
    url: str,
    params: dict[str, Any],
    auth: httpx.Auth | None,
    deadline: float,
) -> tuple[PeerOutcome, list[dict[str, Any]]]:
    started = time.monotonic()
    remaining = max(deadline - started, 0.001)
    try:
        response = await asyncio.wait_for(
            client.get(
                f"{url.rstrip('/')}/catalog/search",
                params=params,
                auth=auth,
                timeout=remaining,
            ),
            timeout=remaining,
        )
        elapsed = (time.monotonic() - started) * 1000
        if response.status_code != 200:
            return PeerOutcome(
                url,
                "error",
                f"HTTP {response.status_code}: {response.text[:200]}",
                elapsed,
            ), []
        body = response.json()
    except (TimeoutError, httpx.TimeoutException):
        elapsed = (time.monotonic() - started) * 1000
        return PeerOutcome(
            url, "timeout", f"no answer within {remaining:.2f} s", elapsed
        ), []
    except (httpx.HTTPError, ValueError) as error:
        elapsed = (time.monotonic() - started) * 1000
        return PeerOutcome(
            url, "error", f"{type(error).__name__}: {error}", elapsed
        ), []
    codes = shared_codes()
    theirs = body.get("code_list") or {}
    if theirs.get("sha256") != codes.sha256:
        return PeerOutcome(
            url,
            "code_list_mismatch",
            f"peer uses code list {theirs.get('version')!r} ({theirs.get('sha256')}) "
            f"but this node uses {codes.version!r} ({codes.sha256}); its results "
            "are left out until both use the same list",
            elapsed,
        ), []
    return PeerOutcome(url, "ok", "", elapsed, int(body.get("total", 0))), body.get(
        "items", []
    )


async def federated_search_async(
    peers: list[str],
    *,
    code: str | None = None,
    keyword: str | None = None,
    city: str | None = None,
    grade: str | None = None,
    tier: str | None = None,
    limit: int = 50,
    offset: int = 0,
    deadline_s: float = DEFAULT_DEADLINE_S,
    signer: Signer | None = None,
    on_behalf_of: str | None = None,
) -> FederatedResult:
    """Search ``peers`` concurrently within ``deadline_s`` and merge the results.

    ``on_behalf_of`` names the original caller to the peers, which record it
    in their query events; it needs a ``signer``.
    """
    params = {
        "code": code,
        "q": keyword,
        "city": city,
        "grade": grade,
        "tier": tier,
        "limit": min(offset + limit, 1000),
        "offset": 0,
        "on_behalf_of": on_behalf_of if signer is not None else None,
    }
    params = {key: value for key, value in params.items() if value is not None}
    auth = SignedRequestAuth(signer) if signer is not None else None
    deadline = time.monotonic() + deadline_s
    async with httpx.AsyncClient() as client:
        answers = await asyncio.gather(
            *(_ask(client, url, params, auth, deadline) for url in peers)
        )
    items: list[dict[str, Any]] = []
    outcomes = []
    for outcome, found in answers:
        outcomes.append(outcome)
        items.extend(found)
        if outcome.status != "ok":
            log.warning(
                "federated search: peer %s %s: %s",
                outcome.url,
                outcome.status,
                outcome.detail,
            )
    ranked = sorted(items, key=lambda item: (-score(item, code, keyword), item["id"]))
    total = sum(outcome.total for outcome in outcomes)
    return FederatedResult(ranked[offset : offset + limit], total, outcomes)


def federated_search(peers: list[str], **query: Any) -> FederatedResult:
    """Run federated_search_async from synchronous code."""
    return asyncio.run(federated_search_async(peers, **query))
