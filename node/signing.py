"""Signed HTTP requests between nodes.

A signed request carries five headers:

- ``X-Citymesh-Account``: the signer's ledger account (checksum address);
- ``X-Citymesh-Target``: the ledger account of the node the request is sent to;
- ``X-Citymesh-Timestamp``: Unix time in integer milliseconds;
- ``X-Citymesh-Nonce``: 32 random hex digits, never reused by the signer;
- ``X-Citymesh-Signature``: hex Ed25519 signature of the canonical message.

The canonical message is these lines joined by newlines::

    citymesh-request-v2
    <account, lower case>
    <target account, lower case>
    <METHOD>
    <raw path, plus '?' and the raw query string when there is one>
    <timestamp>
    <nonce>
    <hex SHA-256 of the body>

The target account binds a request to one node, so a request captured at one
node is rejected by every other node. The server resolves the account to its
registered Ed25519 key and role through a ``resolve_signer`` callable (the
on-chain node registry in production), then rejects requests for another node,
unknown or revoked signers, timestamps outside the window, nonces seen before
and bad signatures. The header checks run before the server reads the body.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from citymesh.errors import AuthError, InvalidInput, NotFound

log = logging.getLogger("citymesh.node")

ACCOUNT_HEADER = "X-Citymesh-Account"
TARGET_HEADER = "X-Citymesh-Target"
TIMESTAMP_HEADER = "X-Citymesh-Timestamp"
NONCE_HEADER = "X-Citymesh-Nonce"
SIGNATURE_HEADER = "X-Citymesh-Signature"
SIGNED_HEADERS = (ACCOUNT_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
# Sent by /identity and by a WrongTarget rejection, so that a client can learn
# which account to put in X-Citymesh-Target.
NODE_ACCOUNT_HEADER = "X-Citymesh-Node-Account"
MESSAGE_PREFIX = b"citymesh-request-v2"
IDENTITY_PATH = "/identity"


class WrongTarget(AuthError):
    """A signed request names another node's account as its target."""


class RequestTooLarge(InvalidInput):
    """A request body is over the node's size limit."""


@dataclass(frozen=True)
class SignerInfo:
    """A verified signer: account, registered public key, role and city."""

    account: str
    pubkey: bytes
    role: int
    active: bool = True
    city: str = ""


# A resolver returns (pubkey, role, active), optionally with the city as a
# fourth item, or a SignerInfo, or None for an unknown account.
SignerResolver = Callable[[str], "tuple | SignerInfo | None"]


class Signer:
    """Anything with an ``account`` and a ``sign(message) -> bytes`` method."""

    account: str

    def sign(self, message: bytes) -> bytes:  # pragma: no cover - protocol
        raise NotImplementedError


def canonical_message(
    account: str,
    method: str,
    target: bytes,
    timestamp: str,
    nonce: str,
    body: bytes,
    target_account: str = "",
) -> bytes:
    """Return the bytes a request signature covers (see the module docstring)."""
    return b"\n".join(
        [
            MESSAGE_PREFIX,
            account.lower().encode("ascii"),
            target_account.lower().encode("ascii"),
            method.upper().encode("ascii"),
            target,
            timestamp.encode("ascii"),
            nonce.encode("ascii"),
            hashlib.sha256(body).hexdigest().encode("ascii"),
        ]
    )


def sign_headers(
    signer: Signer,
    method: str,
    target: bytes,
    body: bytes,
    now: float | None = None,
    *,
    target_account: str = "",
) -> dict[str, str]:
    """Return the signature headers for one request to the node ``target_account``.

    An empty ``target_account`` leaves the target header out, and a node
    rejects such a request. Only a verifier built without ``node_account``
    accepts it.
    """
    timestamp = str(int((time.time() if now is None else now) * 1000))
    nonce = secrets.token_hex(16)
    message = canonical_message(
        signer.account, method, target, timestamp, nonce, body, target_account
    )
    headers = {
        ACCOUNT_HEADER: signer.account,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: signer.sign(message).hex(),
    }
    if target_account:
        headers[TARGET_HEADER] = target_account
    return headers


