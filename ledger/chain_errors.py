"""Errors of the chain client and the decoding of EVM revert data into them.

A contract call that reverts returns revert data: Solidity's ``Error(string)``, a
``Panic(uint256)`` code, or a custom error such as
``AnchorOutOfSequence(address,uint64,uint64)``. ``RevertDecoder`` turns that data into a
``TransactionReverted`` (or one of its subclasses) whose message names the error, shows
its arguments and states how to fix the call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import (
    abi_to_signature,
    function_signature_to_4byte_selector,
    keccak,
    to_checksum_address,
)

from citymesh.errors import ChainError

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)

ROLE_NAMES = {
    b"\x00" * 32: "DEFAULT_ADMIN_ROLE",
    keccak(text="SETTLER_ROLE"): "SETTLER_ROLE",
}

# The fix for each custom error of the contracts, formatted with its arguments.
FIXES = {
    "AccessControlUnauthorizedAccount": (
        "send it from an account that holds {neededRole}"
    ),
    "NodeNotActive": (
        "only active registered nodes may do this, and {node} was never registered "
        "or was revoked; send from an active node's key"
    ),
    "AnchorOutOfSequence": (
        "a node's anchors must continue its last anchored sequence number; "
        "anchor from fromSeq={expectedFromSeq} (see last_anchored_seq)"
    ),
    "InvalidRange": "toSeq must be at least fromSeq",
    "CountMismatch": "count must equal toSeq - fromSeq + 1, here {expected}",
    "RootAlreadyAnchored": "each Merkle root may be anchored once; this one by {node}",
    "EmptyRoot": "pass a non-zero 32-byte Merkle root",
    "EmptyEventHash": "pass a non-zero 32-byte event hash",
    "RootAlreadyPaid": (
        "each root is paid once and this one was paid in epoch {epoch}; "
        "leave it out of the settlement"
    ),
    "RootNotAnchored": "settle only roots that a node anchored in UsageAnchor",
    "NoRoots": "name at least one anchored root that the settlement pays for",
    "LengthMismatch": "pass one amount for each recipient",
    "CreditsNotTransferable": "credits move only by accounts that hold SETTLER_ROLE",
    "AccountAlreadyRegistered": "an account is registered once; use a new account",
    "CityAlreadyRegistered": (
        "an active node ({account}) already holds this city id; revoke it first"
    ),
    "NodeNotRegistered": "register the account first",
    "NodeAlreadyRevoked": "the node is revoked already; nothing to do",
    "InvalidRole": "role must be 1 (city node), 2 (hub) or 3 (regulator)",
    "InvalidAccount": "pass a non-zero account address",
    "EmptyCity": "pass a non-empty city id",
    "EmptyPubkey": "pass the node's 32-byte Ed25519 public key",
    "EmptyVersion": "pass a non-empty version string",
    "EmptyDigest": "pass the code list's non-zero SHA-256 digest",
    "VersionReused": (
        "a version keeps the digest it was first recorded with ({recordedDigest}); "
        "publish the changed list under a new version"
    ),
}


class ChainUnavailable(ChainError):
    """The JSON-RPC endpoint could not be reached, or its reply timed out."""


class ChainMismatch(ChainError):
    """The endpoint serves a chain other than the one the deployment is on."""


class NoSigningKey(ChainError):
    """A read-only client (created without a private key) was asked to send."""


class ReceiptTimeout(ChainError):
    """A transaction was sent, but no receipt arrived in time; it may still be mined."""

    def __init__(self, message: str, tx_hash: str) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash


class TransactionReverted(ChainError):
    """A contract call reverted; ``error``, ``arguments`` and ``reason`` tell why."""

    def __init__(
        self,
        message: str,
        *,
        error: str,
        arguments: dict[str, Any],
        reason: str,
        tx_hash: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error  # custom error name, "Error", "Panic" or "" when unknown
        self.arguments = arguments
        self.reason = reason
        self.tx_hash = tx_hash  # None when the revert surfaced before sending


class AccessDenied(TransactionReverted, PermissionError):
    """The sender lacks the role, or is not an active registered node."""


class AnchorOutOfSequence(TransactionReverted):
    """An anchor did not start right after the node's last anchored sequence number."""


class RootAlreadyPaid(TransactionReverted):
    """A settlement named a root that an earlier settlement paid."""


ERROR_CLASSES: dict[str, type[TransactionReverted]] = {
    "AccessControlUnauthorizedAccount": AccessDenied,
    "NodeNotActive": AccessDenied,
    "CreditsNotTransferable": AccessDenied,
    "AnchorOutOfSequence": AnchorOutOfSequence,
    "RootAlreadyPaid": RootAlreadyPaid,
}


@dataclass(frozen=True)
class CustomError:
    name: str
    names: tuple[str, ...]
    types: tuple[str, ...]


def _display(value: Any, abi_type: str) -> Any:
    if abi_type == "address":
        return to_checksum_address(value)
    if isinstance(value, bytes):
        return ROLE_NAMES.get(value, "0x" + value.hex())
    return value


class RevertDecoder:
    """Decodes revert data using the custom errors declared in a set of ABIs."""

    def __init__(self, abis: Iterable[list[dict[str, Any]]]) -> None:
        self._errors: dict[bytes, CustomError] = {}
        for abi in abis:
            for entry in abi:
                if entry.get("type") != "error":
                    continue
                selector = function_signature_to_4byte_selector(abi_to_signature(entry))
                self._errors[selector] = CustomError(
                    name=entry["name"],
                    names=tuple(i["name"] for i in entry["inputs"]),
                    types=tuple(i["type"] for i in entry["inputs"]),
                )

    def decode(self, data: bytes) -> tuple[str, dict[str, Any], str]:
        """Return (error name, arguments, reason text) for revert data."""
        selector, body = data[:4], data[4:]
        try:
            if selector == ERROR_STRING_SELECTOR:
                (text,) = abi_decode(["string"], body)
                return "Error", {"reason": text}, text
            if selector == PANIC_SELECTOR:
                (code,) = abi_decode(["uint256"], body)
                return "Panic", {"code": code}, f"Panic(0x{code:02x})"
            error = self._errors.get(selector)
            if error is not None:
                values = abi_decode(list(error.types), body)
                arguments = {
                    name: _display(value, abi_type)
                    for name, abi_type, value in zip(
                        error.names, error.types, values, strict=True
                    )
                }
                formatted = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
                return error.name, arguments, f"{error.name}({formatted})"
        except DecodingError:
            pass
        if not data:
            return "", {}, "reverted without revert data"
        return "", {}, f"reverted with undecoded data 0x{data.hex()}"

    def to_exception(
        self, data: bytes, action: str, tx_hash: str | None = None
    ) -> TransactionReverted:
        """Build the exception for revert `data` of `action` ("UsageAnchor.anchor")."""
        name, arguments, reason = self.decode(data)
        message = f"{action} reverted: {reason}"
        fix = FIXES.get(name)
        if fix is not None:
            message += "; " + fix.format(**{k: str(v) for k, v in arguments.items()})
        if tx_hash is not None:
            message += f" (transaction {tx_hash})"
        cls = ERROR_CLASSES.get(name, TransactionReverted)
        return cls(
            message, error=name, arguments=arguments, reason=reason, tx_hash=tx_hash
        )
