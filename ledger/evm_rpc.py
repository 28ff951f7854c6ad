"""JSON-RPC 2.0 dispatch of the Ethereum execution API onto ``EmbeddedChain``.

``RpcHandler.handle_body`` takes a request body (one request or a batch) and returns
the response body. Errors follow geth. A revert is code 3 with the message
``execution reverted: <reason>`` and the revert output as ``data``, so web3.py
raises ContractLogicError. A rejected transaction is code -32000 with geth's message.
"""

from __future__ import annotations

import json
import logging
import platform
import re
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from eth_utils import keccak

from citymesh.errors import ChainError, InvalidInput, NotFound

from .evm_chain import (
    BLOCK_TAGS,
    BlockNotFound,
    BlockRef,
    CallRequest,
    EmbeddedChain,
    ExecutionReverted,
    LogFilter,
    LogQueryTooLarge,
)
from .evm_format import hex_bytes, quantity

logger = logging.getLogger("citymesh.ledger")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000
LIMIT_EXCEEDED = -32005
REVERT_ERROR = 3

_QUANTITY = re.compile(r"0[xX][0-9a-fA-F]+")

MAX_BATCH_REQUESTS = 1000
MAX_FILTER_CRITERIA = 1000


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


CLIENT_VERSION = (
    f"citymesh-evm/v{_package_version('citymesh')}/"
    f"py-evm-{_package_version('py-evm')}/python-{platform.python_version()}"
)