# Target accounts learned from /identity, by origin (scheme, host, port). They
# are shared by all SignedRequestAuth objects, because NodeClient makes a new
# one per request.
_target_accounts: dict[tuple[str, str, int | None], str] = {}
_target_lock = threading.Lock()


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


class SignedRequestAuth(httpx.Auth):
    """httpx authentication that signs every request with a node's Ed25519 key.

    ``target_account`` is the account of the node that receives the requests.
    When it is None, the account is read from the ``X-Citymesh-Node-Account``
    header of the node's /identity response and kept per origin. A
    WrongTarget rejection that names another account, after a node at that
    origin was replaced, updates the kept account and signs the request once more.

    NOTE: /identity is not authenticated, so over plain HTTP an attacker on the
    path can name another account; run nodes behind TLS where that matters.
    """

    requires_request_body = True

    def __init__(self, signer: Signer, target_account: str | None = None) -> None:
        self.signer = signer
        self.target_account = target_account

    def auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        origin = _origin(request.url)
        account = self.target_account
        if account is None:
            with _target_lock:
                account = _target_accounts.get(origin)
        if account is None:
            identity = httpx.Request("GET", request.url.join(IDENTITY_PATH))
            identity_response = yield identity
            account = identity_response.headers.get(NODE_ACCOUNT_HEADER, "")
            if account:
                with _target_lock:
                    _target_accounts[origin] = account
        response = yield self._signed(request, account)
        named = response.headers.get(NODE_ACCOUNT_HEADER, "")
        if (
            self.target_account is None
            and response.status_code == 401
            and named
            and named.lower() != account.lower()
        ):
            with _target_lock:
                _target_accounts[origin] = named
            yield self._signed(request, named)

    def _signed(self, request: httpx.Request, account: str) -> httpx.Request:
        headers = sign_headers(
            self.signer,
            request.method,
            request.url.raw_path,
            request.content,
            target_account=account,
        )
        request.headers.update(headers)
        return request


