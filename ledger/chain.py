"""Client of the citymesh contracts on any EVM chain, reached by URL over JSON-RPC.

The client speaks HTTP only (web3.py's HTTPProvider with a timeout on every request)
and signs transactions locally with the account's key, so it works the same against
the embedded py-evm chain, anvil, geth or Besu. Events are read with ``eth_getLogs``
restricted to the deployment's contract address and checked again on return, so a
foreign contract that emits an event with the same signature is ignored.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import is_address, to_checksum_address
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.types import LogReceipt, TxReceipt

from citymesh.contracts import load_artifact
from citymesh.errors import InvalidInput, NotFound
from citymesh.ledger.chain_errors import (
    ChainMismatch,
    NoSigningKey,
    RevertDecoder,
    TransactionReverted,
)
from citymesh.ledger.chain_sender import TransactionSender, revert_data, rpc_errors

logger = logging.getLogger("citymesh.ledger")

DEFAULT_TIMEOUT_S = 10.0  # per JSON-RPC request
DEFAULT_RECEIPT_TIMEOUT_S = 60.0  # from sending a transaction to its receipt
ROLE_CITY_NODE, ROLE_HUB, ROLE_REGULATOR = 1, 2, 3
MAX_UINT64 = 2**64 - 1
MAX_UINT256 = 2**256 - 1
ANCHORED_TOPIC = bytes(
    Web3.keccak(text="Anchored(address,bytes32,uint64,uint64,uint64)")
)


@dataclass(frozen=True)
class Deployment:
    """The addresses of the four contracts on one chain."""

    chain_id: int
    node_registry: str
    usage_anchor: str
    credit_token: str
    code_list_registry: str
    block: int = 0  # block of the first deployment transaction; log queries start here

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"deployment is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"deployment must be a JSON object, got {data!r}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data and n != "block"]
        if missing:
            raise InvalidInput(f"deployment is missing the fields {missing!r}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InvalidInput(f"deployment has unknown fields {unknown!r}")
        for name in ("chain_id", "block"):
            value = data.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidInput(
                    f"deployment {name} must be an integer >= 0, got {value!r}"
                )
        addresses = {
            name: _checksum(data[name], f"deployment {name}")
            for name in (
                "node_registry",
                "usage_anchor",
                "credit_token",
                "code_list_registry",
            )
        }
        return cls(chain_id=data["chain_id"], block=data.get("block", 0), **addresses)

    def save(self, path: Path) -> None:
        """Write the deployment as JSON, atomically (temporary file, fsync, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Deployment:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise NotFound(
                f"deployment file {str(path)!r} not found; deploy the contracts first"
            ) from exc
        return cls.from_json(text)


@dataclass(frozen=True)
class NodeRecord:
    """A node of the on-chain registry."""

    city: str
    account: str
    pubkey: bytes  # Ed25519 public key, 32 bytes
    endpoint: str
    role: int  # 1 city node, 2 hub, 3 regulator
    active: bool


@dataclass(frozen=True)
class Anchor:
    """One Anchored event: a node's Merkle root over events from_seq..to_seq."""

    node: str
    root: bytes
    from_seq: int
    to_seq: int
    count: int
    block: int
    tx: str


def _checksum(value: Any, label: str) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise InvalidInput(f"{label} must be a 20-byte hex address, got {value!r}")
    return to_checksum_address(value)


def _bytes32(value: Any, label: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise InvalidInput(f"{label} must be 32 bytes, got {value!r}")
    return bytes(value)


def _uint(value: Any, label: str, maximum: int) -> int:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not 0 <= value <= maximum
    ):
        raise InvalidInput(f"{label} must be an integer in 0..{maximum}, got {value!r}")
    return value


def _local_account(private_key: str) -> LocalAccount:
    try:
        return Account.from_key(private_key)
    except (ValueError, TypeError) as exc:
        # The message leaves the key out, so a typo does not leak a secret to logs.
        raise InvalidInput(
            "the private key is invalid; pass a 32-byte secp256k1 key in 0x hex"
        ) from exc


def _connect(rpc_url: str, timeout: float) -> Web3:
    scheme = urlparse(rpc_url).scheme
    if scheme not in ("http", "https"):
        raise InvalidInput(
            f"chain URL must start with http:// or https://, got {rpc_url!r}"
        )
    # No automatic retries: a lost reply to eth_sendRawTransaction must not turn into a
    # second send, and callers decide when to retry a chain that is down.
    provider = HTTPProvider(
        rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
    )
    w3 = Web3(provider)
    # web3's validation middleware requests eth_chainId before every eth_call and
    # eth_estimateGas; ChainClient checks the chain id once instead. No ENS here.
    w3.middleware_onion.remove("validation")
    w3.middleware_onion.remove("ens_name_to_address")
    return w3


def _decoder() -> RevertDecoder:
    return RevertDecoder(
        load_artifact(name).abi
        for name in ("NodeRegistry", "UsageAnchor", "CreditToken", "CodeListRegistry")
    )


def _tx_hash(receipt: TxReceipt) -> str:
    return "0x" + bytes(receipt["transactionHash"]).hex()


def deploy(
    rpc_url: str,
    admin_key: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT_S,
) -> Deployment:
    """Deploy NodeRegistry, UsageAnchor, CreditToken and CodeListRegistry.

    The admin account gets DEFAULT_ADMIN_ROLE on the registry, the token and the code
    list registry. It gets no SETTLER_ROLE until ChainClient.grant_settler grants it.
    """
    w3 = _connect(rpc_url, timeout)
    account = _local_account(admin_key)
    with rpc_errors(rpc_url):
        chain_id = w3.eth.chain_id
    sender = TransactionSender(
        w3, rpc_url, account, chain_id, _decoder(), receipt_timeout
    )

    def create(name: str, *args: Any) -> TxReceipt:
        artifact = load_artifact(name)
        constructor = next(e for e in artifact.abi if e["type"] == "constructor")
        types = [i["type"] for i in constructor["inputs"]]
        data = bytes.fromhex(artifact.bytecode[2:]) + abi_encode(types, list(args))
        receipt = sender.send(f"{name} deployment", None, data)
        logger.info(
            "deployed %s at %s (gas %s)",
            name,
            receipt["contractAddress"],
            receipt["gasUsed"],
        )
        return receipt

    admin = account.address
    registry = create("NodeRegistry", admin)
    registry_address = registry["contractAddress"]
    anchor_address = create("UsageAnchor", registry_address)["contractAddress"]
    token_address = create("CreditToken", admin, anchor_address)["contractAddress"]
    code_list_address = create("CodeListRegistry", admin)["contractAddress"]
    return Deployment(
        chain_id=chain_id,
        node_registry=registry_address,
        usage_anchor=anchor_address,
        credit_token=token_address,
        code_list_registry=code_list_address,
        block=registry["blockNumber"],
    )


class ChainClient:
    """Reads and calls the citymesh contracts of one deployment.

    Without `private_key` the client is read-only, and sending raises NoSigningKey.
    Instances are safe to share between threads.
    """

    def __init__(
        self,
        rpc_url: str,
        deployment: Deployment,
        private_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT_S,
    ) -> None:
        self.rpc_url = rpc_url
        self.deployment = deployment
        self._w3 = _connect(rpc_url, timeout)
        self._receipt_timeout = receipt_timeout
        self._key: LocalAccount | None = (
            _local_account(private_key) if private_key is not None else None
        )
        self._decoder = _decoder()
        self._registry = self._contract("NodeRegistry", deployment.node_registry)
        self._anchor = self._contract("UsageAnchor", deployment.usage_anchor)
        self._token = self._contract("CreditToken", deployment.credit_token)
        self._code_list = self._contract(
            "CodeListRegistry", deployment.code_list_registry
        )
        self._sender: TransactionSender | None = None
        self._chain_checked = False

    def _contract(self, name: str, address: str) -> Contract:
        return self._w3.eth.contract(address=address, abi=load_artifact(name).abi)

    @property
    def account(self) -> str | None:
        """The checksum address that signs, or None for a read-only client."""
        return self._key.address if self._key is not None else None

    # -- plumbing -----------------------------------------------------------------

    def _check_chain(self) -> None:
        """Check once that the endpoint serves the deployment's chain and contracts.

        Without the code check, a transaction to an address with no code (a chain
        reset under the same chain id) would succeed and do nothing.
        """
        if self._chain_checked:
            return
        with rpc_errors(self.rpc_url):
            chain_id = self._w3.eth.chain_id
            if chain_id != self.deployment.chain_id:
                raise ChainMismatch(
                    f"{self.rpc_url!r} serves chain id {chain_id!r} but the deployment "
                    f"is on chain id {self.deployment.chain_id!r}; point the client at "
                    "that chain"
                )
            for contract in (
                self._registry,
                self._anchor,
                self._token,
                self._code_list,
            ):
                if not self._w3.eth.get_code(contract.address):
                    raise ChainMismatch(
                        f"no contract code at {contract.address!r} on "
                        f"{self.rpc_url!r}; "
                        "the deployment does not belong to this chain (was it reset?), "
                        "so deploy again and use the new deployment"
                    )
        self._chain_checked = True

    def _signer(self, action: str) -> TransactionSender:
        if self._key is None:
            raise NoSigningKey(
                f"{action} needs a signing key; create the ChainClient with private_key"
            )
        self._check_chain()
        if self._sender is None:
            self._sender = TransactionSender(
                self._w3,
                self.rpc_url,
                self._key,
                self.deployment.chain_id,
                self._decoder,
                self._receipt_timeout,
            )
        return self._sender

    def _send(self, action: str, contract: Contract, function: str, *args: Any) -> str:
        sender = self._signer(action)
        data = contract.encode_abi(function, args=list(args))
        return _tx_hash(sender.send(action, contract.address, data))

    def _call(self, action: str, contract: Contract, function: str, *args: Any) -> Any:
        self._check_chain()
        with rpc_errors(self.rpc_url):
            try:
                return contract.functions[function](*args).call()
            except ContractLogicError as exc:
                raise self._decoder.to_exception(revert_data(exc), action) from exc

    # -- funds --------------------------------------------------------------------

    def fund(self, to: str, wei: int) -> str:
        """Send `wei` of the chain's native currency to `to`; return the tx hash."""
        to = _checksum(to, "recipient")
        _uint(wei, "amount in wei", MAX_UINT256)
        return _tx_hash(self._signer("fund").send("fund", to, b"", wei))

    # -- node registry ------------------------------------------------------------

    def register_node(
        self, city: str, account: str, pubkey: bytes, endpoint: str, role: int
    ) -> str:
        """Register an active node (admin only); return the tx hash."""
        account = _checksum(account, "node account")
        if not city:
            raise InvalidInput(f"city id must be a non-empty string, got {city!r}")
        if role not in (ROLE_CITY_NODE, ROLE_HUB, ROLE_REGULATOR):
            raise InvalidInput(
                f"role must be 1 (city node), 2 (hub) or 3 (regulator), got {role!r}"
            )
        key = _bytes32(pubkey, "Ed25519 public key")
        return self._send(
            "NodeRegistry.register",
            self._registry,
            "register",
            account,
            city,
            key,
            endpoint,
            role,
        )

    def revoke_node(self, account: str) -> str:
        """Revoke a node for good (admin only); return the tx hash."""
        account = _checksum(account, "node account")
        return self._send("NodeRegistry.revoke", self._registry, "revoke", account)

    def node(self, account: str) -> NodeRecord:
        """Return the registry's record of `account`; NotFound if never registered."""
        account = _checksum(account, "node account")
        city, pubkey, endpoint, role, active = self._call(
            "NodeRegistry.getNode", self._registry, "getNode", account
        )
        if role == 0:
            raise NotFound(f"no node is registered for account {account!r}")
        return NodeRecord(city, account, bytes(pubkey), endpoint, role, active)

    def nodes(self) -> list[NodeRecord]:
        """Return every node ever registered, revoked ones included, in order."""
        accounts = self._call("NodeRegistry.accounts", self._registry, "accounts")
        return [self.node(account) for account in accounts]

    def node_by_city(self, city: str) -> NodeRecord:
        """Return the node registered last under `city` (it may be revoked)."""
        account = self._call(
            "NodeRegistry.accountOfCity", self._registry, "accountOfCity", city
        )
        if int(account, 16) == 0:
            raise NotFound(f"no node is registered for city {city!r}")
        return self.node(account)

    # -- usage anchors ------------------------------------------------------------

    def anchor(self, root: bytes, from_seq: int, to_seq: int, count: int) -> str:
        """Anchor the Merkle root of this node's events from_seq..to_seq.

        Returns the transaction hash.

        Raises AnchorOutOfSequence unless from_seq is last_anchored_seq() + 1, and
        AccessDenied when the signing account is not an active node.
        """
        root = _bytes32(root, "Merkle root")
        for value, label in (
            (from_seq, "from_seq"),
            (to_seq, "to_seq"),
            (count, "count"),
        ):
            _uint(value, label, MAX_UINT64)
        return self._send(
            "UsageAnchor.anchor", self._anchor, "anchor", root, from_seq, to_seq, count
        )

    def anchors(self, node_account: str) -> list[Anchor]:
        """Return the node's anchors in chain order, read from Anchored events."""
        node_account = _checksum(node_account, "node account")
        self._check_chain()
        node_topic = "0x" + "00" * 12 + node_account[2:].lower()
        # NOTE: a single eth_getLogs over the whole range; public RPC providers that cap
        # the block range per query would need this split into chunks.
        with rpc_errors(self.rpc_url):
            logs = self._w3.eth.get_logs(
                {
                    "address": self._anchor.address,
                    "topics": ["0x" + ANCHORED_TOPIC.hex(), node_topic],
                    "fromBlock": self.deployment.block,
                    "toBlock": "latest",
                }
            )
        anchors = self._decode_anchors(logs)
        return [a for a in anchors if a.node == node_account]

    def anchors_in_receipt(self, tx_hash: str) -> list[Anchor]:
        """Return this deployment's Anchored events in one transaction's receipt."""
        self._check_chain()
        with rpc_errors(self.rpc_url):
            receipt = self._w3.eth.get_transaction_receipt(
                tx_hash  # type: ignore[arg-type]
            )
        return self._decode_anchors(receipt["logs"])

    def _decode_anchors(self, logs: Sequence[LogReceipt]) -> list[Anchor]:
        event = self._anchor.events.Anchored()
        anchors = []
        for log in sorted(logs, key=lambda x: (x["blockNumber"], x["logIndex"])):
            # Only our contract's logs count: another contract may emit the same event.
            if to_checksum_address(log["address"]) != self._anchor.address:
                continue
            if not log["topics"] or bytes(log["topics"][0]) != ANCHORED_TOPIC:
                continue
            decoded = event.process_log(log)
            args = decoded["args"]
            anchors.append(
                Anchor(
                    node=to_checksum_address(args["node"]),
                    root=bytes(args["root"]),
                    from_seq=args["fromSeq"],
                    to_seq=args["toSeq"],
                    count=args["count"],
                    block=log["blockNumber"],
                    tx="0x" + bytes(log["transactionHash"]).hex(),
                )
            )
        return anchors

    def last_anchored_seq(self, node_account: str) -> int:
        """Return the last sequence number the node anchored (0 before its first)."""
        node_account = _checksum(node_account, "node account")
        return self._call("UsageAnchor.lastSeq", self._anchor, "lastSeq", node_account)

    def record_usage(self, event_hash: bytes) -> str:
        """Record one usage event on chain (the per-event baseline); return tx hash."""
        event_hash = _bytes32(event_hash, "event hash")
        return self._send(
            "UsageAnchor.recordUsage", self._anchor, "recordUsage", event_hash
        )

    # -- credits ------------------------------------------------------------------

    def grant_settler(self, account: str) -> str:
        """Grant SETTLER_ROLE on the credit token (admin only); return tx hash."""
        account = _checksum(account, "settler account")
        role = self._call("CreditToken.SETTLER_ROLE", self._token, "SETTLER_ROLE")
        return self._send(
            "CreditToken.grantRole", self._token, "grantRole", role, account
        )

    def settle(
        self,
        epoch: int,
        roots: list[bytes],
        recipients: list[str],
        amounts: list[int],
        memo: bytes,
    ) -> str:
        """Mint amounts[i] credits to recipients[i] for the anchored `roots`.

        Needs SETTLER_ROLE. Raises RootAlreadyPaid when any root was paid before.
        """
        _uint(epoch, "epoch", MAX_UINT256)
        if not roots:
            raise InvalidInput("a settlement must name at least one anchored root")
        checked_roots = [_bytes32(r, f"roots[{i}]") for i, r in enumerate(roots)]
        if len(recipients) != len(amounts):
            raise InvalidInput(
                f"recipients and amounts must have the same length, got "
                f"{len(recipients)!r} and {len(amounts)!r}"
            )
        checked_recipients = [
            _checksum(r, f"recipients[{i}]") for i, r in enumerate(recipients)
        ]
        for i, amount in enumerate(amounts):
            _uint(amount, f"amounts[{i}]", MAX_UINT256)
        if not isinstance(memo, bytes | bytearray):
            raise InvalidInput(f"memo must be bytes, got {memo!r}")
        return self._send(
            "CreditToken.settle",
            self._token,
            "settle",
            epoch,
            checked_roots,
            checked_recipients,
            list(amounts),
            bytes(memo),
        )

    def balance_of(self, account: str) -> int:
        account = _checksum(account, "account")
        return self._call("CreditToken.balanceOf", self._token, "balanceOf", account)

    def total_supply(self) -> int:
        return self._call("CreditToken.totalSupply", self._token, "totalSupply")

    def paid_epoch(self, root: bytes) -> int | None:
        """Return the epoch of the settlement that paid ``root``, or None if unpaid."""
        checked = _bytes32(root, "root")
        plus_one = self._call(
            "CreditToken.paidInEpochPlusOne", self._token, "paidInEpochPlusOne", checked
        )
        return plus_one - 1 if plus_one else None

    # -- code list ----------------------------------------------------------------

    def set_code_list(self, version: str, digest: bytes) -> str:
        """Record the shared code list's version and SHA-256 digest (admin only)."""
        if not version:
            raise InvalidInput(f"code list version must be non-empty, got {version!r}")
        digest = _bytes32(digest, "code list SHA-256 digest")
        return self._send(
            "CodeListRegistry.setCodeList",
            self._code_list,
            "setCodeList",
            version,
            digest,
        )

    def code_list(self) -> tuple[str, bytes]:
        """Return the current (version, digest); NotFound before the first set."""
        version, digest = self._call(
            "CodeListRegistry.codeList", self._code_list, "codeList"
        )
        if not version:
            raise NotFound("no code list is recorded on chain yet; call set_code_list")
        return version, bytes(digest)


__all__ = [
    "Anchor",
    "ChainClient",
    "Deployment",
    "NodeRecord",
    "TransactionReverted",
    "deploy",
]