class RpcError(Exception):
    """A JSON-RPC error object: code, message and optional data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


# Parameter parsing. Each parser raises RpcError(INVALID_PARAMS) with the value.


def _invalid(name: str, value: Any, expected: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"invalid {name} {value!r}: expected {expected}")


def parse_quantity(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _QUANTITY.fullmatch(value):
        return int(value, 16)
    raise _invalid(name, value, "a 0x-prefixed hex quantity")


def parse_bytes(value: Any, name: str, length: int | None = None) -> bytes:
    if isinstance(value, str) and value[:2] in ("0x", "0X"):
        try:
            data = bytes.fromhex(value[2:])
        except ValueError:
            data = None
        if data is not None and (length is None or len(data) == length):
            return data
    expected = "0x-prefixed hex data"
    if length is not None:
        expected = f"{length} bytes of 0x-prefixed hex"
    raise _invalid(name, value, expected)


def parse_address(value: Any, name: str = "address") -> bytes:
    return parse_bytes(value, name, 20)


def parse_hash(value: Any, name: str = "hash") -> bytes:
    return parse_bytes(value, name, 32)


def parse_block_ref(value: Any, name: str = "block") -> BlockRef:
    """Parse a block number, tag, hash or EIP-1898 object. None means latest."""
    if value is None:
        return "latest"
    if isinstance(value, dict):
        if "blockHash" in value:
            return parse_hash(value["blockHash"], "blockHash")
        if "blockNumber" in value:
            return parse_block_ref(value["blockNumber"], "blockNumber")
        raise _invalid(name, value, "an object with blockNumber or blockHash")
    if isinstance(value, str) and value in BLOCK_TAGS:
        return value
    if isinstance(value, str) and len(value) == 66:
        return parse_hash(value, name)
    try:
        return parse_quantity(value, name)
    except RpcError:
        raise _invalid(
            name, value, f"a hex block number, a block hash or one of {BLOCK_TAGS}"
        ) from None


def parse_call(value: Any) -> CallRequest:
    if not isinstance(value, dict):
        raise _invalid("transaction", value, "a call object")

    def optional_quantity(key: str) -> int | None:
        item = value.get(key)
        return None if item is None else parse_quantity(item, key)

    data = value.get("input")
    other = value.get("data")
    if data is not None and other is not None and data != other:
        raise RpcError(
            INVALID_PARAMS,
            "both input and data are set and differ; send the calldata in input",
        )
    data = data if data is not None else other
    gas_price = optional_quantity("gasPrice")
    max_fee = optional_quantity("maxFeePerGas")
    max_priority = optional_quantity("maxPriorityFeePerGas")
    if gas_price is not None and (max_fee is not None or max_priority is not None):
        raise RpcError(
            INVALID_PARAMS,
            "both gasPrice and (maxFeePerGas or maxPriorityFeePerGas) specified; "
            "send one kind of fee",
        )
    sender = value.get("from")
    to = value.get("to")
    return CallRequest(
        access_list=parse_access_list(value.get("accessList") or []),
        sender=parse_address(sender, "from") if sender is not None else bytes(20),
        to=parse_address(to, "to") if to is not None else None,
        gas=optional_quantity("gas"),
        gas_price=gas_price,
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=max_priority,
        value=optional_quantity("value") or 0,
        data=parse_bytes(data, "input") if data is not None else b"",
    )


def parse_access_list(value: Any) -> tuple[tuple[bytes, tuple[int, ...]], ...]:
    if not isinstance(value, list):
        raise _invalid("accessList", value, "a list of address and storageKeys")
    entries = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(
            entry.get("storageKeys", []), list
        ):
            raise _invalid("accessList entry", entry, "address and storageKeys")
        slots = tuple(
            int.from_bytes(parse_hash(key, "storage key"), "big")
            for key in entry.get("storageKeys", [])
        )
        entries.append((parse_address(entry.get("address")), slots))
    return tuple(entries)


def parse_filter(value: Any) -> LogFilter:
    if not isinstance(value, dict):
        raise _invalid("filter", value, "a filter object")

    block_hash = value.get("blockHash")
    from_block = value.get("fromBlock")
    to_block = value.get("toBlock")
    if block_hash is not None and (from_block is not None or to_block is not None):
        raise RpcError(
            INVALID_PARAMS,
            "cannot specify both blockHash and fromBlock/toBlock; pick one",
        )
    addresses = value.get("address")
    if addresses is None:
        addresses = []
    elif isinstance(addresses, str):
        addresses = [addresses]
    elif not isinstance(addresses, list):
        raise _invalid("address", addresses, "an address or a list of addresses")

    topics = value.get("topics") or []
    if not isinstance(topics, list) or len(topics) > 4:
        raise _invalid("topics", topics, "a list of at most 4 topic positions")
    parsed_topics: list[tuple[bytes, ...] | None] = []
    for position in topics:
        if position is None:
            parsed_topics.append(None)
        elif isinstance(position, str):
            parsed_topics.append((parse_hash(position, "topic"),))
        elif isinstance(position, list):
            if any(topic is None for topic in position):
                parsed_topics.append(None)  # a null alternative matches any topic
            else:
                parsed_topics.append(
                    tuple(parse_hash(topic, "topic") for topic in position)
                )
        else:
            raise _invalid("topic", position, "null, a topic or a list of topics")

    criteria = len(addresses) + sum(len(t) for t in parsed_topics if t)
    if criteria > MAX_FILTER_CRITERIA:
        raise RpcError(
            LIMIT_EXCEEDED,
            f"filter has {criteria} addresses and topics, more than "
            f"{MAX_FILTER_CRITERIA}; split the query",
        )

    return LogFilter(
        from_block=parse_block_ref(from_block, "fromBlock"),
        to_block=parse_block_ref(to_block, "toBlock"),
        block_hash=None if block_hash is None else parse_hash(block_hash, "blockHash"),
        addresses=tuple(parse_address(address) for address in addresses),
        topics=tuple(parsed_topics),
    )


def _arguments(params: list[Any], required: int, optional: int = 0) -> list[Any]:
    """Check the positional parameter count and pad missing optional ones with None."""
    if not required <= len(params) <= required + optional:
        expected = str(required)
        if optional:
            expected = f"{required} to {required + optional}"
        raise RpcError(
            INVALID_PARAMS,
            f"expected {expected} parameters, got {len(params)}",
        )
    return params + [None] * (required + optional - len(params))


def _constant(value: Any) -> Callable[[list[Any]], Any]:
    """Return a handler of a method without parameters that returns ``value``."""

    def handler(params: list[Any]) -> Any:
        _arguments(params, 0)
        return value

    return handler


def _no_overrides(overrides: Any) -> None:
    if overrides:
        raise RpcError(
            INVALID_PARAMS,
            "state overrides are not supported by this node; call without them",
        )


class RpcHandler:
    """Dispatches JSON-RPC requests to an ``EmbeddedChain``."""

    def __init__(self, chain: EmbeddedChain, nonce_wait: float) -> None:
        self.chain = chain
        self.nonce_wait = nonce_wait
        self._methods: dict[str, Callable[[list[Any]], Any]] = {
            "web3_clientVersion": self._client_version,
            "web3_sha3": self._sha3,
            "net_version": self._net_version,
            "net_listening": _constant(True),
            "net_peerCount": _constant(quantity(0)),
            "eth_chainId": self._chain_id,
            "eth_syncing": _constant(False),
            "eth_accounts": _constant([]),
            "eth_blockNumber": self._block_number,
            "eth_gasPrice": self._gas_price,
            "eth_maxPriorityFeePerGas": self._max_priority_fee,
            "eth_feeHistory": self._fee_history,
            "eth_getBalance": self._get_balance,
            "eth_getTransactionCount": self._get_transaction_count,
            "eth_getCode": self._get_code,
            "eth_getStorageAt": self._get_storage_at,
            "eth_call": self._call,
            "eth_estimateGas": self._estimate_gas,
            "eth_sendRawTransaction": self._send_raw_transaction,
            "eth_sendTransaction": self._send_transaction,
            "eth_getTransactionByHash": self._transaction_by_hash,
            "eth_getTransactionByBlockHashAndIndex": self._transaction_by_index,
            "eth_getTransactionByBlockNumberAndIndex": self._transaction_by_index,
            "eth_getTransactionReceipt": self._receipt,
            "eth_getBlockReceipts": self._block_receipts,
            "eth_getBlockByNumber": self._block,
            "eth_getBlockByHash": self._block,
            "eth_getBlockTransactionCountByNumber": self._block_transaction_count,
            "eth_getBlockTransactionCountByHash": self._block_transaction_count,
            "eth_getUncleCountByBlockNumber": self._uncle_count,
            "eth_getUncleCountByBlockHash": self._uncle_count,
            "eth_getLogs": self._logs,
        }

    @property
    def method_names(self) -> list[str]:
        return sorted(self._methods)

    # Envelope

    def handle_body(self, body: bytes) -> bytes | None:
        """Return the response body, or None when the body has only notifications."""
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            response = _error_response(
                None, RpcError(PARSE_ERROR, f"parse error: {error}")
            )
            return json.dumps(response).encode()
        if isinstance(payload, list):
            if not payload:
                error = RpcError(
                    INVALID_REQUEST, "empty batch; send at least 1 request"
                )
                return json.dumps(_error_response(None, error)).encode()
            if len(payload) > MAX_BATCH_REQUESTS:
                error = RpcError(
                    INVALID_REQUEST,
                    f"batch of {len(payload)} requests is larger than "
                    f"{MAX_BATCH_REQUESTS}; split it",
                )
                return json.dumps(_error_response(None, error)).encode()
            responses = [self.handle_request(request) for request in payload]
            answered = [response for response in responses if response is not None]
            return json.dumps(answered).encode() if answered else None
        response = self.handle_request(payload)
        return None if response is None else json.dumps(response).encode()

    def handle_request(self, request: Any) -> dict[str, Any] | None:
        """Return the response object, or None for a notification (no ``id``)."""
        if not isinstance(request, dict):
            error = RpcError(INVALID_REQUEST, "request must be a JSON object")
            return _error_response(None, error)
        request_id = request.get("id")
        method = request.get("method")
        params = request.get("params", [])
        if (
            request.get("jsonrpc", "2.0") != "2.0"
            or not isinstance(method, str)
            or not isinstance(params, list)
        ):
            error = RpcError(
                INVALID_REQUEST,
                "invalid request: expected jsonrpc '2.0', a method name and a "
                "params list",
            )
            return _error_response(request_id, error)
        try:
            result = self.call(method, params)
        except RpcError as error:
            response = _error_response(request_id, error)
        else:
            response = {"jsonrpc": "2.0", "id": request_id, "result": result}
        return response if "id" in request else None

    def call(self, method: str, params: list[Any]) -> Any:
        """Run one method. Raise RpcError with the JSON-RPC code on any failure."""
        handler = self._methods.get(method)
        if handler is None:
            raise RpcError(
                METHOD_NOT_FOUND,
                f"the method {method} does not exist/is not available",
            )
        try:
            return handler(params)
        except RpcError:
            raise
        except ExecutionReverted as error:
            raise RpcError(REVERT_ERROR, str(error), hex_bytes(error.data)) from None
        except LogQueryTooLarge as error:
            raise RpcError(LIMIT_EXCEEDED, str(error)) from None
        except (BlockNotFound, NotFound) as error:
            raise RpcError(SERVER_ERROR, str(error)) from None
        except InvalidInput as error:
            raise RpcError(INVALID_PARAMS, str(error)) from None
        except ChainError as error:
            logger.debug("%s failed: %s", method, error)
            raise RpcError(SERVER_ERROR, str(error)) from None
        except Exception as error:
            logger.exception("internal error in %s", method)
            raise RpcError(
                INTERNAL_ERROR, f"internal error: {type(error).__name__}: {error}"
            ) from None

    # Methods

    def _client_version(self, params: list[Any]) -> str:
        _arguments(params, 0)
        return CLIENT_VERSION

    def _sha3(self, params: list[Any]) -> str:
        (data,) = _arguments(params, 1)
        return hex_bytes(keccak(parse_bytes(data, "data")))

    def _net_version(self, params: list[Any]) -> str:
        _arguments(params, 0)
        return str(self.chain.chain_id)

    def _chain_id(self, params: list[Any]) -> str:
        _arguments(params, 0)
        return quantity(self.chain.chain_id)

    def _block_number(self, params: list[Any]) -> str:
        _arguments(params, 0)
        return quantity(self.chain.head_number)

    def _gas_price(self, params: list[Any]) -> str:
        _arguments(params, 0)
        return quantity(self.chain.gas_price())

    def _max_priority_fee(self, params: list[Any]) -> str:
        _arguments(params, 0)
        return quantity(self.chain.max_priority_fee())

    def _fee_history(self, params: list[Any]) -> dict[str, Any]:
        count, newest, percentiles = _arguments(params, 2, 1)
        percentiles = percentiles or []
        if not isinstance(percentiles, list) or not all(
            isinstance(p, int | float) and not isinstance(p, bool) for p in percentiles
        ):
            raise _invalid("reward percentiles", percentiles, "a list of numbers")
        return self.chain.fee_history(
            parse_quantity(count, "block count"),
            parse_block_ref(newest, "newest block"),
            percentiles,
        )

    def _get_balance(self, params: list[Any]) -> str:
        address, block = _arguments(params, 1, 1)
        return quantity(
            self.chain.get_balance(parse_address(address), parse_block_ref(block))
        )

    def _get_transaction_count(self, params: list[Any]) -> str:
        # "pending" resolves to the head: a transaction is mined as it arrives, so
        # no pending transaction is ever acknowledged.
        address, block = _arguments(params, 1, 1)
        return quantity(
            self.chain.get_nonce(parse_address(address), parse_block_ref(block))
        )

    def _get_code(self, params: list[Any]) -> str:
        address, block = _arguments(params, 1, 1)
        return hex_bytes(
            self.chain.get_code(parse_address(address), parse_block_ref(block))
        )

    def _get_storage_at(self, params: list[Any]) -> str:
        address, slot, block = _arguments(params, 2, 1)
        if isinstance(slot, str) and len(slot) == 66:
            slot_number = int.from_bytes(parse_hash(slot, "storage slot"), "big")
        else:
            slot_number = parse_quantity(slot, "storage slot")
        return hex_bytes(
            self.chain.get_storage_at(
                parse_address(address), slot_number, parse_block_ref(block)
            )
        )

    def _call(self, params: list[Any]) -> str:
        transaction, block, overrides = _arguments(params, 1, 2)
        _no_overrides(overrides)
        output = self.chain.call(parse_call(transaction), parse_block_ref(block))
        return hex_bytes(output)

    def _estimate_gas(self, params: list[Any]) -> str:
        transaction, block, overrides = _arguments(params, 1, 2)
        _no_overrides(overrides)
        gas = self.chain.estimate_gas(parse_call(transaction), parse_block_ref(block))
        return quantity(gas)

    def _send_raw_transaction(self, params: list[Any]) -> str:
        (raw,) = _arguments(params, 1)
        tx_hash = self.chain.send_raw_transaction(
            parse_bytes(raw, "raw transaction"), nonce_wait=self.nonce_wait
        )
        return hex_bytes(tx_hash)

    def _send_transaction(self, params: list[Any]) -> str:
        raise RpcError(
            SERVER_ERROR,
            "eth_sendTransaction is not supported: this node holds no keys; sign "
            "the transaction locally and send it with eth_sendRawTransaction",
        )

    def _transaction_by_hash(self, params: list[Any]) -> dict[str, Any] | None:
        (tx_hash,) = _arguments(params, 1)
        return self.chain.transaction_by_hash(parse_hash(tx_hash, "transaction hash"))

    def _transaction_by_index(self, params: list[Any]) -> dict[str, Any] | None:
        block, index = _arguments(params, 2)
        return self.chain.transaction_by_block_and_index(
            parse_block_ref(block), parse_quantity(index, "transaction index")
        )

    def _receipt(self, params: list[Any]) -> dict[str, Any] | None:
        (tx_hash,) = _arguments(params, 1)
        return self.chain.receipt(parse_hash(tx_hash, "transaction hash"))

    def _block_receipts(self, params: list[Any]) -> list[dict[str, Any]] | None:
        (block,) = _arguments(params, 1)
        return self.chain.block_receipts(parse_block_ref(block))

    def _block(self, params: list[Any]) -> dict[str, Any] | None:
        block, full = _arguments(params, 1, 1)
        if full is not None and not isinstance(full, bool):
            raise _invalid("full transactions flag", full, "true or false")
        return self.chain.block(parse_block_ref(block), bool(full))

    def _block_transaction_count(self, params: list[Any]) -> str | None:
        (block,) = _arguments(params, 1)
        count = self.chain.block_transaction_count(parse_block_ref(block))
        return None if count is None else quantity(count)

    def _uncle_count(self, params: list[Any]) -> str | None:
        (block,) = _arguments(params, 1)
        count = self.chain.block_transaction_count(parse_block_ref(block))
        return None if count is None else quantity(0)

    def _logs(self, params: list[Any]) -> list[dict[str, Any]]:
        (log_filter,) = _arguments(params, 1)
        return self.chain.logs(parse_filter(log_filter))


def _error_response(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_json()}
