"""The embedded EVM chain: py-evm (Prague rules) on a SQLite file, instant mining.

Each accepted transaction is mined at once in a block of its own, and the block is
committed to the state file before ``send_raw_transaction`` returns. One lock
serializes every access to py-evm and the file, because neither is thread-safe.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from eth._utils.address import generate_contract_address
from eth.abc import (
    BlockAPI,
    BlockHeaderAPI,
    ComputationAPI,
    ReceiptAPI,
    SignedTransactionAPI,
    StateAPI,
)
from eth.chains.base import MiningChain
from eth.constants import (
    GAS_TX,
    POST_MERGE_DIFFICULTY,
    POST_MERGE_MIX_HASH,
    POST_MERGE_NONCE,
    ZERO_ADDRESS,
)
from eth.exceptions import HeaderNotFound, OutOfGas, Revert
from eth.vm.forks import PragueVM
from eth.vm.forks.prague.constants import (
    STANDARD_TOKEN_COST,
    TOTAL_COST_FLOOR_PER_TOKEN,
)
from eth.vm.spoof import SpoofTransaction
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_keys.exceptions import BadSignature
from eth_utils import ValidationError, is_address, to_canonical_address

from citymesh.errors import ChainError, InvalidInput, NotFound

from .evm_format import (
    JsonObject,
    effective_gas_price,
    format_block,
    format_log,
    format_receipt,
    format_transaction,
    hex_address,
    hex_bytes,
    quantity,
    transaction_type,
)
from .evm_store import ChainStore, LogRecord, TransactionRecord

logger = logging.getLogger("citymesh.ledger")

DEFAULT_CHAIN_ID = 1337
DEFAULT_GAS_LIMIT = 30_000_000
# Tip that eth_maxPriorityFeePerGas suggests, in wei. The chain mines every valid
# transaction at once, so any tip works, and 1 gwei is a common default.
SUGGESTED_PRIORITY_FEE = 10**9
# Seconds a transaction whose nonce is ahead of its sender's account waits for the
# missing nonces, because concurrent requests of one sender may arrive out of order.
DEFAULT_NONCE_WAIT = 2.0
DEFAULT_MAX_LOG_RESULTS = 50_000
MAX_FEE_HISTORY_BLOCKS = 1024
# eth_estimateGas stops its search when the bracket is within 1.5 %, the value of
# go-ethereum's estimateGasErrorRatio.
ESTIMATE_GAS_ERROR_RATIO = 0.015
BLOB_TRANSACTION_TYPE = 3
BLOCK_TAGS = ("latest", "pending", "safe", "finalized", "earliest")
# Selector of Solidity's Error(string), the revert reason encoding.
ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")

BlockRef = int | str | bytes
"""A block number, a tag from ``BLOCK_TAGS``, or a 32-byte block hash."""


class TransactionRejected(ChainError):
    """A raw transaction is invalid for the current state, so no block includes it."""


class ExecutionReverted(ChainError):
    """A call or gas estimate stopped at REVERT. ``data`` is the revert output."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reason = decode_revert_reason(data)
        message = "execution reverted"
        if self.reason is not None:
            message += f": {self.reason}"
        super().__init__(message)


class ExecutionFailed(ChainError):
    """A call or gas estimate failed for a reason other than REVERT (out of gas...)."""


class BlockNotFound(NotFound):
    """A block number or hash names no block of this chain."""


class LogQueryTooLarge(InvalidInput):
    """An eth_getLogs filter matches more logs than the server returns at once."""


@dataclass(frozen=True, slots=True)
class CallRequest:
    """The transaction object of eth_call and eth_estimateGas (unsigned)."""

    sender: bytes = ZERO_ADDRESS
    to: bytes | None = None
    gas: int | None = None
    gas_price: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    value: int = 0
    data: bytes = b""
    access_list: tuple[tuple[bytes, tuple[int, ...]], ...] = ()
    """EIP-2930 entries: an address and the storage slots it touches."""


@dataclass(frozen=True, slots=True)
class LogFilter:
    """The filter object of eth_getLogs. An empty tuple matches any value."""

    from_block: BlockRef = "latest"
    to_block: BlockRef = "latest"
    block_hash: bytes | None = None
    addresses: tuple[bytes, ...] = ()
    topics: tuple[tuple[bytes, ...] | None, ...] = ()


