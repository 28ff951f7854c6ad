"""The embedded chain behind JSON-RPC, driven by web3.py over HTTP on 127.0.0.1."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    Web3RPCError,
)

from citymesh.errors import ChainError, InvalidInput
from citymesh.ledger.evm_chain import CallRequest, EmbeddedChain, ExecutionReverted
from citymesh.ledger.evm_server import ChainServer, parse_prefund

CHAIN_ID = 1337
PREFUND_WEI = 10**24
HTTP_TIMEOUT = 30

# Counter.sol, compiled with solc-js 0.8.37 (solcjs --bin --abi --optimize
# --optimize-runs 200, default EVM version):
#
#   pragma solidity 0.8.37;
#   contract Counter {
#       event Bumped(address indexed by, uint256 indexed count, bytes32 tag);
#       error Refused(uint256 code);
#       uint256 public count;
#       function bump(bytes32 tag) public {
#           require(tag != bytes32(0), "tag must not be zero");
#           count += 1;
#           emit Bumped(msg.sender, count, tag);
#       }
#       function bumpBoth(Counter other, bytes32 tag) external {
#           bump(tag);
#           other.bump(tag);
#       }
#       function refuse(uint256 code) external pure { revert Refused(code); }
#       function revertWithoutReason() external pure { revert(); }
#       function divide(uint256 a, uint256 b) external pure returns (uint256) {
#           return a / b;
#       }
#   }
COUNTER_ABI = [
    {
        "inputs": [{"internalType": "uint256", "name": "code", "type": "uint256"}],
        "name": "Refused",
        "type": "error",
    },
    {
        "anonymous": False,
        "inputs": [
            {
                "indexed": True,
                "internalType": "address",
                "name": "by",
                "type": "address",
            },
            {
                "indexed": True,
                "internalType": "uint256",
                "name": "count",
                "type": "uint256",
            },
            {
                "indexed": False,
                "internalType": "bytes32",
                "name": "tag",
                "type": "bytes32",
            },
        ],
        "name": "Bumped",
        "type": "event",
    },
    {
        "inputs": [{"internalType": "bytes32", "name": "tag", "type": "bytes32"}],
        "name": "bump",
        "outputs": [],
        "stateMutability": "nonpayable",
        "type": "function",
    },
    {
        "inputs": [
            {"internalType": "contract Counter", "name": "other", "type": "address"},
            {"internalType": "bytes32", "name": "tag", "type": "bytes32"},
        ],
        "name": "bumpBoth",
        "outputs": [],
        "stateMutability": "nonpayable",
        "type": "function",
    },
    {
        "inputs": [],
        "name": "count",
        "outputs": [{"internalType": "uint256", "name": "", "type": "uint256"}],
        "stateMutability": "view",
        "type": "function",
    },
    {
        "inputs": [
            {"internalType": "uint256", "name": "a", "type": "uint256"},
            {"internalType": "uint256", "name": "b", "type": "uint256"},
        ],
        "name": "divide",
        "outputs": [{"internalType": "uint256", "name": "", "type": "uint256"}],
        "stateMutability": "pure",
        "type": "function",
    },
    {
        "inputs": [{"internalType": "uint256", "name": "code", "type": "uint256"}],
        "name": "refuse",
        "outputs": [],
        "stateMutability": "pure",
        "type": "function",
    },
    {
        "inputs": [],
        "name": "revertWithoutReason",
        "outputs": [],
        "stateMutability": "pure",
        "type": "function",
    },
]
COUNTER_BYTECODE = (
    "0x6080604052348015600e575f5ffd5b506102de8061001c5f395ff3fe6080604052348015"
    "61000f575f5ffd5b5060043610610060575f3560e01c806306661abd146100645780634167"
    "168d1461007e578063779997c314610087578063863e88851461009a578063a60a07b21461"
    "00ad578063f88e9fbf146100c0575b5f5ffd5b61006c5f5481565b60405190815260200160"
    "405180910390f35b6100855f5ffd5b005b6100856100953660046101fe565b6100d3565b61"
    "00856100a8366004610215565b61016c565b6100856100bb3660046101fe565b6101ce565b"
    "61006c6100ce36600461024a565b6101ea565b8061011c5760405162461bcd60e51b815260"
    "2060048201526014602482015273746167206d757374206e6f74206265207a65726f60601b"
    "60448201526064015b60405180910390fd5b60015f5f82825461012d919061026a565b9091"
    "5550505f5460405182815233907f6ec40496e551c1cef05fe87ff144fec6f6d740690bb62c"
    "122c3d8d955bc060ac9060200160405180910390a350565b610175816100d3565b60405163"
    "779997c360e01b8152600481018290526001600160a01b0383169063779997c3906024015f"
    "604051808303815f87803b1580156101b4575f5ffd5b505af11580156101c6573d5f5f3e3d"
    "5ffd5b505050505050565b60405163590a515160e01b815260048101829052602401610113"
    "565b5f6101f58284610289565b90505b92915050565b5f6020828403121561020e575f5ffd"
    "5b5035919050565b5f5f60408385031215610226575f5ffd5b82356001600160a01b038116"
    "811461023c575f5ffd5b946020939093013593505050565b5f5f6040838503121561025b57"
    "5f5ffd5b50508035926020909101359150565b808201808211156101f857634e487b7160e0"
    "1b5f52601160045260245ffd5b5f826102a357634e487b7160e01b5f52601260045260245f"
    "fd5b50049056fea2646970667358221220c476fe1a9c2f941aae2497ad44e52aaad34eee7f"
    "e7d5ff8485e52e65f7c6ec6d64736f6c63430008250033"
)
BUMPED_TOPIC = keccak(text="Bumped(address,uint256,bytes32)")


def make_accounts(count: int) -> list[LocalAccount]:
    return [
        Account.from_key(keccak(text=f"citymesh test account {i}"))
        for i in range(count)
    ]


def connect(url: str) -> Web3:
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": HTTP_TIMEOUT}))


def transact(w3: Web3, account: LocalAccount, transaction: dict) -> dict:
    """Fill nonce, fees and gas from the node, sign locally, send and wait."""
    transaction = dict(transaction)
    transaction.setdefault("from", account.address)
    transaction.setdefault(
        "nonce", w3.eth.get_transaction_count(account.address, "pending")
    )
    transaction.setdefault("chainId", w3.eth.chain_id)
    if "gas" not in transaction:
        transaction["gas"] = w3.eth.estimate_gas(transaction)
    if "maxFeePerGas" not in transaction and "gasPrice" not in transaction:
        base_fee = w3.eth.get_block("latest")["baseFeePerGas"]
        transaction["maxPriorityFeePerGas"] = w3.eth.max_priority_fee
        transaction["maxFeePerGas"] = 2 * base_fee + transaction["maxPriorityFeePerGas"]
    signed = account.sign_transaction(transaction)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=HTTP_TIMEOUT)


def deploy_counter(w3: Web3, account: LocalAccount):
    factory = w3.eth.contract(abi=COUNTER_ABI, bytecode=COUNTER_BYTECODE)
    transaction = factory.constructor().build_transaction(
        {
            "from": account.address,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        }
    )
    receipt = transact(w3, account, transaction)
    assert receipt["status"] == 1
    return w3.eth.contract(address=receipt["contractAddress"], abi=COUNTER_ABI)


def bump(w3: Web3, account: LocalAccount, counter, tag: bytes) -> dict:
    transaction = counter.functions.bump(tag).build_transaction(
        {
            "from": account.address,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        }
    )
    return transact(w3, account, transaction)


def tag(text: str) -> bytes:
    return text.encode().ljust(32, b"\0")


@pytest.fixture
def accounts() -> list[LocalAccount]:
    return make_accounts(6)


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "chain.sqlite"


@pytest.fixture
def chain(state_path: Path, accounts: list[LocalAccount]):
    prefund = {account.address: PREFUND_WEI for account in accounts}
    with EmbeddedChain(state_path, prefund=prefund, chain_id=CHAIN_ID) as chain:
        yield chain


@pytest.fixture
def server(chain: EmbeddedChain):
    with ChainServer(chain, "127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def w3(server: ChainServer) -> Web3:
    return connect(server.url)


def rpc(url: str, payload: object) -> httpx.Response:
    return httpx.post(url, json=payload, timeout=HTTP_TIMEOUT)


# Node information and accounts


def test_evm_server_node_information(w3: Web3, accounts: list[LocalAccount]) -> None:
    assert w3.eth.chain_id == CHAIN_ID
    assert w3.net.version == str(CHAIN_ID)
    assert w3.client_version.startswith("citymesh-evm/")
    assert w3.eth.block_number == 0
    assert w3.eth.syncing is False
    assert w3.eth.accounts == []
    assert w3.eth.get_balance(accounts[0].address) == PREFUND_WEI
    assert w3.eth.get_transaction_count(accounts[0].address) == 0
    assert w3.eth.max_priority_fee == 10**9
    genesis = w3.eth.get_block(0)
    assert genesis["gasLimit"] == 30_000_000
    assert genesis["baseFeePerGas"] == 10**9
    assert w3.eth.gas_price == 875_000_000 + 10**9  # next base fee plus the tip


def test_evm_server_fee_history(w3: Web3, accounts: list[LocalAccount]) -> None:
    transact(w3, accounts[0], {"to": accounts[1].address, "value": 1})
    history = w3.eth.fee_history(5, "latest", [25, 75])
    assert history["oldestBlock"] == 0
    assert history["baseFeePerGas"] == [10**9, 875_000_000, 765_778_125]
    assert history["gasUsedRatio"] == [0.0, 21_000 / 30_000_000]
    assert history["reward"] == [[0, 0], [10**9, 10**9]]


# Contracts, transactions and receipts


def test_evm_server_deploy_and_transact(w3: Web3, accounts: list[LocalAccount]) -> None:
    owner = accounts[0]
    counter = deploy_counter(w3, owner)
    assert len(w3.eth.get_code(counter.address)) > 0
    assert counter.functions.count().call() == 0

    receipt = bump(w3, owner, counter, tag("first"))

    assert receipt["status"] == 1
    assert receipt["blockNumber"] == 2
    assert receipt["to"] == counter.address
    assert counter.functions.count().call() == 1
    (event,) = counter.events.Bumped().process_receipt(receipt)
    assert event["args"]["by"] == owner.address
    assert event["args"]["count"] == 1
    assert event["args"]["tag"] == tag("first")
    transaction = w3.eth.get_transaction(receipt["transactionHash"])
    assert transaction["from"] == owner.address
    assert transaction["nonce"] == 1
    assert transaction["blockNumber"] == 2


def test_evm_server_simple_transfer_estimate(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    estimate = w3.eth.estimate_gas(
        {"from": accounts[0].address, "to": accounts[1].address, "value": 5}
    )
    assert estimate == 21_000


def test_evm_server_transfer_moves_balance(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    sender, recipient = accounts[0], accounts[1]
    receipt = transact(w3, sender, {"to": recipient.address, "value": 12345})
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w3.eth.get_balance(recipient.address) == PREFUND_WEI + 12345
    assert w3.eth.get_balance(sender.address) == PREFUND_WEI - 12345 - fee
    assert w3.eth.get_balance(sender.address, block_identifier=0) == PREFUND_WEI


def test_evm_server_block_holds_one_transaction(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    receipt = transact(w3, accounts[0], {"to": accounts[1].address, "value": 1})
    block = w3.eth.get_block(receipt["blockNumber"], full_transactions=True)
    assert block["hash"] == receipt["blockHash"]
    assert [tx["hash"] for tx in block["transactions"]] == [receipt["transactionHash"]]
    assert block["transactions"][0]["from"] == accounts[0].address
    assert w3.eth.get_block(receipt["blockHash"])["number"] == receipt["blockNumber"]
    assert w3.eth.get_block_transaction_count(receipt["blockNumber"]) == 1
    block_receipts = w3.eth.get_block_receipts(receipt["blockNumber"])
    assert [r["transactionHash"] for r in block_receipts] == [
        receipt["transactionHash"]
    ]


def test_evm_server_legacy_and_access_list_types(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    sender, recipient = accounts[0], accounts[1]
    legacy = transact(
        w3, sender, {"to": recipient.address, "value": 1, "gasPrice": 10**10}
    )
    access_list = transact(
        w3,
        sender,
        {
            "to": recipient.address,
            "value": 1,
            "gasPrice": 10**10,
            "accessList": [{"address": recipient.address, "storageKeys": []}],
        },
    )
    legacy_tx = w3.eth.get_transaction(legacy["transactionHash"])
    access_list_tx = w3.eth.get_transaction(access_list["transactionHash"])
    assert legacy["type"] == 0
    assert legacy_tx["type"] == 0
    assert legacy_tx["v"] in (CHAIN_ID * 2 + 35, CHAIN_ID * 2 + 36)
    assert legacy["effectiveGasPrice"] == 10**10
    assert access_list["type"] == 1
    assert access_list_tx["accessList"][0]["address"] == recipient.address


def test_evm_server_lookup_methods(
    server: ChainServer, w3: Web3, accounts: list[LocalAccount]
) -> None:
    counter = deploy_counter(w3, accounts[0])
    receipt = bump(w3, accounts[0], counter, tag("lookup"))
    number = hex(receipt["blockNumber"])
    block_hash = "0x" + bytes(receipt["blockHash"]).hex()

    def call(method: str, *params: object) -> object:
        response = rpc(
            server.url,
            {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
        ).json()
        assert "error" not in response, response
        return response["result"]

    by_number = call("eth_getTransactionByBlockNumberAndIndex", number, "0x0")
    by_hash = call("eth_getTransactionByBlockHashAndIndex", block_hash, "0x0")
    assert by_number["hash"] == "0x" + bytes(receipt["transactionHash"]).hex()
    assert by_hash == by_number
    assert call("eth_getTransactionByBlockNumberAndIndex", number, "0x1") is None
    assert call("eth_getBlockTransactionCountByHash", block_hash) == "0x1"
    assert call("eth_getUncleCountByBlockNumber", number) == "0x0"
    assert (
        call("eth_getStorageAt", counter.address, "0x0", "latest")
        == "0x" + (1).to_bytes(32, "big").hex()
    )
    assert call("eth_getStorageAt", counter.address, "0x0", "0x1") == "0x" + "00" * 32
    assert call("web3_sha3", "0x68656c6c6f") == "0x" + keccak(b"hello").hex()
    assert call("net_listening") is True
    assert call("net_peerCount") == "0x0"
    assert (
        call("eth_getBlockByNumber", {"blockHash": block_hash}, False)["number"]
        == number
    )


def test_evm_server_gas_limit_constant(w3: Web3, accounts: list[LocalAccount]) -> None:
    for _ in range(30):
        transact(
            w3, accounts[0], {"to": accounts[1].address, "value": 1, "gas": 21_000}
        )
    limits = {w3.eth.get_block(number)["gasLimit"] for number in range(31)}
    assert limits == {30_000_000}


def test_evm_server_unknown_block_and_transaction(w3: Web3) -> None:
    missing = "0x" + "ab" * 32
    assert (
        w3.provider.make_request("eth_getBlockByNumber", ["0x64", False])["result"]
        is None
    )
    assert (
        w3.provider.make_request("eth_getTransactionReceipt", [missing])["result"]
        is None
    )
    assert (
        w3.provider.make_request("eth_getTransactionByHash", [missing])["result"]
        is None
    )


# Logs


def test_evm_server_logs_filtered_by_address(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    owner = accounts[0]
    first = deploy_counter(w3, owner)
    second = deploy_counter(w3, owner)  # same event signature, other address
    bump(w3, owner, first, tag("a"))
    bump(w3, owner, second, tag("b"))
    bump(w3, owner, first, tag("c"))

    first_logs = first.events.Bumped().get_logs(from_block=0)
    all_logs = w3.eth.get_logs({"fromBlock": 0, "topics": [BUMPED_TOPIC]})

    assert [log["args"]["tag"] for log in first_logs] == [tag("a"), tag("c")]
    assert {log["address"] for log in first_logs} == {first.address}
    assert len(all_logs) == 3
    both = w3.eth.get_logs({"fromBlock": 0, "address": [first.address, second.address]})
    assert len(both) == 3


def test_evm_server_logs_filtered_by_topic(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    counter = deploy_counter(w3, accounts[0])
    bump(w3, accounts[1], counter, tag("one"))
    bump(w3, accounts[2], counter, tag("two"))
    bump(w3, accounts[1], counter, tag("three"))

    by_sender = counter.events.Bumped().get_logs(
        from_block=0, argument_filters={"by": accounts[1].address}
    )
    count_two = w3.eth.get_logs(
        {"fromBlock": 0, "topics": [None, None, (2).to_bytes(32, "big")]}
    )
    either = w3.eth.get_logs(
        {
            "fromBlock": 0,
            "topics": [
                BUMPED_TOPIC,
                [
                    bytes(12) + bytes.fromhex(accounts[2].address[2:]),
                    bytes(12) + bytes.fromhex(accounts[1].address[2:]),
                ],
            ],
        }
    )

    assert [log["args"]["tag"] for log in by_sender] == [tag("one"), tag("three")]
    assert len(count_two) == 1
    assert count_two[0]["blockNumber"] == 3
    assert len(either) == 3


def test_evm_server_logs_by_block_range_and_hash(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    counter = deploy_counter(w3, accounts[0])
    receipts = [bump(w3, accounts[0], counter, tag(str(i))) for i in range(4)]
    ranged = w3.eth.get_logs({"fromBlock": 3, "toBlock": 4, "address": counter.address})
    by_hash = w3.eth.get_logs({"blockHash": receipts[2]["blockHash"]})
    assert [log["blockNumber"] for log in ranged] == [3, 4]
    assert [log["transactionHash"] for log in by_hash] == [
        receipts[2]["transactionHash"]
    ]
    assert by_hash[0]["logIndex"] == 0
    assert w3.eth.get_logs({"fromBlock": 100, "toBlock": "latest"}) == []


def test_evm_server_receipt_holds_logs_of_other_contract(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    owner = accounts[0]
    caller = deploy_counter(w3, owner)
    callee = deploy_counter(w3, owner)
    transaction = caller.functions.bumpBoth(
        callee.address, tag("both")
    ).build_transaction(
        {
            "from": owner.address,
            "nonce": w3.eth.get_transaction_count(owner.address, "pending"),
        }
    )
    receipt = transact(w3, owner, transaction)

    assert receipt["status"] == 1
    assert [log["address"] for log in receipt["logs"]] == [
        caller.address,
        callee.address,
    ]
    assert [log["logIndex"] for log in receipt["logs"]] == [0, 1]
    (callee_event,) = callee.events.Bumped().get_logs(from_block=receipt["blockNumber"])
    assert callee_event["args"]["by"] == caller.address


def test_evm_server_logs_query_uses_index(chain: EmbeddedChain) -> None:
    store = chain._store
    address = bytes(20)
    plans = [
        store.logs_query_plan(0, 10**9, addresses=[address]),
        store.logs_query_plan(0, 10**9, topics=[[BUMPED_TOPIC]]),
        store.logs_query_plan(0, 10**9, topics=[None, [bytes(32)]]),
        store.logs_query_plan(5, 10),
        store.logs_query_plan(0, 10**9, addresses=[address], topics=[[BUMPED_TOPIC]]),
    ]
    assert "USING INDEX logs_address" in plans[0][0]
    assert "USING INDEX logs_topic0" in plans[1][0]
    assert "USING INDEX logs_topic1" in plans[2][0]
    assert "USING PRIMARY KEY (block_number>? AND block_number<?)" in plans[3][0]
    assert "USING INDEX logs_address_topic0" in plans[4][0]
    for plan in plans:
        assert plan[0].startswith("SEARCH logs"), plan


def test_evm_server_logs_result_limit(
    state_path: Path, accounts: list[LocalAccount]
) -> None:
    prefund = {accounts[0].address: PREFUND_WEI}
    with (
        EmbeddedChain(state_path, prefund=prefund, max_log_results=2) as chain,
        ChainServer(chain) as server,
    ):
        w3 = connect(server.url)
        counter = deploy_counter(w3, accounts[0])
        for i in range(3):
            bump(w3, accounts[0], counter, tag(str(i)))
        response = w3.provider.make_request(
            "eth_getLogs", [{"fromBlock": "0x0", "address": counter.address}]
        )
    assert response["error"]["code"] == -32005
    assert "more than 2 results" in response["error"]["message"]


# Reverts


def test_evm_server_revert_reason_in_call(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    counter = deploy_counter(w3, accounts[0])
    with pytest.raises(ContractLogicError) as raised:
        counter.functions.bump(bytes(32)).call({"from": accounts[0].address})
    assert raised.value.message == "execution reverted: tag must not be zero"
    assert raised.value.data.startswith("0x08c379a0")


def test_evm_server_revert_reason_in_estimate(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    counter = deploy_counter(w3, accounts[0])
    with pytest.raises(ContractLogicError) as raised:
        counter.functions.bump(bytes(32)).build_transaction(
            {"from": accounts[0].address}
        )
    assert raised.value.message == "execution reverted: tag must not be zero"


def test_evm_server_revert_geth_error_shape(
    server: ChainServer, w3: Web3, accounts: list[LocalAccount]
) -> None:
    counter = deploy_counter(w3, accounts[0])
    call_data = counter.encode_abi("bump", [bytes(32)])
    response = rpc(
        server.url,
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "eth_call",
            "params": [{"to": counter.address, "data": call_data}, "latest"],
        },
    ).json()
    error = response["error"]
    assert error["code"] == 3
    assert error["message"] == "execution reverted: tag must not be zero"
    assert error["data"].startswith("0x08c379a0")
    assert response["id"] == 7


def test_evm_server_custom_error_panic_and_empty_revert(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    counter = deploy_counter(w3, accounts[0])
    with pytest.raises(ContractCustomError) as custom:
        counter.functions.refuse(42).call()
    assert custom.value.data == (
        "0x"
        + keccak(text="Refused(uint256)")[:4].hex()
        + (42).to_bytes(32, "big").hex()
    )
    with pytest.raises(ContractPanicError) as panic:
        counter.functions.divide(1, 0).call()
    assert "Division by zero" in panic.value.message
    with pytest.raises(ContractLogicError) as empty:
        counter.functions.revertWithoutReason().call()
    assert empty.value.message == "execution reverted"
    assert counter.functions.divide(10, 3).call() == 3


def test_evm_server_mined_revert_has_status_zero(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    counter = deploy_counter(w3, accounts[0])
    transaction = {
        "to": counter.address,
        "data": counter.encode_abi("bump", [bytes(32)]),
        "gas": 100_000,
    }
    receipt = transact(w3, accounts[0], transaction)
    assert receipt["status"] == 0
    assert receipt["logs"] == []
    assert counter.functions.count().call() == 0
    # A client replays the call at the parent block to read the reason.
    with pytest.raises(ContractLogicError, match="tag must not be zero"):
        w3.eth.call(
            {"from": accounts[0].address, **transaction},
            block_identifier=receipt["blockNumber"] - 1,
        )


def test_embedded_chain_call_raises_revert_data(
    chain: EmbeddedChain, w3: Web3, accounts: list[LocalAccount]
) -> None:
    counter = deploy_counter(w3, accounts[0])
    request = CallRequest(
        to=bytes.fromhex(counter.address[2:]),
        data=bytes.fromhex(counter.encode_abi("bump", [bytes(32)])[2:]),
    )
    with pytest.raises(ExecutionReverted) as raised:
        chain.call(request)
    assert raised.value.reason == "tag must not be zero"
    assert raised.value.data[:4] == bytes.fromhex("08c379a0")


# Nonces and concurrent senders


def test_evm_server_pending_transaction_count(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    sender = accounts[0]
    for expected in range(3):
        assert w3.eth.get_transaction_count(sender.address, "pending") == expected
        transact(w3, sender, {"to": accounts[1].address, "value": 1})
    assert w3.eth.get_transaction_count(sender.address, "pending") == 3
    assert w3.eth.get_transaction_count(sender.address, "latest") == 3
    assert w3.eth.get_transaction_count(sender.address, 1) == 1


def test_evm_server_concurrent_senders(
    server: ChainServer, w3: Web3, accounts: list[LocalAccount]
) -> None:
    counter = deploy_counter(w3, accounts[0])
    senders = accounts[1:5]
    per_sender = 8

    def run(account: LocalAccount) -> list[int]:
        client = connect(server.url)
        mine = client.eth.contract(address=counter.address, abi=COUNTER_ABI)
        return [
            bump(client, account, mine, tag(f"{i}{account.address}"[:32]))["status"]
            for i in range(per_sender)
        ]

    with ThreadPoolExecutor(len(senders)) as pool:
        statuses = list(pool.map(run, senders))

    assert statuses == [[1] * per_sender] * len(senders)
    assert counter.functions.count().call() == len(senders) * per_sender
    for account in senders:
        assert w3.eth.get_transaction_count(account.address) == per_sender
    assert w3.eth.block_number == 1 + len(senders) * per_sender


def test_evm_server_shared_account_nonce_allocation(
    server: ChainServer, w3: Web3, accounts: list[LocalAccount]
) -> None:
    # Threads take nonces from one counter but may send them out of order. The node
    # then waits for the missing nonces instead of rejecting an early one.
    sender = accounts[0]
    nonce_lock = threading.Lock()
    next_nonce = [w3.eth.get_transaction_count(sender.address, "pending")]

    def run(_: int) -> list[bytes]:
        client = connect(server.url)
        sent = []
        for _ in range(6):
            with nonce_lock:
                nonce = next_nonce[0]
                next_nonce[0] += 1
            signed = sender.sign_transaction(
                {
                    "to": accounts[1].address,
                    "value": 1,
                    "gas": 21_000,
                    "nonce": nonce,
                    "chainId": CHAIN_ID,
                    "maxFeePerGas": 10**10,
                    "maxPriorityFeePerGas": 10**9,
                }
            )
            tx_hash = client.eth.send_raw_transaction(signed.raw_transaction)
            sent.append(bytes(tx_hash))
        return sent

    with ThreadPoolExecutor(4) as pool:
        sent = [tx_hash for batch in pool.map(run, range(4)) for tx_hash in batch]

    assert len(sent) == 24
    assert w3.eth.get_transaction_count(sender.address) == 24
    assert all(w3.eth.get_transaction_receipt(h)["status"] == 1 for h in sent)


def test_evm_server_early_nonce_waits_for_gap(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    sender = accounts[0]
    base = {
        "to": accounts[1].address,
        "value": 1,
        "gas": 21_000,
        "chainId": CHAIN_ID,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 10**9,
    }
    early = sender.sign_transaction({**base, "nonce": 1})
    result: list[bytes] = []
    thread = threading.Thread(
        target=lambda: result.append(
            bytes(w3.eth.send_raw_transaction(early.raw_transaction))
        )
    )
    thread.start()
    time.sleep(0.3)
    assert w3.eth.block_number == 0  # the early transaction is waiting, not mined
    first = w3.eth.send_raw_transaction(
        sender.sign_transaction({**base, "nonce": 0}).raw_transaction
    )
    thread.join(timeout=HTTP_TIMEOUT)

    assert result == [bytes(early.hash)]
    assert w3.eth.get_transaction_receipt(first)["blockNumber"] == 1
    assert w3.eth.get_transaction_receipt(early.hash)["blockNumber"] == 2


def test_evm_server_nonce_gap_times_out(
    chain: EmbeddedChain, accounts: list[LocalAccount]
) -> None:
    with ChainServer(chain, nonce_wait=0.2) as server:
        w3 = connect(server.url)
        signed = accounts[0].sign_transaction(
            {
                "to": accounts[1].address,
                "value": 1,
                "gas": 21_000,
                "nonce": 5,
                "chainId": CHAIN_ID,
                "gasPrice": 10**10,
            }
        )
        started = time.monotonic()
        with pytest.raises(Web3RPCError) as raised:
            w3.eth.send_raw_transaction(signed.raw_transaction)
        waited = time.monotonic() - started
    assert "nonce too high" in str(raised.value)
    assert "tx: 5 state: 0" in str(raised.value)
    assert waited >= 0.2


# Rejected transactions


def _signed(account: LocalAccount, **fields) -> bytes:
    transaction = {
        "to": "0x" + "22" * 20,
        "value": 1,
        "gas": 21_000,
        "nonce": 0,
        "chainId": CHAIN_ID,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 10**9,
    }
    transaction.update(fields)
    return bytes(account.sign_transaction(transaction).raw_transaction)


def test_evm_server_rejects_invalid_transactions(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    sender = accounts[0]
    transact(w3, sender, {"to": accounts[1].address, "value": 1})
    unfunded = Account.from_key(keccak(text="unfunded"))
    cases = [
        (_signed(sender, nonce=0), "nonce too low"),
        (_signed(sender, nonce=1, chainId=5), "invalid chain id: have 5 want 1337"),
        (_signed(sender, nonce=1, gas=20_000), "intrinsic gas too low"),
        (_signed(sender, nonce=1, gas=40_000_000), "exceeds block gas limit"),
        (
            _signed(sender, nonce=1, maxFeePerGas=1, maxPriorityFeePerGas=1),
            "less than block base fee",
        ),
        (_signed(unfunded), "insufficient funds for gas * price + value"),
        (b"\x02\xc0", "invalid raw transaction"),
    ]
    for raw, message in cases:
        response = w3.provider.make_request(
            "eth_sendRawTransaction", ["0x" + raw.hex()]
        )
        assert response["error"]["code"] == -32000, message
        assert message in response["error"]["message"]
    assert w3.eth.block_number == 1


def test_evm_server_resent_transaction_returns_hash(
    w3: Web3, accounts: list[LocalAccount]
) -> None:
    raw = _signed(accounts[0])
    first = w3.eth.send_raw_transaction(raw)
    again = w3.eth.send_raw_transaction(raw)
    assert first == again
    assert w3.eth.block_number == 1


def test_evm_server_transaction_committed_before_reply(
    w3: Web3, state_path: Path, accounts: list[LocalAccount]
) -> None:
    tx_hash = w3.eth.send_raw_transaction(_signed(accounts[0]))
    reader = sqlite3.connect(state_path)
    try:
        row = reader.execute(
            "SELECT block_number, status FROM transactions WHERE hash = ?",
            (bytes(tx_hash),),
        ).fetchone()
    finally:
        reader.close()
    assert row == (1, 1)


# JSON-RPC envelope


def test_evm_server_batch_request(server: ChainServer) -> None:
    response = rpc(
        server.url,
        [
            {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
            {"jsonrpc": "2.0", "id": 2, "method": "eth_blockNumber", "params": []},
            {"jsonrpc": "2.0", "id": 3, "method": "eth_noSuchMethod", "params": []},
            {"jsonrpc": "2.0", "method": "eth_chainId", "params": []},  # notification
        ],
    )
    assert response.status_code == 200
    answers = response.json()
    assert [answer["id"] for answer in answers] == [1, 2, 3]
    assert answers[0]["result"] == hex(CHAIN_ID)
    assert answers[1]["result"] == "0x0"
    assert answers[2]["error"]["code"] == -32601


def test_evm_server_malformed_requests(server: ChainServer) -> None:
    parse_error = httpx.post(
        server.url,
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=HTTP_TIMEOUT,
    ).json()
    empty_batch = rpc(server.url, []).json()
    bad_params = rpc(
        server.url,
        {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": ["0x12"]},
    ).json()
    too_many = rpc(
        server.url,
        {"jsonrpc": "2.0", "id": 2, "method": "eth_blockNumber", "params": [1]},
    ).json()
    assert parse_error["error"]["code"] == -32700
    assert empty_batch["error"]["code"] == -32600
    assert bad_params["error"]["code"] == -32602
    assert "invalid address '0x12'" in bad_params["error"]["message"]
    assert too_many["error"]["code"] == -32602


def test_evm_server_send_transaction_unsupported(server: ChainServer) -> None:
    response = rpc(
        server.url,
        {"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction", "params": [{}]},
    ).json()
    assert response["error"]["code"] == -32000
    assert "eth_sendRawTransaction" in response["error"]["message"]


# Persistence


def test_evm_server_state_survives_restart(
    state_path: Path, accounts: list[LocalAccount]
) -> None:
    prefund = {account.address: PREFUND_WEI for account in accounts}
    owner = accounts[0]
    with (
        EmbeddedChain(state_path, prefund=prefund) as chain,
        ChainServer(chain) as server,
    ):
        w3 = connect(server.url)
        counter = deploy_counter(w3, owner)
        receipt = bump(w3, owner, counter, tag("before"))
        transact(w3, owner, {"to": accounts[1].address, "value": 777})
        balance = w3.eth.get_balance(owner.address)
        head = w3.eth.get_block("latest")

    with (
        EmbeddedChain(state_path, prefund=prefund) as chain,
        ChainServer(chain) as server,
    ):
        w3 = connect(server.url)
        reopened = w3.eth.contract(address=counter.address, abi=COUNTER_ABI)
        assert w3.eth.block_number == 3
        assert w3.eth.get_block("latest")["hash"] == head["hash"]
        assert w3.eth.get_balance(owner.address) == balance
        assert w3.eth.get_balance(accounts[1].address) == PREFUND_WEI + 777
        assert reopened.functions.count().call() == 1
        assert w3.eth.get_transaction_receipt(receipt["transactionHash"]) == receipt
        (event,) = reopened.events.Bumped().get_logs(from_block=0)
        assert event["args"]["tag"] == tag("before")

        after = bump(w3, owner, reopened, tag("after"))
        assert after["blockNumber"] == 4
        assert reopened.functions.count().call() == 2
        assert w3.eth.get_transaction_count(owner.address) == 4


def test_embedded_chain_state_file_locked(
    chain: EmbeddedChain, state_path: Path
) -> None:
    with pytest.raises(ChainError, match="open in another chain or process"):
        EmbeddedChain(state_path)


def test_embedded_chain_reopen_checks_chain_id(
    state_path: Path, accounts: list[LocalAccount]
) -> None:
    EmbeddedChain(state_path, chain_id=1337).close()
    with pytest.raises(InvalidInput, match="has chain id 1337, not 5"):
        EmbeddedChain(state_path, chain_id=5)
    with pytest.raises(InvalidInput, match="has block gas limit 30000000"):
        EmbeddedChain(state_path, gas_limit=10_000_000)


def test_embedded_chain_rejects_foreign_file(state_path: Path) -> None:
    state_path.write_bytes(b"not a database, just text" * 100)
    with pytest.raises(ChainError, match="is not a chain state file"):
        EmbeddedChain(state_path)


def test_embedded_chain_rejects_bad_prefund(state_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a valid hex address"):
        EmbeddedChain(state_path, prefund={"0x1234": 1})
    with pytest.raises(InvalidInput, match="non-negative integer"):
        EmbeddedChain(state_path, prefund={"0x" + "11" * 20: -1})


def test_evm_server_parse_prefund() -> None:
    address = "0x" + "ab" * 20
    assert parse_prefund([f"{address}=1000"]) == {address: 1000}
    with pytest.raises(InvalidInput, match="0xADDRESS=WEI"):
        parse_prefund([address])
