"""Signing, sending and confirming transactions over JSON-RPC, safe across threads.

Transactions are signed locally with eth-account and sent with
``eth_sendRawTransaction``, so no key ever leaves this process. Every sender of one
account in this process, on one endpoint, shares a lock that covers choosing the nonce
and sending, so concurrent threads never reuse a nonce. Waiting for the receipt happens
outside the lock, so threads still overlap on confirmation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import (
    ContractLogicError,
    TimeExhausted,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.types import TxReceipt

from citymesh.errors import ChainError
from citymesh.ledger.chain_errors import (
    ChainUnavailable,
    ReceiptTimeout,
    RevertDecoder,
    TransactionReverted,
)

logger = logging.getLogger("citymesh.ledger")

# Headroom over the estimate, because state can change between estimate and mining.
GAS_MARGIN = 1.2
# Resends after "nonce too low", which means another process used the account.
NONCE_RETRIES = 3
NONCE_ERROR_MARKERS = ("nonce too low", "already known", "replacement")


@dataclass
class _NonceState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_nonce: int = 0


_NONCE_STATES: dict[tuple[str, str], _NonceState] = {}
_NONCE_STATES_LOCK = threading.Lock()


def _nonce_state(endpoint: str, address: str) -> _NonceState:
    key = (endpoint, address)
    with _NONCE_STATES_LOCK:
        state = _NONCE_STATES.get(key)
        if state is None:
            state = _NONCE_STATES[key] = _NonceState()
        return state


@contextmanager
def rpc_errors(endpoint: str) -> Iterator[None]:
    """Turn transport failures and JSON-RPC errors into ChainError subclasses."""
    try:
        yield
    except requests.Timeout as exc:
        raise ChainUnavailable(
            f"the chain endpoint {endpoint!r} timed out: {exc}; check that it runs "
            "and is not overloaded, then retry"
        ) from exc
    except requests.RequestException as exc:
        raise ChainUnavailable(
            f"the chain endpoint {endpoint!r} is unreachable: {exc}; start it or fix "
            "the URL, then retry"
        ) from exc
    except ContractLogicError:
        raise
    except Web3RPCError as exc:
        raise ChainError(
            f"the chain endpoint {endpoint!r} returned an error: {exc}"
        ) from exc


def revert_data(exc: ContractLogicError) -> bytes:
    """Return the raw revert data carried by a web3 ContractLogicError, or b""."""
    data = exc.data
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return b""
    return b""


class TransactionSender:
    """Sends transactions of one local account and waits for their receipts."""

    def __init__(
        self,
        w3: Web3,
        endpoint: str,
        account: LocalAccount,
        chain_id: int,
        decoder: RevertDecoder,
        receipt_timeout: float,
    ) -> None:
        self._w3 = w3
        self._chain_id = chain_id
        self._endpoint = endpoint
        self._account = account
        self._decoder = decoder
        self._receipt_timeout = receipt_timeout
        self._nonce = _nonce_state(endpoint, account.address)

    @property
    def address(self) -> str:
        return self._account.address

    def send(
        self,
        action: str,
        to: str | None,
        data: str | bytes = b"",
        value: int = 0,
        gas: int | None = None,
    ) -> TxReceipt:
        """Send a transaction and return its successful receipt.

        `action` names the call in errors and logs, e.g. "UsageAnchor.anchor". Without
        `gas` the gas limit is estimated, which also surfaces a revert before sending.
        Raises TransactionReverted when the call reverts (at estimation or on chain),
        ReceiptTimeout when no receipt arrives within the receipt timeout, and
        ChainUnavailable when the endpoint fails. After ReceiptTimeout or
        ChainUnavailable the transaction may still have been mined, so check the
        chain state before sending it again.
        """
        call: dict[str, Any] = {"from": self.address, "data": HexBytes(data)}
        call["value"] = value
        if to is not None:
            call["to"] = to
        with rpc_errors(self._endpoint):
            with self._nonce.lock:
                tx_hash = self._sign_and_send(action, call, gas)
            receipt = self._wait(action, tx_hash)
            if receipt["status"] != 1:
                raise self._replay_revert(action, call, receipt)
        logger.debug(
            "%s mined in block %s, gas %s",
            action,
            receipt["blockNumber"],
            receipt["gasUsed"],
        )
        return receipt

    def _sign_and_send(self, action: str, call: dict[str, Any], gas: int | None) -> str:
        block = self._w3.eth.get_block("latest")
        if gas is None:
            try:
                estimate = self._w3.eth.estimate_gas(call)  # type: ignore[arg-type]
            except ContractLogicError as exc:
                raise self._decoder.to_exception(revert_data(exc), action) from exc
            gas = min(int(estimate * GAS_MARGIN), block["gasLimit"])
        tx = dict(call, gas=gas, chainId=self._chain_id)
        tx.pop("from")
        base_fee = block.get("baseFeePerGas")
        if base_fee is None:
            tx["gasPrice"] = self._w3.eth.gas_price
        else:
            priority = self._w3.eth.max_priority_fee
            tx["maxPriorityFeePerGas"] = priority
            tx["maxFeePerGas"] = 2 * base_fee + priority

        for attempt in range(NONCE_RETRIES + 1):
            pending = self._w3.eth.get_transaction_count(self.address, "pending")
            tx["nonce"] = max(pending, self._nonce.next_nonce)
            signed = self._account.sign_transaction(tx)
            tx_hash = "0x" + bytes(signed.hash).hex()
            try:
                self._w3.eth.send_raw_transaction(signed.raw_transaction)
            except Web3RPCError as exc:
                message = str(exc).lower()
                if self._is_known(tx_hash):
                    # An earlier attempt reached the chain although its reply was lost.
                    self._nonce.next_nonce = tx["nonce"] + 1
                    return tx_hash
                if attempt < NONCE_RETRIES and any(
                    marker in message for marker in NONCE_ERROR_MARKERS
                ):
                    logger.warning(
                        "%s: nonce %s of %s rejected (%s); retrying with a fresh one",
                        action,
                        tx["nonce"],
                        self.address,
                        exc,
                    )
                    self._nonce.next_nonce = 0
                    continue
                raise
            self._nonce.next_nonce = tx["nonce"] + 1
            return tx_hash
        raise ChainError(f"{action}: no free nonce after {NONCE_RETRIES} retries")

    def _is_known(self, tx_hash: str) -> bool:
        try:
            self._w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return False
        return True

    def _wait(self, action: str, tx_hash: str) -> TxReceipt:
        try:
            return self._w3.eth.wait_for_transaction_receipt(
                tx_hash,  # type: ignore[arg-type]
                timeout=self._receipt_timeout,
                poll_latency=0.05,
            )
        except TimeExhausted as exc:
            # The transaction may have been dropped, so the next send reads the nonce
            # from the chain in place of trusting the local count.
            with self._nonce.lock:
                self._nonce.next_nonce = 0
            raise ReceiptTimeout(
                f"{action}: no receipt for transaction {tx_hash} after "
                f"{self._receipt_timeout} s; it may still be mined, so check it with "
                "eth_getTransactionReceipt before sending again",
                tx_hash,
            ) from exc

    def _replay_revert(
        self, action: str, call: dict[str, Any], receipt: TxReceipt
    ) -> TransactionReverted:
        """Re-run a transaction that failed on chain to recover its revert reason."""
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        parent = max(receipt["blockNumber"] - 1, 0)
        # The state before the transaction is the parent block's state only when the
        # transaction was first in its block, as on chains that mine one per block.
        try:
            self._w3.eth.call(call, parent)  # type: ignore[arg-type]
            sent = self._w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
            gas_limit = sent["gas"]
        except ContractLogicError as exc:
            return self._decoder.to_exception(revert_data(exc), action, tx_hash)
        except Web3Exception as exc:
            logger.warning("%s: replay of %s failed: %s", action, tx_hash, exc)
            return self._decoder.to_exception(b"", action, tx_hash)
        if receipt["gasUsed"] >= gas_limit:
            reason = f"out of gas: the transaction used all of its {gas_limit} gas"
            return TransactionReverted(
                f"{action} failed: {reason}; raise the gas limit or leave it to "
                f"estimation (transaction {tx_hash})",
                error="OutOfGas",
                arguments={"gas": gas_limit},
                reason=reason,
                tx_hash=tx_hash,
            )
        return self._decoder.to_exception(b"", action, tx_hash)
