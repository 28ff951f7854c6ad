"""Usage events, their canonical form and signatures, and hash-chained log entries.

An event's canonical form is RFC 8785 JSON (see ``citymesh.ledger.canonical``) of the
object ``to_dict`` returns. Its hash is SHA-256 of those bytes. Time is stored as
integer milliseconds (``time_ms``), so no float reaches the hashed fields that every
event has. A signature is Ed25519 over ``SIGNING_DOMAIN`` followed by the canonical
form without the ``signatures`` member, so signers of one event may sign in any order.
"""

from __future__ import annotations

import hashlib
import math
import re
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from citymesh.errors import InvalidInput

from .canonical import MAX_SAFE_INTEGER, canonical_json, json_string

EVENT_VERSION = 1
KINDS = frozenset(
    {
        "approval",
        "exchange",
        "ingest",
        "policy",
        "query",
        "refusal",
        "revocation",
        "settlement",
        "train_round",
    }
)
SIGNING_DOMAIN = b"citymesh usage event v1\x00"
GENESIS_HASH = bytes(32)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_TEXT_FIELDS = ("kind", "dataset_id", "provider", "consumer", "purpose", "job_id")
_COUNT_FIELDS = ("rows", "bytes", "round")
_DICT_KEYS = frozenset(
    {"v", "time_ms", "detail", "signatures", *_TEXT_FIELDS, *_COUNT_FIELDS}
)


@dataclass(frozen=True)
class UsageEvent:
    """One use of a dataset: who provided it, who consumed it, why and how much.

    ``time`` is unix seconds, rounded to whole milliseconds on construction.
    ``detail`` contains extra JSON values and must be canonical-JSON serializable.
    ``signatures`` maps an Ed25519 public key (64 lowercase hex digits) to its
    signature (128 lowercase hex digits). Both dicts are copied on construction and
    must not be changed afterwards, because the event hash depends on them.
    """

    kind: str
    dataset_id: str
    provider: str
    consumer: str
    purpose: str
    rows: int = 0
    bytes: int = 0
    job_id: str = ""
    round: int = 0
    time: float = field(default_factory=_time.time)
    detail: dict[str, Any] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _TEXT_FIELDS:
            _check_text(name, getattr(self, name))
        if self.kind not in KINDS:
            raise InvalidInput(
                f"usage event kind must be one of {sorted(KINDS)}, got {self.kind!r}"
            )
        for name in _COUNT_FIELDS:
            _check_count(name, getattr(self, name))
        object.__setattr__(self, "time", _milliseconds(self.time) / 1000)
        if not isinstance(self.detail, Mapping):
            raise InvalidInput(
                f"usage event detail must be a dict, got {self.detail!r}"
            )
        detail = dict(self.detail)
        object.__setattr__(self, "detail", detail)
        object.__setattr__(self, "signatures", _checked_signatures(self.signatures))
        # Validates detail now, so a bad value fails here and not at append time.
        object.__setattr__(self, "_detail_json", canonical_json(detail).decode())

    @property
    def time_ms(self) -> int:
        """Event time in unix milliseconds, the form that is hashed."""
        return round(self.time * 1000)

    def to_dict(self, *, with_signatures: bool = True) -> dict[str, Any]:
        """Return the JSON object whose canonical form is hashed and exported."""
        data: dict[str, Any] = {
            "v": EVENT_VERSION,
            "kind": self.kind,
            "dataset_id": self.dataset_id,
            "provider": self.provider,
            "consumer": self.consumer,
            "purpose": self.purpose,
            "rows": self.rows,
            "bytes": self.bytes,
            "job_id": self.job_id,
            "round": self.round,
            "time_ms": self.time_ms,
            "detail": self.detail,
        }
        if with_signatures:
            data["signatures"] = self.signatures
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageEvent:
        """Build an event from ``to_dict`` output; raise InvalidInput on a mismatch."""
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a usage event must be a JSON object, got {data!r}")
        keys = set(data)
        if keys != _DICT_KEYS:
            raise InvalidInput(
                f"usage event object has keys {sorted(keys)}, expected "
                f"{sorted(_DICT_KEYS)}"
            )
        if data["v"] != EVENT_VERSION or isinstance(data["v"], bool):
            raise InvalidInput(
                f"usage event version must be {EVENT_VERSION}, got {data['v']!r}"
            )
        time_ms = data["time_ms"]
        if isinstance(time_ms, bool) or not isinstance(time_ms, int) or time_ms < 0:
            raise InvalidInput(
                f"usage event time_ms must be a non-negative integer, got {time_ms!r}"
            )
        if not isinstance(data["signatures"], Mapping):
            raise InvalidInput(
                f"usage event signatures must be an object, got {data['signatures']!r}"
            )
        return cls(
            kind=data["kind"],
            dataset_id=data["dataset_id"],
            provider=data["provider"],
            consumer=data["consumer"],
            purpose=data["purpose"],
            rows=data["rows"],
            bytes=data["bytes"],
            job_id=data["job_id"],
            round=data["round"],
            time=time_ms / 1000,
            detail=data["detail"],
            signatures=data["signatures"],
        )