def decode_revert_reason(data: bytes) -> str | None:
    """Return the string of a Solidity ``Error(string)`` revert, else None."""
    if data[:4] != ERROR_STRING_SELECTOR:
        return None
    try:
        (reason,) = abi_decode(["string"], data[4:])
    except (DecodingError, UnicodeDecodeError):
        return None
    return reason


def _chain_class(chain_id: int, gas_limit: int) -> type[MiningChain]:
    class CitymeshChain(MiningChain):
        """Prague rules from genesis, holding the block gas limit constant."""

        vm_configuration = ((0, PragueVM),)

        def create_header_from_parent(
            self, parent_header: BlockHeaderAPI, **header_params: Any
        ) -> BlockHeaderAPI:
            # py-evm moves each block's gas limit toward its own target, so a chain
            # that keeps the default shrinks until transactions no longer fit.
            header_params["gas_limit"] = gas_limit
            return super().create_header_from_parent(parent_header, **header_params)

    CitymeshChain.chain_id = chain_id
    return CitymeshChain


def _parse_prefund(prefund: Mapping[str, int]) -> dict[bytes, int]:
    accounts: dict[bytes, int] = {}
    for address, wei in prefund.items():
        if not isinstance(address, str) or not is_address(address):
            raise InvalidInput(
                f"prefund address {address!r} is not a valid hex address; "
                "pass 20 bytes as 0x-prefixed hex with a valid checksum"
            )
        if isinstance(wei, bool) or not isinstance(wei, int) or wei < 0:
            raise InvalidInput(
                f"prefund balance {wei!r} for {address} is invalid; "
                "pass a non-negative integer number of wei"
            )
        accounts[to_canonical_address(address)] = wei
    return accounts


def _alloc_json(accounts: Mapping[bytes, int]) -> str:
    return json.dumps(
        {"0x" + address.hex(): str(wei) for address, wei in sorted(accounts.items())}
    )


def data_floor_gas(data: bytes) -> int:
    """Return the minimum gas of a transaction with this calldata (EIP-7623)."""
    zeros = data.count(0)
    tokens = zeros + (len(data) - zeros) * STANDARD_TOKEN_COST
    return GAS_TX + TOTAL_COST_FLOOR_PER_TOKEN * tokens


