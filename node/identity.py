"""Node identity: an Ed25519 key that signs requests and a ledger account key.

Both keys live in ``keys/`` under the node home, in files readable only by the
owner (mode 0600). Loading rejects a key file that group or others can read.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
)
from eth_account import Account

from citymesh.errors import InvalidInput, NotFound

SIGNING_KEY_FILE = "ed25519.key"
ACCOUNT_KEY_FILE = "account.key"
OPERATOR_TOKEN_FILE = "operator.token"
DEID_SECRET_FILE = "deid.secret"


def write_secret(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 and write ``text``; fail if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_secret(path: Path) -> str:
    """Read a secret file after checking that only its owner can read it."""
    if not path.is_file():
        raise NotFound(
            f"key file {str(path)!r} is missing: create the node home with "
            "init_home (citymesh node init)"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise InvalidInput(
            f"key file {str(path)!r} has mode {oct(mode)}, readable by group or "
            f"others: run chmod 600 {str(path)!r}"
        )
    return path.read_text(encoding="ascii").strip()


@dataclass(frozen=True)
class NodeIdentity:
    """The node's Ed25519 request-signing key and its secp256k1 ledger account."""

    signing_key: Ed25519PrivateKey
    account_key: str

    @property
    def account(self) -> str:
        """Return the ledger account as a checksum address."""
        return Account.from_key(self.account_key).address

    @property
    def public_key(self) -> bytes:
        """Return the raw 32-byte Ed25519 public key."""
        return self.signing_key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return self.signing_key.sign(message)

    @classmethod
    def generate(cls) -> NodeIdentity:
        """Create a fresh identity from the operating system's random source."""
        account = Account.create(extra_entropy=secrets.token_hex(32))
        return cls(Ed25519PrivateKey.generate(), account.key.hex())

    def save(self, keys_dir: Path) -> None:
        """Write both keys into ``keys_dir`` (mode 0600); never overwrites."""
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        seed = self.signing_key.private_bytes_raw().hex()
        write_secret(keys_dir / SIGNING_KEY_FILE, seed)
        write_secret(keys_dir / ACCOUNT_KEY_FILE, _hex0x(self.account_key))

    @classmethod
    def load(cls, keys_dir: Path) -> NodeIdentity:
        """Read both keys from ``keys_dir``."""
        seed = bytes.fromhex(read_secret(keys_dir / SIGNING_KEY_FILE))
        account_key = read_secret(keys_dir / ACCOUNT_KEY_FILE)
        return cls(Ed25519PrivateKey.from_private_bytes(seed), _hex0x(account_key))


def _hex0x(key: str) -> str:
    return key if key.startswith("0x") else "0x" + key


def create_operator_token(keys_dir: Path) -> str:
    """Create the operator token file (mode 0600) and return the token."""
    token = secrets.token_urlsafe(32)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret(keys_dir / OPERATOR_TOKEN_FILE, token)
    return token


def load_operator_token(keys_dir: Path) -> str:
    """Read the operator token from ``keys_dir``."""
    return read_secret(keys_dir / OPERATOR_TOKEN_FILE)


def load_or_create_deid_secret(keys_dir: Path) -> bytes:
    """Return the node's secret for keyed hashing in de-identification.

    The secret is created (mode 0600) on first use and never leaves the node, so
    hashed values cannot be linked across nodes.
    """
    path = keys_dir / DEID_SECRET_FILE
    if not path.exists():
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            write_secret(path, secrets.token_hex(32))
        except FileExistsError:
            pass
    return bytes.fromhex(read_secret(path))