_CANONICAL_TEMPLATE = (
    '{"bytes":%d,"consumer":%s,"dataset_id":%s,"detail":%s,"job_id":%s,"kind":%s,'
    '"provider":%s,"purpose":%s,"round":%d,"rows":%d,"signatures":{%s},'
    '"time_ms":%d,"v":%d}'
)


def canonical_event(event: UsageEvent) -> bytes:
    """Return the RFC 8785 bytes of the event, signatures included.

    Equal to ``canonical_json(event.to_dict())``, written directly because the
    top-level keys and their types are fixed (keys here in sorted order).
    """
    signatures = ",".join(
        f'"{key}":"{value}"' for key, value in sorted(event.signatures.items())
    )
    text = _CANONICAL_TEMPLATE % (
        event.bytes,
        json_string(event.consumer),
        json_string(event.dataset_id),
        event._detail_json,  # type: ignore[attr-defined]
        json_string(event.job_id),
        json_string(event.kind),
        json_string(event.provider),
        json_string(event.purpose),
        event.round,
        event.rows,
        signatures,
        event.time_ms,
        EVENT_VERSION,
    )
    return text.encode("utf-8")


def event_hash(event: UsageEvent) -> bytes:
    """Return SHA-256 of the event's canonical bytes (32 bytes)."""
    return hashlib.sha256(canonical_event(event)).digest()


def signing_payload(event: UsageEvent) -> bytes:
    """Return the bytes each party signs: a domain tag and the unsigned event."""
    return SIGNING_DOMAIN + canonical_json(event.to_dict(with_signatures=False))


def sign_event(event: UsageEvent, key: Ed25519PrivateKey) -> UsageEvent:
    """Return a copy of ``event`` that also carries ``key``'s Ed25519 signature."""
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = key.sign(signing_payload(event))
    signatures = {**event.signatures, public.hex(): signature.hex()}
    return replace(event, signatures=signatures)


def invalid_signers(event: UsageEvent) -> list[str]:
    """Return the public keys (hex) whose signatures on ``event`` do not verify."""
    if not event.signatures:
        return []
    payload = signing_payload(event)
    failed = []
    for public_hex, signature_hex in sorted(event.signatures.items()):
        try:
            public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
            public.verify(bytes.fromhex(signature_hex), payload)
        except (InvalidSignature, ValueError):
            failed.append(public_hex)
    return failed


def chain_hash(prev_hash: bytes, seq: int, event_digest: bytes) -> bytes:
    """Return the entry hash SHA-256(prev_hash || seq as 8 bytes big-endian || hash)."""
    return hashlib.sha256(prev_hash + seq.to_bytes(8, "big") + event_digest).digest()


@dataclass(frozen=True)
class LogEntry:
    """An event at its place in a node's hash-chained log.

    ``prev_hash`` is the previous entry's ``entry_hash`` (32 zero bytes before seq 1),
    and ``entry_hash`` is ``chain_hash(prev_hash, seq, event_hash)``.
    """

    seq: int
    event: UsageEvent
    event_hash: bytes
    prev_hash: bytes
    entry_hash: bytes


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise InvalidInput(
            f"usage event field {name!r} must be a string, got {value!r}"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"usage event field {name!r} contains a lone surrogate, got {value!r}: "
                f"pass valid Unicode text"
            ) from exc


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"usage event field {name!r} must be an int, got {value!r}")
    if not 0 <= value <= MAX_SAFE_INTEGER:
        raise InvalidInput(
            f"usage event field {name!r} must be within 0..2**53-1, got {value!r}"
        )


def _milliseconds(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"usage event time must be unix seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(
            f"usage event time must be finite and not negative, got {value!r}"
        )
    milliseconds = round(value * 1000)
    if milliseconds > MAX_SAFE_INTEGER:
        raise InvalidInput(f"usage event time {value!r} is out of range")
    return milliseconds


def _checked_signatures(signatures: Any) -> dict[str, str]:
    if not isinstance(signatures, Mapping):
        raise InvalidInput(
            f"usage event signatures must be a dict of public key hex to signature "
            f"hex, got {signatures!r}"
        )
    checked = {}
    for public_hex, signature_hex in signatures.items():
        if not isinstance(public_hex, str) or not _HEX64.fullmatch(public_hex):
            raise InvalidInput(
                f"a signer key must be an Ed25519 public key as 64 lowercase hex "
                f"digits, got {public_hex!r}"
            )
        if not isinstance(signature_hex, str) or not _HEX128.fullmatch(signature_hex):
            raise InvalidInput(
                f"an Ed25519 signature must be 128 lowercase hex digits, got "
                f"{signature_hex!r} for key {public_hex}"
            )
        checked[public_hex] = signature_hex
    return checked
