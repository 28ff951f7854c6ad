"""Conversion of py-evm blocks, transactions and index rows to JSON-RPC objects.

The shapes follow the Ethereum execution API as geth serves it: quantities are
``0x``-prefixed hex without leading zeros, byte strings are ``0x``-prefixed hex, and
addresses are lowercase.
"""

from __future__ import annotations

from typing import Any

import rlp
from eth.abc import BlockAPI, BlockHeaderAPI, SignedTransactionAPI

from .evm_store import LogRecord, TransactionRecord

JsonObject = dict[str, Any]

LEGACY_TRANSACTION_TYPE = 0
SET_CODE_TRANSACTION_TYPE = 4


def quantity(value: int) -> str:
    return hex(value)


def hex_bytes(value: bytes) -> str:
    return "0x" + value.hex()


def hex_address(value: bytes | None) -> str | None:
    return None if not value else "0x" + value.hex()


def word(value: int) -> str:
    """Format an integer as a 32-byte hex word (hashes, topics, signature parts)."""
    return hex_bytes(value.to_bytes(32, "big"))


def transaction_type(transaction: SignedTransactionAPI) -> int:
    type_id = transaction.type_id
    return LEGACY_TRANSACTION_TYPE if type_id is None else type_id


def effective_gas_price(transaction: SignedTransactionAPI, base_fee: int) -> int:
    """Return the gas price paid under EIP-1559 (a legacy price is paid in full)."""
    return min(
        transaction.max_fee_per_gas,
        base_fee + transaction.max_priority_fee_per_gas,
    )


def format_block(
    block: BlockAPI,
    transactions: list[JsonObject] | list[str],
) -> JsonObject:
    header = block.header
    result: JsonObject = {
        "number": quantity(header.block_number),
        "hash": hex_bytes(header.hash),
        "parentHash": hex_bytes(header.parent_hash),
        "nonce": hex_bytes(header.nonce),
        "mixHash": hex_bytes(header.mix_hash),
        "sha3Uncles": hex_bytes(header.uncles_hash),
        "logsBloom": hex_bytes(header.bloom.to_bytes(256, "big")),
        "transactionsRoot": hex_bytes(header.transaction_root),
        "stateRoot": hex_bytes(header.state_root),
        "receiptsRoot": hex_bytes(header.receipt_root),
        "miner": hex_address(header.coinbase) or "0x" + "00" * 20,
        "difficulty": quantity(header.difficulty),
        "extraData": hex_bytes(header.extra_data),
        "size": quantity(len(rlp.encode(block))),
        "gasLimit": quantity(header.gas_limit),
        "gasUsed": quantity(header.gas_used),
        "timestamp": quantity(header.timestamp),
        "transactions": transactions,
        "uncles": [hex_bytes(uncle.hash) for uncle in block.uncles],
    }
    result.update(_post_london_header_fields(header))
    if hasattr(block, "withdrawals"):
        result["withdrawals"] = [
            {
                "index": quantity(withdrawal.index),
                "validatorIndex": quantity(withdrawal.validator_index),
                "address": hex_address(withdrawal.address),
                "amount": quantity(withdrawal.amount),
            }
            for withdrawal in block.withdrawals
        ]
    return result


def _post_london_header_fields(header: BlockHeaderAPI) -> JsonObject:
    fields: JsonObject = {}
    optional = (
        ("base_fee_per_gas", "baseFeePerGas", quantity),
        ("withdrawals_root", "withdrawalsRoot", hex_bytes),
        ("blob_gas_used", "blobGasUsed", quantity),
        ("excess_blob_gas", "excessBlobGas", quantity),
        ("parent_beacon_block_root", "parentBeaconBlockRoot", hex_bytes),
        ("requests_hash", "requestsHash", hex_bytes),
    )
    for attribute, name, convert in optional:
        value = getattr(header, attribute, None)
        if value is not None:
            fields[name] = convert(value)
    return fields


def format_transaction(
    transaction: SignedTransactionAPI,
    sender: bytes,
    block_hash: bytes,
    block_number: int,
    index: int,
    base_fee: int,
) -> JsonObject:
    type_id = transaction_type(transaction)
    result: JsonObject = {
        "blockHash": hex_bytes(block_hash),
        "blockNumber": quantity(block_number),
        "transactionIndex": quantity(index),
        "hash": hex_bytes(transaction.hash),
        "type": quantity(type_id),
        "from": hex_address(sender),
        "to": hex_address(transaction.to),
        "nonce": quantity(transaction.nonce),
        "gas": quantity(transaction.gas),
        "value": quantity(transaction.value),
        "input": hex_bytes(transaction.data),
        "gasPrice": quantity(effective_gas_price(transaction, base_fee)),
        "r": quantity(transaction.r),
        "s": quantity(transaction.s),
    }
    if transaction.chain_id is not None:
        result["chainId"] = quantity(transaction.chain_id)
    if type_id == LEGACY_TRANSACTION_TYPE:
        result["v"] = quantity(transaction.v)
        return result
    result["v"] = quantity(transaction.y_parity)
    result["yParity"] = quantity(transaction.y_parity)
    result["accessList"] = [
        {
            "address": hex_address(entry.account),
            "storageKeys": [word(key) for key in entry.storage_keys],
        }
        for entry in transaction.access_list
    ]
    if type_id >= 2:
        result["maxFeePerGas"] = quantity(transaction.max_fee_per_gas)
        result["maxPriorityFeePerGas"] = quantity(transaction.max_priority_fee_per_gas)
    if type_id == SET_CODE_TRANSACTION_TYPE:
        result["authorizationList"] = [
            {
                "chainId": quantity(authorization.chain_id),
                "address": hex_address(authorization.address),
                "nonce": quantity(authorization.nonce),
                "yParity": quantity(authorization.y_parity),
                "r": quantity(authorization.r),
                "s": quantity(authorization.s),
            }
            for authorization in transaction.authorization_list
        ]
    return result


def format_log(record: LogRecord) -> JsonObject:
    return {
        "address": hex_address(record.address),
        "topics": [hex_bytes(topic) for topic in record.topics],
        "data": hex_bytes(record.data),
        "blockNumber": quantity(record.block_number),
        "blockHash": hex_bytes(record.block_hash),
        "blockTimestamp": quantity(record.block_timestamp),
        "transactionHash": hex_bytes(record.tx_hash),
        "transactionIndex": quantity(record.tx_index),
        "logIndex": quantity(record.log_index),
        "removed": False,
    }


def format_receipt(record: TransactionRecord, logs: list[LogRecord]) -> JsonObject:
    return {
        "transactionHash": hex_bytes(record.hash),
        "transactionIndex": quantity(record.tx_index),
        "blockHash": hex_bytes(record.block_hash),
        "blockNumber": quantity(record.block_number),
        "from": hex_address(record.sender),
        "to": hex_address(record.recipient),
        "contractAddress": hex_address(record.contract_address),
        "cumulativeGasUsed": quantity(record.cumulative_gas_used),
        "gasUsed": quantity(record.gas_used),
        "effectiveGasPrice": quantity(record.effective_gas_price),
        "logs": [format_log(log) for log in logs],
        "logsBloom": hex_bytes(record.logs_bloom),
        "status": quantity(record.status),
        "type": quantity(record.type),
    }
