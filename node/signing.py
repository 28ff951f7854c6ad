"""Signed HTTP requests between nodes.

A signed request carries four headers:

- ``X-Citymesh-Account``: the signer's ledger account (checksum address);
- ``X-Citymesh-Timestamp``: Unix time in integer milliseconds;
- ``X-Citymesh-Nonce``: 32 random hex digits, never reused by the signer;
- ``X-Citymesh-Signature``: hex Ed25519 signature of the canonical message.

The canonical message is these lines joined by newlines::

    citymesh-request-v1
    <account, lower case>
    <METHOD>
    <raw path, plus '?' and the raw query string when there is one>
    <timestamp>
    <nonce>
    <hex SHA-256 of the body>

The server resolves the account to its registered Ed25519 key and role through
a ``resolve_signer`` callable (the on-chain node registry in production), then
rejects unknown or revoked signers, timestamps outside the window, nonces seen
before and bad signatures.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from citymesh.errors import AuthError, InvalidInput, NotFound

log = logging.getLogger("citymesh.node")

ACCOUNT_HEADER = "X-Citymesh-Account"
TIMESTAMP_HEADER = "X-Citymesh-Timestamp"
NONCE_HEADER = "X-Citymesh-Nonce"
SIGNATURE_HEADER = "X-Citymesh-Signature"
SIGNED_HEADERS = (ACCOUNT_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
MESSAGE_PREFIX = b"citymesh-request-v1"


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
    account: str, method: str, target: bytes, timestamp: str, nonce: str, body: bytes
) -> bytes:
    """Return the bytes a request signature covers (see the module docstring)."""
    return b"\n".join(
        [
            MESSAGE_PREFIX,
            account.lower().encode("ascii"),
            method.upper().encode("ascii"),
            target,
            timestamp.encode("ascii"),
            nonce.encode("ascii"),
            hashlib.sha256(body).hexdigest().encode("ascii"),
        ]
    )


def sign_headers(
    signer: Signer, method: str, target: bytes, body: bytes, now: float | None = None
) -> dict[str, str]:
    """Return the four signature headers for one request."""
    timestamp = str(int((time.time() if now is None else now) * 1000))
    nonce = secrets.token_hex(16)
    message = canonical_message(signer.account, method, target, timestamp, nonce, body)
    return {
        ACCOUNT_HEADER: signer.account,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: signer.sign(message).hex(),
    }


class SignedRequestAuth(httpx.Auth):
    """httpx authentication that signs every request with a node's Ed25519 key."""

    requires_request_body = True

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, None, None]:
        headers = sign_headers(
            self.signer, request.method, request.url.raw_path, request.content
        )
        request.headers.update(headers)
        yield request


class NonceStore:
    """Nonces seen within the signature window, kept in memory per process.

    Entries older than twice the window are dropped, because a request that old
    fails the timestamp check before its nonce is looked at.

    NOTE: the nonces are not persisted, so a request captured less than one
    window before a node restart can be replayed once after the restart.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._last_purge = time.monotonic()

    def add(self, account: str, nonce: str, now: float) -> bool:
        """Record a nonce; return False if this account already used it."""
        key = (account.lower(), nonce)
        with self._lock:
            if now - self._last_purge > self.window_s:
                cutoff = now - 2 * self.window_s
                self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
                self._last_purge = now
            if key in self._seen:
                return False
            self._seen[key] = now
            return True


class RequestVerifier:
    """Verifies signed requests: signer registered and active, fresh, unique, valid."""

    def __init__(
        self,
        resolve_signer: SignerResolver,
        *,
        window_s: float = 300.0,
        cache_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolve_signer = resolve_signer
        self.window_s = window_s
        self.cache_s = cache_s
        self.clock = clock
        self.nonces = NonceStore(window_s)
        self._cache: dict[str, tuple[float, SignerInfo | None]] = {}
        self._cache_lock = threading.Lock()

    def verify(
        self, method: str, target: bytes, headers: dict[str, str], body: bytes
    ) -> SignerInfo:
        """Return the signer of a request or raise AuthError saying why not."""
        lowered = {key.lower(): value for key, value in headers.items()}
        values = [lowered.get(name.lower()) for name in SIGNED_HEADERS]
        missing = [
            name
            for name, value in zip(SIGNED_HEADERS, values, strict=True)
            if not value
        ]
        if missing:
            raise AuthError(
                f"unsigned request: headers {missing!r} are missing; sign the "
                "request with the node's Ed25519 key"
            )
        account, timestamp, nonce, signature = values
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
        signer = self._signer(account)
        try:
            signature_bytes = bytes.fromhex(signature)
            message = canonical_message(account, method, target, timestamp, nonce, body)
            Ed25519PublicKey.from_public_bytes(signer.pubkey).verify(
                signature_bytes, message
            )
        except (InvalidSignature, ValueError):
            raise AuthError(
                f"bad signature from {account!r}: it does not match the key "
                "registered for this account and the request's method, path, "
                "timestamp, nonce and body"
            ) from None
        if not self.nonces.add(account, nonce, now):
            raise AuthError(
                f"replayed request: nonce {nonce!r} from {account!r} was used "
                "before; sign each request with a fresh nonce"
            )
        return signer

    def _signer(self, account: str) -> SignerInfo:
        now = time.monotonic()
        key = account.lower()
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.cache_s:
            info = cached[1]
        else:
            info = self._resolve(account)
            with self._cache_lock:
                self._cache[key] = (now, info)
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


def dict_resolver(nodes: dict[str, tuple]) -> SignerResolver:
    """Return a resolver backed by ``{account: (pubkey, role, active[, city])}``."""
    table = {account.lower(): value for account, value in nodes.items()}

    def resolve(account: str) -> tuple | None:
        return table.get(account.lower())

    return resolve


def reject_all_resolver(account: str) -> None:
    """Resolve no signer: used when the node has no registry configured."""
    return
