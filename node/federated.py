"""Federated catalog search: ask many nodes at once, merge and rank the results.

Each peer gets the same query with a shared deadline. A peer that responds late,
fails or uses another code list version is reported in ``peers`` and left
out, so one slow or dead node never fails the search. Results are ranked by a
score (exact code match 3, code below the prefix 1, each keyword in the title
2, in the keywords 1.5, elsewhere 1), then by id.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from citymesh.catalog.codes import shared_codes
from citymesh.catalog.store import MAX_PAGE
from citymesh.errors import InvalidInput
from citymesh.node.signing import SignedRequestAuth, Signer

log = logging.getLogger("citymesh.node")

DEFAULT_DEADLINE_S = 2.0
# A client closes a connection to a peer after this many idle seconds. Nodes
# run uvicorn, which closes idle connections after 5 s (the default
# timeout_keep_alive of uvicorn 0.49), so against such a node the client
# closes first and sends no search on a connection that the node is closing.
# NOTE: a peer behind a proxy that closes idle connections sooner can still
# close one as a search starts, and that peer is then reported as an error.
KEEPALIVE_EXPIRY_S = 2.0
MAX_IDLE_CONNECTIONS = 100


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


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Return the TLS context for peers, made once per process.

    httpx.AsyncClient() builds a new context and loads the CA bundle for every
    client. That took about 35 ms per federated search of bench/catalog.py on
    a 2-core virtual machine (cProfile), most of the client's time. The
    context is httpx's default: certificate checks on, CA bundle from
    SSL_CERT_FILE or SSL_CERT_DIR when set at the first call, else from certifi.
    """
    return httpx.create_ssl_context()


def peer_client() -> httpx.AsyncClient:
    """Return a new AsyncClient for searching peers.

    It uses the shared TLS context, opens as many connections as the searches
    need, and closes a connection after KEEPALIVE_EXPIRY_S idle.
    """
    limits = httpx.Limits(
        max_connections=None,
        max_keepalive_connections=MAX_IDLE_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    return httpx.AsyncClient(verify=tls_context(), limits=limits)


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
    client: httpx.AsyncClient | None = None,
) -> FederatedResult:
    """Search ``peers`` concurrently within ``deadline_s`` and merge the results.

    ``on_behalf_of`` names the original caller to the peers, which record it
    in their query events; it needs a ``signer``. ``client`` (for example
    from ``peer_client``) lets searches reuse open connections to the peers.
    Without it the search opens a client of its own and closes it at the end.
    """
    if limit < 1 or offset < 0 or offset + limit > MAX_PAGE:
        raise InvalidInput(
            f"invalid page (offset {offset!r}, limit {limit!r}): a federated search "
            f"reads up to result {MAX_PAGE} of each peer, so use limit 1 or more, "
            f"offset 0 or more and offset + limit up to {MAX_PAGE}"
        )
    params = {
        "code": code,
        "q": keyword,
        "city": city,
        "grade": grade,
        "tier": tier,
        "limit": offset + limit,
        "offset": 0,
        "on_behalf_of": on_behalf_of if signer is not None else None,
    }
    params = {key: value for key, value in params.items() if value is not None}
    auth = SignedRequestAuth(signer) if signer is not None else None
    deadline = time.monotonic() + deadline_s
    if client is None:
        async with peer_client() as own_client:
            answers = await asyncio.gather(
                *(_ask(own_client, url, params, auth, deadline) for url in peers)
            )
    else:
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
    """Run federated_search_async from synchronous code.

    The searches of a process run on one event loop in a background thread
    and share one client, so the connections to peers stay open from one
    search to the next.
    """
    return _SEARCH_LOOP.run(peers, query)


class _SearchLoop:
    """An event loop in a daemon thread, with the peer client it owns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None

    def run(self, peers: list[str], query: dict[str, Any]) -> FederatedResult:
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "federated_search was called on its own event loop, which would "
                "deadlock: await federated_search_async there instead"
            )
        future = asyncio.run_coroutine_threadsafe(
            self._search(peers, query), self._running_loop()
        )
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def _search(self, peers: list[str], query: dict[str, Any]) -> FederatedResult:
        if self._client is None:
            self._client = peer_client()
        return await federated_search_async(peers, client=self._client, **query)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = _new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever,
                    name="federated-search",
                    daemon=True,
                )
                self._thread.start()
            return self._loop

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the client's connections and stop the loop."""
        with self._lock:
            loop, client = self._loop, self._client
            self._loop = self._thread = self._client = None
        if loop is None:
            return
        if client is not None:
            closing = asyncio.run_coroutine_threadsafe(client.aclose(), loop)
            try:
                closing.result(timeout_s)
            except (TimeoutError, OSError) as error:
                log.warning(
                    "federated search: closing peer connections failed: %s", error
                )
        loop.call_soon_threadsafe(loop.stop)

    def forget(self) -> None:
        """Drop the state that a forked child inherits without the loop's thread."""
        self._lock = threading.Lock()
        self._loop = self._thread = self._client = None


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """Return a uvloop loop when uvloop is installed, else an asyncio loop.

    uvicorn makes the same choice for the node service. With uvloop the client
    spent about 2.5 ms less CPU time per 10-peer search in bench/catalog.py.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


_SEARCH_LOOP = _SearchLoop()
atexit.register(_SEARCH_LOOP.close)
os.register_at_fork(after_in_child=_SEARCH_LOOP.forget)