class EmbeddedChain:
    """A persistent single-node EVM chain that mines each transaction on arrival.

    ``prefund`` (hex address to wei) and ``gas_limit`` take effect when the state file
    is new. Reopening a file checks ``chain_id`` and ``gas_limit`` against the stored
    ones and raises InvalidInput on a mismatch, but only logs a different ``prefund``.
    ``durable`` is passed to ``ChainStore``. Methods are thread-safe.

    NOTE: a block's timestamp is at least its parent's plus 1 s (a consensus rule), so
    during a burst of more than one transaction a second, block times run ahead of
    the clock until the burst ends.
    """

    def __init__(
        self,
        state_path: Path,
        prefund: Mapping[str, int] | None = None,
        chain_id: int = DEFAULT_CHAIN_ID,
        gas_limit: int = DEFAULT_GAS_LIMIT,
        *,
        durable: bool = True,
        max_log_results: int = DEFAULT_MAX_LOG_RESULTS,
    ) -> None:
        if not 0 < chain_id < 2**64:
            raise InvalidInput(
                f"chain id {chain_id!r} is out of range; pass an integer in 1..2**64-1"
            )
        if gas_limit < GAS_TX:
            raise InvalidInput(
                f"block gas limit {gas_limit!r} is below one transfer ({GAS_TX}); "
                "pass a larger gas limit such as 30000000"
            )
        accounts = _parse_prefund(prefund or {})
        self.chain_id = chain_id
        self.gas_limit = gas_limit
        self.max_log_results = max_log_results
        self._condition = threading.Condition(threading.RLock())
        self._closed = False
        self._store = ChainStore(state_path, durable=durable)
        try:
            self._chain = self._open_or_create(accounts, prefund is not None)
            self._head = self._chain.get_canonical_head()
        except BaseException:
            self._store.close()
            raise
        self.state_path = self._store.path

    # Opening

    def _open_or_create(
        self, accounts: dict[bytes, int], prefund_given: bool
    ) -> MiningChain:
        chain_class = _chain_class(self.chain_id, self.gas_limit)
        stored_chain_id = self._store.get_meta("chain_id")
        if stored_chain_id is None:
            return self._create_genesis(chain_class, accounts)

        path = str(self._store.path)
        if int(stored_chain_id) != self.chain_id:
            raise InvalidInput(
                f"state file {path!r} has chain id {stored_chain_id}, not "
                f"{self.chain_id}; pass chain_id={stored_chain_id} or use a new file"
            )
        stored_gas_limit = int(self._store.get_meta("gas_limit") or 0)
        if stored_gas_limit != self.gas_limit:
            raise InvalidInput(
                f"state file {path!r} has block gas limit {stored_gas_limit}, not "
                f"{self.gas_limit}; pass gas_limit={stored_gas_limit} or use a new file"
            )
        if prefund_given and _alloc_json(accounts) != self._store.get_meta("alloc"):
            logger.warning(
                "prefund ignored: state file %s already has a genesis block", path
            )
        chain = chain_class(self._store.kv)
        head = chain.get_canonical_head()
        index_head = int(self._store.get_meta("index_head") or -1)
        if index_head != head.block_number:
            raise ChainError(
                f"state file {path!r} is inconsistent: chain head is block "
                f"{head.block_number} but the index ends at block {index_head}; "
                "restore the file from a copy taken while the server was stopped"
            )
        self._store.discard()
        logger.info(
            "opened chain id %d from %s at block %d",
            self.chain_id,
            path,
            head.block_number,
        )
        return chain

    def _create_genesis(
        self, chain_class: type[MiningChain], accounts: dict[bytes, int]
    ) -> MiningChain:
        genesis_params = {
            "coinbase": ZERO_ADDRESS,
            "difficulty": POST_MERGE_DIFFICULTY,
            "extra_data": b"",
            "gas_limit": self.gas_limit,
            "mix_hash": POST_MERGE_MIX_HASH,
            "nonce": POST_MERGE_NONCE,
            "timestamp": int(time.time()),
        }
        genesis_state = {
            address: {"balance": wei, "nonce": 0, "code": b"", "storage": {}}
            for address, wei in accounts.items()
        }
        chain = chain_class.from_genesis(self._store.kv, genesis_params, genesis_state)
        self._store.commit_block(
            meta={
                "chain_id": str(self.chain_id),
                "gas_limit": str(self.gas_limit),
                "alloc": _alloc_json(accounts),
                "index_head": "0",
            }
        )
        logger.info(
            "created chain id %d in %s with %d prefunded accounts",
            self.chain_id,
            self._store.path,
            len(accounts),
        )
        return chain

    # Locking

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the chain lock, then drop any py-evm writes that a read left behind."""
        with self._condition:
            if self._closed:
                raise ChainError(
                    f"the chain on {str(self.state_path)!r} is closed; open it again"
                )
            try:
                yield
            finally:
                self._store.discard()

    def close(self) -> None:
        """Close the state file. Calls after that raise ChainError, except ``close``."""
        with self._condition:
            if self._closed:
                return
            self._closed = True
            self._store.close()
            self._condition.notify_all()
        logger.info("closed chain on %s at block %d", self.state_path, self.head_number)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Blocks and state

    @property
    def head_number(self) -> int:
        return self._head.block_number

    def _block_number(self, ref: BlockRef) -> int:
        head = self._head.block_number
        if isinstance(ref, str):
            if ref == "earliest":
                return 0
            if ref in BLOCK_TAGS:
                return head
            raise InvalidInput(
                f"block tag {ref!r} is unknown; use a number or one of {BLOCK_TAGS}"
            )
        if isinstance(ref, bool) or not isinstance(ref, int):
            raise InvalidInput(f"block reference {ref!r} is not a number, tag or hash")
        if not 0 <= ref <= head:
            raise BlockNotFound(
                f"block {ref} not found: the chain head is block {head}"
            )
        return ref

    def _header(self, ref: BlockRef) -> BlockHeaderAPI:
        if isinstance(ref, bytes):
            try:
                header = self._chain.get_block_header_by_hash(ref)
            except HeaderNotFound:
                raise BlockNotFound(
                    f"block {hex_bytes(ref)} not found on this chain"
                ) from None
            return header
        number = self._block_number(ref)
        if number == self._head.block_number:
            return self._head
        return self._chain.get_canonical_block_header_by_number(number)

    def _state(self, ref: BlockRef) -> StateAPI:
        return self._chain.get_vm(at_header=self._header(ref)).state

    def _next_base_fee(self) -> int:
        # MiningChain.header is the header of the next block, built from the head.
        return self._chain.header.base_fee_per_gas

    def get_balance(self, address: bytes, block: BlockRef = "latest") -> int:
        with self._locked():
            return self._state(block).get_balance(address)

    def get_nonce(self, address: bytes, block: BlockRef = "latest") -> int:
        with self._locked():
            return self._state(block).get_nonce(address)

    def get_code(self, address: bytes, block: BlockRef = "latest") -> bytes:
        with self._locked():
            return self._state(block).get_code(address)

    def get_storage_at(
        self, address: bytes, slot: int, block: BlockRef = "latest"
    ) -> bytes:
        with self._locked():
            return self._state(block).get_storage(address, slot).to_bytes(32, "big")

    def gas_price(self) -> int:
        """Return the suggested legacy gas price: next base fee plus the tip."""
        with self._locked():
            return self._next_base_fee() + SUGGESTED_PRIORITY_FEE

    def max_priority_fee(self) -> int:
        return SUGGESTED_PRIORITY_FEE

    def block(
        self, ref: BlockRef, full_transactions: bool = False
    ) -> JsonObject | None:
        """Return the block as a JSON-RPC object, or None if there is no such block."""
        with self._locked():
            try:
                header = self._header(ref)
            except BlockNotFound:
                return None
            block = self._chain.get_block_by_header(header)
            if not full_transactions:
                return format_block(
                    block, [hex_bytes(tx.hash) for tx in block.transactions]
                )
            records = self._store.block_transactions(header.block_number)
            transactions = [
                format_transaction(
                    tx,
                    record.sender,
                    header.hash,
                    header.block_number,
                    index,
                    header.base_fee_per_gas,
                )
                for index, (tx, record) in enumerate(
                    zip(block.transactions, records, strict=True)
                )
            ]
            return format_block(block, transactions)

    def block_transaction_count(self, ref: BlockRef) -> int | None:
        with self._locked():
            try:
                header = self._header(ref)
            except BlockNotFound:
                return None
            return len(self._store.block_transactions(header.block_number))

    def transaction_by_hash(self, tx_hash: bytes) -> JsonObject | None:
        with self._locked():
            record = self._store.transaction(tx_hash)
            if record is None:
                return None
            return self._format_mined_transaction(record)

    def transaction_by_block_and_index(
        self, ref: BlockRef, index: int
    ) -> JsonObject | None:
        with self._locked():
            try:
                header = self._header(ref)
            except BlockNotFound:
                return None
            records = self._store.block_transactions(header.block_number)
            if not 0 <= index < len(records):
                return None
            return self._format_mined_transaction(records[index])

    def _format_mined_transaction(self, record: TransactionRecord) -> JsonObject:
        header = self._header(record.block_number)
        transaction = self._chain.get_canonical_transaction_by_index(
            record.block_number, record.tx_index
        )
        return format_transaction(
            transaction,
            record.sender,
            record.block_hash,
            record.block_number,
            record.tx_index,
            header.base_fee_per_gas,
        )

    def receipt(self, tx_hash: bytes) -> JsonObject | None:
        with self._locked():
            record = self._store.transaction(tx_hash)
            if record is None:
                return None
            logs = self._store.transaction_logs(record.block_number, record.tx_index)
            return format_receipt(record, logs)

    def block_receipts(self, ref: BlockRef) -> list[JsonObject] | None:
        with self._locked():
            try:
                header = self._header(ref)
            except BlockNotFound:
                return None
            number = header.block_number
            return [
                format_receipt(
                    record, self._store.transaction_logs(number, record.tx_index)
                )
                for record in self._store.block_transactions(number)
            ]

    # Logs and fees

    def logs(self, log_filter: LogFilter) -> list[JsonObject]:
        """Return the logs matching an eth_getLogs filter, read from the SQLite index.

        Raises LogQueryTooLarge when more than ``max_log_results`` logs match.
        """
        with self._locked():
            if log_filter.block_hash is not None:
                from_block = to_block = self._header(log_filter.block_hash).block_number
            else:
                from_block = self._clamped_number(log_filter.from_block)
                to_block = self._clamped_number(log_filter.to_block)
                if from_block > to_block:
                    if from_block > self._head.block_number:
                        return []
                    raise InvalidInput(
                        f"invalid block range: fromBlock {from_block} is after "
                        f"toBlock {to_block}; swap them"
                    )
            records = self._store.logs(
                from_block,
                to_block,
                log_filter.addresses,
                log_filter.topics,
                limit=self.max_log_results + 1,
            )
        if len(records) > self.max_log_results:
            raise LogQueryTooLarge(
                f"query returned more than {self.max_log_results} results; "
                "narrow the block range or filter by address or topic"
            )
        return [format_log(record) for record in records]

    def _clamped_number(self, ref: BlockRef) -> int:
        """Resolve a filter bound. A number beyond the head stays as given."""
        if isinstance(ref, int) and not isinstance(ref, bool) and ref >= 0:
            return ref
        return self._block_number(ref)

    def fee_history(
        self,
        block_count: int,
        newest_block: BlockRef,
        reward_percentiles: Sequence[float] = (),
    ) -> JsonObject:
        """Return eth_feeHistory for up to 1024 blocks ending at ``newest_block``."""
        previous = -1.0
        for percentile in reward_percentiles:
            if not 0 <= percentile <= 100 or percentile < previous:
                raise InvalidInput(
                    f"reward percentiles {list(reward_percentiles)!r} are invalid; "
                    "pass increasing values between 0 and 100"
                )
            previous = percentile
        if block_count < 1:
            raise InvalidInput(
                f"block count {block_count!r} is invalid; pass at least 1"
            )
        block_count = min(block_count, MAX_FEE_HISTORY_BLOCKS)
        with self._locked():
            newest = self._block_number(newest_block)
            oldest = max(0, newest - block_count + 1)
            base_fees: list[str] = []
            ratios: list[float] = []
            rewards: list[list[str]] = []
            for number in range(oldest, newest + 1):
                header = self._header(number)
                base_fees.append(quantity(header.base_fee_per_gas))
                ratios.append(header.gas_used / header.gas_limit)
                if reward_percentiles:
                    rewards.append(self._block_rewards(header, reward_percentiles))
            if newest == self._head.block_number:
                base_fees.append(quantity(self._next_base_fee()))
            else:
                base_fees.append(quantity(self._header(newest + 1).base_fee_per_gas))
        result: JsonObject = {
            "oldestBlock": quantity(oldest),
            "baseFeePerGas": base_fees,
            "gasUsedRatio": ratios,
            "baseFeePerBlobGas": [quantity(1)] * len(base_fees),
            "blobGasUsedRatio": [0.0] * len(ratios),
        }
        if reward_percentiles:
            result["reward"] = rewards
        return result

    def _block_rewards(
        self, header: BlockHeaderAPI, percentiles: Sequence[float]
    ) -> list[str]:
        """Return the tip at each percentile of the block's gas, as geth computes it."""
        records = self._store.block_transactions(header.block_number)
        if not records:
            return [quantity(0)] * len(percentiles)
        tips = sorted(
            (record.effective_gas_price - header.base_fee_per_gas, record.gas_used)
            for record in records
        )
        rewards = []
        index = 0
        cumulative = tips[0][1]
        for percentile in percentiles:
            threshold = header.gas_used * percentile / 100
            while cumulative < threshold and index < len(tips) - 1:
                index += 1
                cumulative += tips[index][1]
            rewards.append(quantity(tips[index][0]))
        return rewards

    # Execution without a transaction

    def _call_transaction(
        self, request: CallRequest, header: BlockHeaderAPI, gas: int
    ) -> tuple[StateAPI, SpoofTransaction]:
        """Return the state after ``header`` and ``request`` as an unsigned transaction.

        Without a fee the call runs with base fee 0 and gas price 0, as geth does, so
        an unfunded sender can call.
        """
        fee_given = any(
            (
                request.gas_price,
                request.max_fee_per_gas,
                request.max_priority_fee_per_gas,
            )
        )
        if not fee_given:
            header = header.copy(base_fee_per_gas=0)
        vm = self._chain.get_vm(at_header=header)
        state = vm.state
        if request.max_fee_per_gas is not None or request.gas_price is None:
            priority = request.max_priority_fee_per_gas or 0
            max_fee = request.max_fee_per_gas
            if max_fee is None:
                max_fee = priority + 2 * header.base_fee_per_gas
        else:
            priority = max_fee = request.gas_price
        unsigned = vm.get_transaction_builder().new_unsigned_dynamic_fee_transaction(
            chain_id=self.chain_id,
            nonce=state.get_nonce(request.sender),
            max_priority_fee_per_gas=priority,
            max_fee_per_gas=max_fee,
            gas=gas,
            to=request.to or b"",
            value=request.value,
            data=request.data,
            access_list=request.access_list,
        )
        return state, SpoofTransaction(unsigned, from_=request.sender)

    def _execute(
        self, request: CallRequest, header: BlockHeaderAPI, gas: int
    ) -> ComputationAPI:
        """Run ``request`` on the state after ``header`` and roll the state back."""
        state, transaction = self._call_transaction(request, header, gas)
        snapshot = state.snapshot()
        try:
            return state.apply_transaction(transaction)
        except ValidationError as error:
            raise ExecutionFailed(str(error)) from None
        finally:
            state.revert(snapshot)

    def call(self, request: CallRequest, block: BlockRef = "latest") -> bytes:
        """Run eth_call and return the output. Raise ExecutionReverted on REVERT."""
        with self._locked():
            header = self._header(block)
            computation = self._execute(
                request, header, request.gas or header.gas_limit
            )
        if computation.is_error:
            _raise_execution_error(computation)
        return computation.output

    def estimate_gas(self, request: CallRequest, block: BlockRef = "latest") -> int:
        """Return the gas ``request`` needs, found by bisection as geth does."""
        with self._locked():
            header = self._header(block)
            high = self._gas_allowance(request, header)
            if self._is_plain_transfer(request, header):
                _, transaction = self._call_transaction(request, header, high)
                needed = transaction.intrinsic_gas
                computation = self._execute(request, header, needed)
                if computation.is_error:
                    raise ExecutionFailed(
                        f"value transfer to {hex_address(request.to)} failed: "
                        f"{computation.error}"
                    )
                return needed
            computation = self._execute(request, header, high)
            if computation.is_error:
                if isinstance(computation.error, OutOfGas):
                    raise ExecutionFailed(f"gas required exceeds allowance ({high})")
                _raise_execution_error(computation)
            floor = data_floor_gas(request.data)
            if floor > high:
                raise ExecutionFailed(
                    f"gas required exceeds allowance ({high}): calldata alone "
                    f"needs {floor}"
                )
            low = max(high - computation.get_gas_remaining(), floor) - 1

            def succeeds(gas: int) -> bool:
                return not self._execute(request, header, gas).is_error

            optimistic = min(high, (low + 1 + 2300) * 64 // 63)
            if succeeds(optimistic):
                high = optimistic
            else:
                low = optimistic
            while low + 1 < high and (high - low) / high >= ESTIMATE_GAS_ERROR_RATIO:
                middle = (low + high) // 2
                if succeeds(middle):
                    high = middle
                else:
                    low = middle
            return high

    def _is_plain_transfer(self, request: CallRequest, header: BlockHeaderAPI) -> bool:
        """Tell whether ``request`` sends value to an account without code."""
        if request.to is None or request.data:
            return False
        state = self._chain.get_vm(at_header=header).state
        return not state.get_code(request.to)

    def _gas_allowance(self, request: CallRequest, header: BlockHeaderAPI) -> int:
        high = min(request.gas or header.gas_limit, header.gas_limit)
        fee = request.max_fee_per_gas or request.gas_price or 0
        if fee:
            balance = self._chain.get_vm(at_header=header).state.get_balance(
                request.sender
            )
            available = balance - request.value
            if available < 0:
                raise ExecutionFailed(
                    "insufficient funds for transfer: address "
                    f"{hex_address(request.sender)} have {balance} want {request.value}"
                )
            high = min(high, available // fee)
        return high

    # Transactions

    def send_raw_transaction(
        self, raw: bytes, nonce_wait: float = DEFAULT_NONCE_WAIT
    ) -> bytes:
        """Validate, mine and commit a signed transaction, and return its hash.

        The hash is returned only after the block is committed to the state file. A
        transaction already mined returns its hash again. A nonce ahead of the
        sender's account waits up to ``nonce_wait`` seconds for the missing ones,
        then raises TransactionRejected, as every other invalid transaction does.
        """
        transaction = self._decode(raw)
        try:
            sender = transaction.sender
        except (BadSignature, ValidationError, ValueError) as error:
            raise TransactionRejected(f"invalid sender: {error}") from None
        deadline = time.monotonic() + nonce_wait
        with self._locked():
            while True:
                if self._store.transaction(transaction.hash) is not None:
                    return transaction.hash
                state = self._state("latest")
                account_nonce = state.get_nonce(sender)
                if transaction.nonce <= account_nonce:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransactionRejected(
                        f"nonce too high: address {hex_address(sender)}, "
                        f"tx: {transaction.nonce} state: {account_nonce}; "
                        "send the missing nonces first"
                    )
                self._condition.wait(remaining)
                if self._closed:
                    raise ChainError("the chain closed while the transaction waited")
            self._validate(transaction, sender, state, account_nonce)
            self._mine(transaction, sender)
            self._condition.notify_all()
        return transaction.hash

    def _decode(self, raw: bytes) -> SignedTransactionAPI:
        if not raw:
            raise TransactionRejected("invalid raw transaction: empty input")
        if raw[0] == BLOB_TRANSACTION_TYPE:
            raise TransactionRejected(
                "transaction type not supported: blob transactions (type 3) need "
                "a consensus layer; send type 0, 1, 2 or 4"
            )
        builder = PragueVM.get_transaction_builder()
        try:
            return builder.decode(raw)
        # rlp and py-evm document no exception set for malformed input.
        except Exception as error:  # noqa: BLE001
            raise TransactionRejected(
                f"invalid raw transaction: {type(error).__name__}: {error}"
            ) from None

    def _validate(
        self,
        transaction: SignedTransactionAPI,
        sender: bytes,
        state: StateAPI,
        account_nonce: int,
    ) -> None:
        """Raise TransactionRejected, in geth's words, if a block would reject it."""
        address = hex_address(sender)

        if transaction.chain_id is not None and transaction.chain_id != self.chain_id:
            raise TransactionRejected(
                f"invalid chain id: have {transaction.chain_id} want {self.chain_id}"
            )
        if transaction.nonce < account_nonce:
            raise TransactionRejected(
                f"nonce too low: address {address}, tx: {transaction.nonce} "
                f"state: {account_nonce}"
            )

        minimum_gas = max(transaction.intrinsic_gas, data_floor_gas(transaction.data))
        if transaction.gas < minimum_gas:
            raise TransactionRejected(
                f"intrinsic gas too low: gas {transaction.gas}, minimum {minimum_gas}"
            )
        if transaction.gas > self.gas_limit:
            raise TransactionRejected(
                f"exceeds block gas limit: gas {transaction.gas}, "
                f"limit {self.gas_limit}"
            )

        if transaction.max_priority_fee_per_gas > transaction.max_fee_per_gas:
            raise TransactionRejected(
                "max priority fee per gas higher than max fee per gas: "
                f"address {address}, maxPriorityFeePerGas: "
                f"{transaction.max_priority_fee_per_gas}, "
                f"maxFeePerGas: {transaction.max_fee_per_gas}"
            )
        base_fee = self._next_base_fee()
        if transaction.max_fee_per_gas < base_fee:
            raise TransactionRejected(
                "max fee per gas less than block base fee: address "
                f"{address}, maxFeePerGas: {transaction.max_fee_per_gas}, "
                f"baseFee: {base_fee}"
            )
        try:
            transaction.validate()
        except ValidationError as error:
            raise TransactionRejected(f"invalid transaction: {error}") from None

        balance = state.get_balance(sender)
        cost = transaction.gas * transaction.max_fee_per_gas + transaction.value
        if balance < cost:
            raise TransactionRejected(
                "insufficient funds for gas * price + value: "
                f"address {address} have {balance} want {cost}"
            )

    def _mine(self, transaction: SignedTransactionAPI, sender: bytes) -> None:
        parent = self._head
        # Reuse the next-block header that mining the parent left behind, because
        # building one is a visible share of a block's cost. Bring its time to now.
        now = int(time.time())
        if self._chain.header.timestamp < now:
            self._chain.header = self._chain.header.copy(timestamp=now)
        try:
            result, receipts, _ = self._chain.mine_all([transaction])
            block = result.imported_block
            records, logs = _index_rows(block, [sender], receipts)
            self._store.commit_block(records, logs, {"index_head": str(block.number)})
        except ValidationError as error:
            self._chain.header = self._chain.create_header_from_parent(parent)
            raise TransactionRejected(f"invalid transaction: {error}") from None
        except BaseException:
            self._chain.header = self._chain.create_header_from_parent(parent)
            raise
        self._head = block.header
        logger.debug(
            "mined block %d with transaction %s (status %d)",
            block.number,
            hex_bytes(transaction.hash),
            records[0].status,
        )


def _raise_execution_error(computation: ComputationAPI) -> None:
    if isinstance(computation.error, Revert):
        raise ExecutionReverted(computation.output)
    raise ExecutionFailed(str(computation.error) or type(computation.error).__name__)


def _index_rows(
    block: BlockAPI, senders: Sequence[bytes], receipts: Sequence[ReceiptAPI]
) -> tuple[list[TransactionRecord], list[LogRecord]]:
    """Build the transaction and log index rows of a freshly mined block."""
    header = block.header
    records: list[TransactionRecord] = []
    logs: list[LogRecord] = []
    previous_cumulative = 0
    for index, (transaction, sender, receipt) in enumerate(
        zip(block.transactions, senders, receipts, strict=True)
    ):
        is_create = not transaction.to
        records.append(
            TransactionRecord(
                hash=transaction.hash,
                block_number=header.block_number,
                block_hash=header.hash,
                tx_index=index,
                sender=sender,
                recipient=None if is_create else transaction.to,
                contract_address=(
                    generate_contract_address(sender, transaction.nonce)
                    if is_create
                    else None
                ),
                # Post-Byzantium receipts carry status 1 (b"\x01") or 0 (b"").
                status=1 if receipt.state_root == b"\x01" else 0,
                gas_used=receipt.gas_used - previous_cumulative,
                cumulative_gas_used=receipt.gas_used,
                effective_gas_price=effective_gas_price(
                    transaction, header.base_fee_per_gas
                ),
                type=transaction_type(transaction),
                logs_bloom=receipt.bloom.to_bytes(256, "big"),
            )
        )
        previous_cumulative = receipt.gas_used
        for log in receipt.logs:
            logs.append(
                LogRecord(
                    block_number=header.block_number,
                    log_index=len(logs),
                    block_hash=header.hash,
                    block_timestamp=header.timestamp,
                    tx_index=index,
                    tx_hash=transaction.hash,
                    address=log.address,
                    topics=tuple(_topic_bytes(topic) for topic in log.topics),
                    data=log.data,
                )
            )
    return records, logs


def _topic_bytes(topic: int | bytes) -> bytes:
    if isinstance(topic, int):
        return topic.to_bytes(32, "big")
    return bytes(topic)


__all__ = [
    "BLOCK_TAGS",
    "DEFAULT_CHAIN_ID",
    "DEFAULT_GAS_LIMIT",
    "DEFAULT_NONCE_WAIT",
    "BlockNotFound",
    "BlockRef",
    "CallRequest",
    "EmbeddedChain",
    "ExecutionFailed",
    "ExecutionReverted",
    "LogFilter",
    "LogQueryTooLarge",
    "TransactionRejected",
    "decode_revert_reason",
]