class NonceStore:
    """Nonces seen within the signature window, per signer account.

    With a ``path`` the nonces are kept in that SQLite file, so a request
    captured before a node restart is still rejected as a replay after it.
    Without one they are kept in memory for the life of the process. Entries
    older than twice the window are deleted at most once per window, because a
    request that old fails the timestamp check before its nonce is looked at.
    """

    def __init__(self, window_s: float, path: Path | None = None) -> None:
        self.window_s = window_s
        self.path = path
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], float] = {}
        self._last_purge = float("-inf")
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS nonces (account TEXT NOT NULL, "
                "nonce TEXT NOT NULL, seen REAL NOT NULL, "
                "PRIMARY KEY (account, nonce))"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS nonces_seen ON nonces (seen)")
            self._db.commit()

    def add(self, account: str, nonce: str, now: float) -> bool:
        """Record a nonce; return False if this account already used it."""
        key = (account.lower(), nonce)
        with self._lock:
            purge = now - self._last_purge > self.window_s
            cutoff = now - 2 * self.window_s
            if self._db is None:
                if purge:
                    self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
                    self._last_purge = now
                if key in self._seen:
                    return False
                self._seen[key] = now
                return True
            with self._db:
                if purge:
                    self._db.execute("DELETE FROM nonces WHERE seen < ?", (cutoff,))
                    self._last_purge = now
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO nonces (account, nonce, seen) "
                    "VALUES (?, ?, ?)",
                    (*key, now),
                )
            return cursor.rowcount == 1

    def count(self) -> int:
        """Return the number of nonces kept."""
        with self._lock:
            if self._db is None:
                return len(self._seen)
            return self._db.execute("SELECT COUNT(*) FROM nonces").fetchone()[0]

    def close(self) -> None:
        """Close the SQLite file, if any."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class RejectionLog:
    """WARNING log of rejected requests, rate-limited per account and reason.

    At most one line per (account, reason) is written every ``interval_s``
    seconds. The next line after a quiet spell gives the number of rejections
    left out. The table keeps at most ``max_keys`` keys, so a flood of fresh
    accounts cannot grow it without bound.
    """

    def __init__(
        self,
        interval_s: float = 10.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self.clock = clock
        self._state: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def record(self, account: str, reason: str, request: str = "") -> None:
        """Log one rejection unless a line for this account and reason is recent."""
        now = self.clock()
        account = account[:64]
        key = (account.lower(), reason)
        with self._lock:
            last, suppressed = self._state.get(key, (float("-inf"), 0))
            if now - last < self.interval_s:
                self._state[key] = (last, suppressed + 1)
                return
            if len(self._state) >= self.max_keys:
                self._state = {
                    k: v for k, v in self._state.items() if now - v[0] < self.interval_s
                }
            if len(self._state) >= self.max_keys:
                # Every key is recent: start over rather than grow past the bound.
                self._state.clear()
            self._state[key] = (now, 0)
        if suppressed:
            log.warning(
                "rejected request %s: %s, signer account %r "
                "(%d more rejections for this account and reason were not logged)",
                request or "-",
                reason,
                account,
                suppressed,
            )
        else:
            log.warning(
                "rejected request %s: %s, signer account %r",
                request or "-",
                reason,
                account,
            )


@dataclass(frozen=True)
class CheckedHeaders:
    """Signature headers that passed the checks done before the body is read."""

    signer: SignerInfo
    account: str
    target_account: str
    timestamp: str
    nonce: str
    signature: str
    now: float


class RequestVerifier:
    """Checker of signed requests: right node, signer registered and active,
    fresh, unique and valid.

    ``node_account`` is the account of the node that verifies. When set, a
    request must name it in X-Citymesh-Target. ``nonce_path`` keeps the seen
    nonces in a SQLite file. Resolved signers are kept in an LRU cache of
    ``cache_max`` accounts: a known account for ``cache_s`` seconds, an
    unknown one for ``negative_cache_s`` seconds.
    """

    def __init__(
        self,
        resolve_signer: SignerResolver,
        *,
        window_s: float = 300.0,
        cache_s: float = 10.0,
        negative_cache_s: float = 5.0,
        cache_max: int = 10_000,
        node_account: str | None = None,
        nonce_path: Path | None = None,
        rejections: RejectionLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolve_signer = resolve_signer
        self.window_s = window_s
        self.cache_s = cache_s
        self.negative_cache_s = negative_cache_s
        self.cache_max = cache_max
        self.node_account = node_account
        self.clock = clock
        self.nonces = NonceStore(window_s, nonce_path)
        self.rejections = rejections if rejections is not None else RejectionLog()
        self._cache: OrderedDict[str, tuple[float, SignerInfo | None]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def verify(
        self, method: str, target: bytes, headers: dict[str, str], body: bytes
    ) -> SignerInfo:
        """Return the signer of a request or raise AuthError saying why not."""
        checked = self.check_headers(method, target, headers)
        return self.check_body(checked, method, target, body)

    def check_headers(
        self, method: str, target: bytes, headers: dict[str, str]
    ) -> CheckedHeaders:
        """Check everything but the signature and nonce, without the body.

        Raises AuthError for missing headers, a stale timestamp, another target
        node, or an unknown or revoked signer. Each rejection is logged.
        """
        lowered = {key.lower(): value for key, value in headers.items()}
        account = lowered.get(ACCOUNT_HEADER.lower()) or ""
        request = f"{method.upper()} {target.decode('latin-1')}"
        try:
            return self._check_headers(lowered, account)
        except AuthError as error:
            self.rejections.record(account, _reason(error), request)
            raise

    def check_body(
        self, checked: CheckedHeaders, method: str, target: bytes, body: bytes
    ) -> SignerInfo:
        """Check the signature over the body and record the nonce."""
        account = checked.account
        request = f"{method.upper()} {target.decode('latin-1')}"
        try:
            signature_bytes = bytes.fromhex(checked.signature)
            message = canonical_message(
                account,
                method,
                target,
                checked.timestamp,
                checked.nonce,
                body,
                checked.target_account,
            )
            Ed25519PublicKey.from_public_bytes(checked.signer.pubkey).verify(
                signature_bytes, message
            )
        except (InvalidSignature, ValueError):
            self.rejections.record(account, "bad signature", request)
            raise AuthError(
                f"bad signature from {account!r}: it does not match the key "
                "registered for this account and the request's target node, "
                "method, path, timestamp, nonce and body"
            ) from None
        if not self.nonces.add(account, checked.nonce, checked.now):
            self.rejections.record(account, "replay", request)
            raise AuthError(
                f"replayed request: nonce {checked.nonce!r} from {account!r} was "
                "used before; sign each request with a fresh nonce"
            )
        return checked.signer

    def _check_headers(self, lowered: dict[str, str], account: str) -> CheckedHeaders:
        required = list(SIGNED_HEADERS)
        if self.node_account is not None:
            required.append(TARGET_HEADER)
        missing = [name for name in required if not lowered.get(name.lower())]
        if missing:
            raise AuthError(
                f"unsigned request: headers {missing!r} are missing; sign the "
                "request with the node's Ed25519 key"
            )
        timestamp = lowered[TIMESTAMP_HEADER.lower()]
        target_account = lowered.get(TARGET_HEADER.lower(), "")
        now = self.clock()
        try:
            sent = int(timestamp) / 1000
        except ValueError:
            raise AuthError(
                f"invalid timestamp {timestamp!r}: send Unix time in integer "
                "milliseconds"
            ) from None
        if abs(now - sent) > self.window_s:
            raise AuthError(
                f"stale request: timestamp {timestamp!r} is {now - sent:+.0f} s "
                f"from the server clock, outside the {self.window_s:g} s window; "
                "sync the clock and sign again"
            )
        if (
            self.node_account is not None
            and target_account.lower() != self.node_account.lower()
        ):
            raise WrongTarget(
                f"wrong target: the request is signed for node {target_account!r} "
                f"but this node is {self.node_account!r}; read the account from "
                f"{IDENTITY_PATH} and sign again"
            )
        return CheckedHeaders(
            signer=self._signer(account),
            account=account,
            target_account=target_account,
            timestamp=timestamp,
            nonce=lowered[NONCE_HEADER.lower()],
            signature=lowered[SIGNATURE_HEADER.lower()],
            now=now,
        )

    def _signer(self, account: str) -> SignerInfo:
        info = self._cached_signer(account)
        if info is None:
            raise AuthError(
                f"unknown signer {account!r}: the account is not in the node "
                "registry; register the node first"
            )
        if not info.active:
            raise AuthError(
                f"revoked signer {account!r}: the node registry marks this node "
                "inactive"
            )
        return info

    def _cached_signer(self, account: str) -> SignerInfo | None:
        now = time.monotonic()
        key = account.lower()
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                expires, info = cached
                if now < expires:
                    self._cache.move_to_end(key)
                    return info
        info = self._resolve(account)
        lifetime = self.cache_s if info is not None else self.negative_cache_s
        with self._cache_lock:
            self._cache[key] = (now + lifetime, info)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_max:
                self._cache.popitem(last=False)
        return info

    def cached_signers(self) -> int:
        """Return the number of accounts in the signer cache."""
        with self._cache_lock:
            return len(self._cache)

    def close(self) -> None:
        """Close the nonce file."""
        self.nonces.close()

    def _resolve(self, account: str) -> SignerInfo | None:
        try:
            resolved = self.resolve_signer(account)
        except (NotFound, InvalidInput):
            return None
        if resolved is None:
            return None
        if isinstance(resolved, SignerInfo):
            return resolved
        pubkey, role, active, *rest = resolved
        if not pubkey:
            return None
        return SignerInfo(
            account=account,
            pubkey=bytes(pubkey),
            role=int(role),
            active=bool(active),
            city=str(rest[0]) if rest else "",
        )


REJECTION_REASONS = (
    "unsigned request",
    "invalid timestamp",
    "stale request",
    "wrong target",
    "unknown signer",
    "revoked signer",
)


def _reason(error: AuthError) -> str:
    """Return the reason that starts a rejection message, for the rejection log."""
    text = str(error)
    return next((r for r in REJECTION_REASONS if text.startswith(r)), "rejected")


def dict_resolver(nodes: dict[str, tuple]) -> SignerResolver:
    """Return a resolver backed by ``{account: (pubkey, role, active[, city])}``."""
    table = {account.lower(): value for account, value in nodes.items()}

    def resolve(account: str) -> tuple | None:
        return table.get(account.lower())

    return resolve


def reject_all_resolver(account: str) -> None:
    """Resolve no signer: used when the node has no registry configured."""
    return
