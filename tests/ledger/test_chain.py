"""ChainClient against real EVM nodes over HTTP on 127.0.0.1.

Every test runs twice: on the embedded py-evm JSON-RPC server and on anvil (Foundry's
EVM, installed from the npm registry by `npm ci` in contracts/). A backend that is not
installed is skipped with the reason.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path

import pytest
import requests
from eth_account import Account
from web3 import HTTPProvider, Web3
from web3.logs import DISCARD

from citymesh.contracts import load_artifact
from citymesh.errors import ChainError, InvalidInput, NotFound
from citymesh.ledger.chain import (
    ANCHORED_TOPIC,
    Anchor,
    ChainClient,
    Deployment,
    NodeRecord,
    deploy,
)
from citymesh.ledger.chain_errors import (
    AccessDenied,
    AnchorOutOfSequence,
    ChainMismatch,
    ChainUnavailable,
    NoSigningKey,
    RevertDecoder,
    RootAlreadyPaid,
    TransactionReverted,
)
from citymesh.ledger.chain_sender import TransactionSender

ROOT = Path(__file__).resolve().parents[2]
CHAIN_ID = 1337
# Anvil's first default development account, which anvil funds itself; the py-evm
# server gets it as a genesis allocation. A public test key: never use it elsewhere.
ADMIN_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ADMIN = Account.from_key(ADMIN_KEY).address
START_TIMEOUT_S = 60
ETHER = 10**18

PY_EVM_SERVER = """
import sys
from pathlib import Path
from citymesh.ledger.evm_server import serve
serve(Path(sys.argv[1]), "127.0.0.1", int(sys.argv[2]), {sys.argv[3]: 10**24}, 1337)
"""

# A contract with no Solidity source: it emits LOG3 with topics taken from the first
# three calldata words and the rest of the calldata as log data, so a test can forge
# any event.
EMITTER_RUNTIME = (
    "604035"  # PUSH1 0x40, CALLDATALOAD: topic 2
    "602035"  # PUSH1 0x20, CALLDATALOAD: topic 1
    "600035"  # PUSH1 0x00, CALLDATALOAD: topic 0
    "36606090"  # CALLDATASIZE, PUSH1 0x60, SWAP1
    "03"  # SUB: length = calldata size - 0x60
    "8060606000"  # DUP1, PUSH1 0x60, PUSH1 0x00
    "37"  # CALLDATACOPY: memory[0:length] = calldata[0x60:]
    "6000a3"  # PUSH1 0x00, LOG3
    "00"  # STOP
)
EMITTER_CREATION = (
    "0x"
    "601880"  # PUSH1 0x18, DUP1: runtime length 24 bytes
    "600b6000"  # PUSH1 0x0b, PUSH1 0x00: runtime starts after these 11 bytes
    "39"  # CODECOPY
    "6000f3"  # PUSH1 0x00, RETURN
) + EMITTER_RUNTIME


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _anvil_binary() -> str | None:
    configured = os.environ.get("CITYMESH_ANVIL")
    if configured:
        return configured
    pattern = str(ROOT / "contracts/node_modules/@foundry-rs/anvil-*/bin/anvil")
    found = sorted(glob.glob(pattern))
    return found[0] if found else shutil.which("anvil")


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    payload = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"chain exited with {process.returncode}: {log.read_text()}")
        try:
            reply = requests.post(url, json=payload, timeout=1)
            if reply.ok and reply.json().get("result") == hex(CHAIN_ID):
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    process.terminate()
    pytest.fail(
        f"chain at {url} not ready after {START_TIMEOUT_S} s: {log.read_text()}"
    )


@pytest.fixture(scope="module", params=["py-evm", "anvil"])
def rpc_url(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    port = _free_port()
    if request.param == "py-evm":
        if find_spec("citymesh.ledger.evm_server") is None:
            pytest.skip("the embedded py-evm server (ledger/evm_server.py) is missing")
        command = [
            sys.executable,
            "-c",
            PY_EVM_SERVER,
            str(folder / "chain.sqlite"),
            str(port),
            ADMIN,
        ]
    else:
        binary = _anvil_binary()
        if binary is None:
            pytest.skip(
                "anvil is not installed: run `npm ci` in contracts/ "
                "(installs @foundry-rs/anvil) or set CITYMESH_ANVIL to its path"
            )
        command = [
            binary,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--chain-id",
            str(CHAIN_ID),
            "--accounts",
            "1",
            "--silent",
        ]
    log = folder / "chain.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture
def deployment(rpc_url) -> Deployment:
    return deploy(rpc_url, ADMIN_KEY)


@pytest.fixture
def admin(rpc_url, deployment) -> ChainClient:
    return ChainClient(rpc_url, deployment, ADMIN_KEY)


def _new_node(admin: ChainClient, city: str, role: int = 1):
    """Create, fund and register a node account; return (account, its client)."""
    account = Account.create()
    admin.fund(account.address, ETHER)
    admin.register_node(
        city, account.address, bytes([len(city)]) * 32, f"http://127.0.0.1/{city}", role
    )
    client = ChainClient(admin.rpc_url, admin.deployment, account.key.hex())
    return account, client


def _w3(url: str) -> Web3:
    return Web3(HTTPProvider(url, request_kwargs={"timeout": 10}))


def _raw_sender(url: str, key: str) -> TransactionSender:
    decoder = RevertDecoder(
        load_artifact(name).abi for name in ("CreditToken", "UsageAnchor")
    )
    return TransactionSender(
        _w3(url), url, Account.from_key(key), CHAIN_ID, decoder, 30
    )


def _root(n: int) -> bytes:
    return n.to_bytes(32, "big")


# -- deployment -----------------------------------------------------------------------


def test_deploy_places_code_at_each_address(rpc_url, deployment):
    w3 = _w3(rpc_url)
    assert deployment.chain_id == CHAIN_ID
    assert deployment.block >= 1
    # The constructor fills each immutable address into a PUSH32 of zeros.
    for name, address, immutable in (
        ("NodeRegistry", deployment.node_registry, None),
        ("UsageAnchor", deployment.usage_anchor, deployment.node_registry),
        ("CreditToken", deployment.credit_token, deployment.usage_anchor),
        ("CodeListRegistry", deployment.code_list_registry, None),
    ):
        expected = load_artifact(name).deployed_bytecode
        if immutable is not None:
            zeros = "7f" + "00" * 32
            assert zeros in expected
            expected = expected.replace(zeros, "7f" + "00" * 12 + immutable[2:].lower())
        code = "0x" + bytes(w3.eth.get_code(address)).hex()
        assert code == expected, name


def test_deployment_json_round_trip(deployment, tmp_path):
    path = tmp_path / "sub" / "deployment.json"
    deployment.save(path)
    assert Deployment.load(path) == deployment
    assert Deployment.from_json(deployment.to_json()) == deployment
    assert json.loads(path.read_text())["usage_anchor"] == deployment.usage_anchor


def test_deployment_from_json_rejects_bad_address(deployment):
    data = json.loads(deployment.to_json())
    data["credit_token"] = "0x1234"
    with pytest.raises(InvalidInput, match="credit_token"):
        Deployment.from_json(json.dumps(data))


def test_deployment_load_missing_raises_not_found(tmp_path):
    with pytest.raises(NotFound, match="deploy the contracts"):
        Deployment.load(tmp_path / "absent.json")


# -- node registry --------------------------------------------------------------------


def test_register_node_reads_back(admin):
    account, _ = _new_node(admin, "lyon", role=2)
    expected = NodeRecord(
        city="lyon",
        account=account.address,
        pubkey=bytes([4]) * 32,
        endpoint="http://127.0.0.1/lyon",
        role=2,
        active=True,
    )
    assert admin.node(account.address) == expected
    assert admin.node_by_city("lyon") == expected
    assert admin.nodes() == [expected]


def test_register_node_by_non_admin_raises_access_denied(admin):
    _, outsider = _new_node(admin, "porto")
    with pytest.raises(AccessDenied) as caught:
        outsider.register_node("oslo", Account.create().address, b"\x01" * 32, "e", 1)
    assert caught.value.error == "AccessControlUnauthorizedAccount"
    assert caught.value.arguments["neededRole"] == "DEFAULT_ADMIN_ROLE"
    assert caught.value.arguments["account"] == outsider.account
    assert "DEFAULT_ADMIN_ROLE" in str(caught.value)
    assert caught.value.tx_hash is None


def test_register_node_twice_reverts(admin):
    account, _ = _new_node(admin, "graz")
    with pytest.raises(TransactionReverted) as caught:
        admin.register_node("linz", account.address, b"\x01" * 32, "e", 1)
    assert caught.value.error == "AccountAlreadyRegistered"


def test_register_node_taken_city_reverts(admin):
    holder, _ = _new_node(admin, "gent")
    with pytest.raises(TransactionReverted) as caught:
        admin.register_node("gent", Account.create().address, b"\x01" * 32, "e", 1)
    assert caught.value.error == "CityAlreadyRegistered"
    assert caught.value.arguments["account"] == holder.address


def test_register_node_revoked_city_reusable(admin):
    old, _ = _new_node(admin, "bern")
    admin.revoke_node(old.address)
    new, _ = _new_node(admin, "bern")
    assert admin.node_by_city("bern").account == new.address
    assert admin.node(old.address).active is False
    assert [n.account for n in admin.nodes()] == [old.address, new.address]


def test_register_node_invalid_inputs_raise_before_sending(admin):
    address = Account.create().address
    with pytest.raises(InvalidInput, match="32 bytes"):
        admin.register_node("kiel", address, b"\x01" * 31, "e", 1)
    with pytest.raises(InvalidInput, match="role"):
        admin.register_node("kiel", address, b"\x01" * 32, "e", 4)
    with pytest.raises(InvalidInput, match="address"):
        admin.register_node("kiel", "0xnot-an-address", b"\x01" * 32, "e", 1)
    with pytest.raises(NotFound):
        admin.node(address)


def test_node_unknown_raises_not_found(admin):
    with pytest.raises(NotFound, match="no node is registered"):
        admin.node(Account.create().address)
    with pytest.raises(NotFound, match="'atlantis'"):
        admin.node_by_city("atlantis")


def test_revoke_node_twice_reverts(admin):
    account, _ = _new_node(admin, "bonn")
    admin.revoke_node(account.address)
    with pytest.raises(TransactionReverted) as caught:
        admin.revoke_node(account.address)
    assert caught.value.error == "NodeAlreadyRevoked"


# -- usage anchors --------------------------------------------------------------------


def test_anchor_reads_back_from_events(admin):
    account, node = _new_node(admin, "turin")
    first = node.anchor(_root(1), 1, 10, 10)
    second = node.anchor(_root(2), 11, 11, 1)

    anchors = admin.anchors(account.address)

    assert [(a.root, a.from_seq, a.to_seq, a.count) for a in anchors] == [
        (_root(1), 1, 10, 10),
        (_root(2), 11, 11, 1),
    ]
    assert [a.tx for a in anchors] == [first, second]
    assert all(a.node == account.address for a in anchors)
    assert anchors[0].block < anchors[1].block
    assert admin.last_anchored_seq(account.address) == 11
    assert node.anchors_in_receipt(second) == [anchors[1]]


def test_anchors_only_of_requested_node(admin):
    a_account, a_node = _new_node(admin, "riga")
    b_account, b_node = _new_node(admin, "kaunas")
    a_node.anchor(_root(10), 1, 5, 5)
    b_node.anchor(_root(11), 1, 3, 3)
    assert [x.root for x in admin.anchors(a_account.address)] == [_root(10)]
    assert [x.root for x in admin.anchors(b_account.address)] == [_root(11)]
    assert admin.anchors(Account.create().address) == []


def test_anchor_gap_reverts(admin):
    account, node = _new_node(admin, "malmo")
    node.anchor(_root(20), 1, 4, 4)
    with pytest.raises(AnchorOutOfSequence) as caught:
        node.anchor(_root(21), 6, 9, 4)
    assert caught.value.arguments == {
        "node": account.address,
        "expectedFromSeq": 5,
        "fromSeq": 6,
    }
    assert "fromSeq=5" in str(caught.value)
    assert admin.last_anchored_seq(account.address) == 4


def test_anchor_overlap_reverts(admin):
    account, node = _new_node(admin, "aarhus")
    node.anchor(_root(30), 1, 4, 4)
    with pytest.raises(AnchorOutOfSequence) as caught:
        node.anchor(_root(31), 4, 6, 3)
    assert caught.value.arguments["expectedFromSeq"] == 5
    assert len(admin.anchors(account.address)) == 1


def test_anchor_first_must_start_at_one(admin):
    _, node = _new_node(admin, "cork")
    with pytest.raises(AnchorOutOfSequence) as caught:
        node.anchor(_root(40), 2, 3, 2)
    assert caught.value.arguments["expectedFromSeq"] == 1


def test_anchor_count_mismatch_reverts(admin):
    _, node = _new_node(admin, "split")
    with pytest.raises(TransactionReverted) as caught:
        node.anchor(_root(50), 1, 10, 9)
    assert caught.value.error == "CountMismatch"
    assert caught.value.arguments == {"count": 9, "expected": 10}


def test_anchor_same_root_twice_reverts(admin):
    account, node = _new_node(admin, "brno")
    node.anchor(_root(60), 1, 1, 1)
    with pytest.raises(TransactionReverted) as caught:
        node.anchor(_root(60), 2, 2, 1)
    assert caught.value.error == "RootAlreadyAnchored"
    assert caught.value.arguments["node"] == account.address


def test_anchor_by_revoked_node_rejected(admin):
    account, node = _new_node(admin, "nice")
    node.anchor(_root(70), 1, 2, 2)
    admin.revoke_node(account.address)
    with pytest.raises(AccessDenied) as caught:
        node.anchor(_root(71), 3, 4, 2)
    assert caught.value.error == "NodeNotActive"
    assert caught.value.arguments == {"node": account.address}
    with pytest.raises(AccessDenied):
        node.record_usage(_root(72))
    assert admin.last_anchored_seq(account.address) == 2


def test_anchor_by_unregistered_account_rejected(admin):
    stranger = Account.create()
    admin.fund(stranger.address, ETHER)
    client = ChainClient(admin.rpc_url, admin.deployment, stranger.key.hex())
    with pytest.raises(AccessDenied, match="NodeNotActive"):
        client.anchor(_root(80), 1, 1, 1)


def test_anchor_revert_on_chain_keeps_reason(admin, rpc_url):
    account, node = _new_node(admin, "lund")
    node.anchor(_root(85), 1, 3, 3)
    anchor = _w3(rpc_url).eth.contract(
        address=admin.deployment.usage_anchor, abi=load_artifact("UsageAnchor").abi
    )
    data = anchor.encode_abi("anchor", args=[_root(86), 7, 9, 3])
    sender = _raw_sender(rpc_url, account.key.hex())

    # A fixed gas limit skips estimation, so the transaction is mined and fails.
    with pytest.raises(AnchorOutOfSequence) as caught:
        sender.send("UsageAnchor.anchor", anchor.address, data, gas=200_000)

    assert caught.value.tx_hash is not None
    assert caught.value.arguments["expectedFromSeq"] == 4
    receipt = _w3(rpc_url).eth.get_transaction_receipt(caught.value.tx_hash)
    assert receipt["status"] == 0
    assert admin.last_anchored_seq(account.address) == 3


def test_send_out_of_gas_named(admin, rpc_url):
    account, _ = _new_node(admin, "visby")
    anchor = _w3(rpc_url).eth.contract(
        address=admin.deployment.usage_anchor, abi=load_artifact("UsageAnchor").abi
    )
    data = anchor.encode_abi("anchor", args=[_root(87), 1, 3, 3])
    sender = _raw_sender(rpc_url, account.key.hex())

    # 25,000 gas pays for the calldata but not for the contract's storage writes.
    with pytest.raises(TransactionReverted) as caught:
        sender.send("UsageAnchor.anchor", anchor.address, data, gas=25_000)

    assert caught.value.error == "OutOfGas"
    assert caught.value.arguments == {"gas": 25_000}
    assert admin.last_anchored_seq(account.address) == 0


def test_record_usage_emits_event(admin, rpc_url):
    _, node = _new_node(admin, "pisa")
    tx = node.record_usage(_root(90))
    receipt = _w3(rpc_url).eth.get_transaction_receipt(tx)
    topic = Web3.keccak(text="UsageRecorded(address,bytes32,uint64)")
    logs = [log for log in receipt["logs"] if log["topics"][0] == topic]
    assert len(logs) == 1
    assert logs[0]["address"] == admin.deployment.usage_anchor
    assert bytes(logs[0]["topics"][2]) == _root(90)
    assert int.from_bytes(bytes(logs[0]["data"]), "big") == 1


def test_foreign_contract_same_event_ignored(admin, rpc_url):
    account, node = _new_node(admin, "bari")
    node.anchor(_root(100), 1, 5, 5)
    # Forge an Anchored event for the same node from another contract.
    emitter = _raw_sender(rpc_url, ADMIN_KEY)
    created = emitter.send("emitter deployment", None, EMITTER_CREATION)
    forged_data = (
        ANCHORED_TOPIC
        + bytes(12)
        + bytes.fromhex(account.address[2:])
        + _root(101)
        + (6).to_bytes(32, "big")
        + (9).to_bytes(32, "big")
        + (4).to_bytes(32, "big")
    )
    forged = emitter.send("forged Anchored", created["contractAddress"], forged_data)
    forged_tx = "0x" + bytes(forged["transactionHash"]).hex()

    # The forged log is on chain under the same topics.
    logs = _w3(rpc_url).eth.get_logs(
        {
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": ["0x" + ANCHORED_TOPIC.hex()],
        }
    )
    assert forged_tx in ["0x" + bytes(log["transactionHash"]).hex() for log in logs]

    anchors = admin.anchors(account.address)
    assert [(a.root, a.from_seq, a.to_seq) for a in anchors] == [(_root(100), 1, 5)]
    assert admin.anchors_in_receipt(forged_tx) == []
    assert admin.last_anchored_seq(account.address) == 5


# -- credits --------------------------------------------------------------------------


def test_settle_mints_credits(admin, rpc_url):
    a_account, a_node = _new_node(admin, "siena")
    b_account, _ = _new_node(admin, "parma")
    a_node.anchor(_root(200), 1, 3, 3)
    a_node.anchor(_root(201), 4, 6, 3)
    admin.grant_settler(admin.account)

    tx = admin.settle(
        7,
        [_root(200), _root(201)],
        [a_account.address, b_account.address],
        [300, 45],
        b"epoch 7",
    )

    assert admin.balance_of(a_account.address) == 300
    assert admin.balance_of(b_account.address) == 45
    assert admin.total_supply() == 345
    token = _w3(rpc_url).eth.contract(
        address=admin.deployment.credit_token, abi=load_artifact("CreditToken").abi
    )
    receipt = _w3(rpc_url).eth.get_transaction_receipt(tx)
    (settled,) = token.events.Settled().process_receipt(receipt, errors=DISCARD)
    assert settled["args"]["epoch"] == 7
    assert settled["args"]["total"] == 345
    assert settled["args"]["memo"] == b"epoch 7"
    assert list(settled["args"]["roots"]) == [_root(200), _root(201)]


def test_settle_same_root_twice_reverts(admin):
    account, node = _new_node(admin, "ulm")
    node.anchor(_root(210), 1, 1, 1)
    node.anchor(_root(211), 2, 2, 1)
    admin.grant_settler(admin.account)
    admin.settle(1, [_root(210)], [account.address], [10], b"")

    with pytest.raises(RootAlreadyPaid) as caught:
        admin.settle(2, [_root(211), _root(210)], [account.address], [10], b"")

    assert caught.value.arguments["epoch"] == 1
    assert caught.value.arguments["root"] == "0x" + _root(210).hex()
    assert admin.total_supply() == 10
    with pytest.raises(RootAlreadyPaid):
        admin.settle(3, [_root(211), _root(211)], [account.address], [10], b"")


def test_settle_without_role_raises_access_denied(admin):
    account, node = _new_node(admin, "ghent")
    node.anchor(_root(220), 1, 1, 1)
    with pytest.raises(AccessDenied) as caught:
        admin.settle(1, [_root(220)], [account.address], [10], b"")
    assert caught.value.arguments["neededRole"] == "SETTLER_ROLE"
    with pytest.raises(AccessDenied):
        node.settle(1, [_root(220)], [account.address], [10], b"")


def test_settle_unanchored_root_reverts(admin):
    account, _ = _new_node(admin, "gouda")
    admin.grant_settler(admin.account)
    with pytest.raises(TransactionReverted) as caught:
        admin.settle(1, [_root(230)], [account.address], [10], b"")
    assert caught.value.error == "RootNotAnchored"


def test_settle_invalid_inputs_raise_before_sending(admin):
    address = Account.create().address
    with pytest.raises(InvalidInput, match="at least one"):
        admin.settle(1, [], [address], [1], b"")
    with pytest.raises(InvalidInput, match="same length"):
        admin.settle(1, [_root(1)], [address], [1, 2], b"")
    with pytest.raises(InvalidInput, match="amounts"):
        admin.settle(1, [_root(1)], [address], [-1], b"")


def test_credits_not_transferable_by_holder(admin, rpc_url):
    account, node = _new_node(admin, "zug")
    node.anchor(_root(240), 1, 1, 1)
    admin.grant_settler(admin.account)
    admin.settle(1, [_root(240)], [account.address], [50], b"")
    token = _w3(rpc_url).eth.contract(
        address=admin.deployment.credit_token, abi=load_artifact("CreditToken").abi
    )
    data = token.encode_abi("transfer", args=[ADMIN, 5])
    holder = _raw_sender(rpc_url, account.key.hex())

    with pytest.raises(AccessDenied) as caught:
        holder.send("CreditToken.transfer", admin.deployment.credit_token, data)

    assert caught.value.error == "CreditsNotTransferable"
    assert admin.balance_of(account.address) == 50


# -- code list ------------------------------------------------------------------------


def test_code_list_set_and_read(admin):
    with pytest.raises(NotFound, match="set_code_list"):
        admin.code_list()
    admin.set_code_list("2026.1", b"\x11" * 32)
    admin.set_code_list("2026.2", b"\x22" * 32)
    assert admin.code_list() == ("2026.2", b"\x22" * 32)
    admin.set_code_list("2026.1", b"\x11" * 32)
    assert admin.code_list() == ("2026.1", b"\x11" * 32)


def test_code_list_version_reuse_reverts(admin):
    admin.set_code_list("2026.1", b"\x11" * 32)
    with pytest.raises(TransactionReverted) as caught:
        admin.set_code_list("2026.1", b"\x33" * 32)
    assert caught.value.error == "VersionReused"
    assert caught.value.arguments["recordedDigest"] == "0x" + "11" * 32
    assert admin.code_list() == ("2026.1", b"\x11" * 32)


def test_code_list_by_non_admin_raises_access_denied(admin):
    _, node = _new_node(admin, "leeds")
    with pytest.raises(AccessDenied):
        node.set_code_list("2026.9", b"\x44" * 32)


# -- clients and transport ------------------------------------------------------------


def test_read_only_client_send_raises_no_signing_key(rpc_url, deployment):
    reader = ChainClient(rpc_url, deployment)
    assert reader.account is None
    assert reader.total_supply() == 0
    with pytest.raises(NoSigningKey, match="private_key"):
        reader.anchor(_root(1), 1, 1, 1)


def test_wrong_chain_id_raises_chain_mismatch(rpc_url, deployment):
    other = Deployment(**{**json.loads(deployment.to_json()), "chain_id": 99})
    with pytest.raises(ChainMismatch, match="99"):
        ChainClient(rpc_url, other).total_supply()


def test_unreachable_chain_raises_chain_unavailable(deployment):
    url = f"http://127.0.0.1:{_free_port()}"
    client = ChainClient(url, deployment, ADMIN_KEY, timeout=2)
    with pytest.raises(ChainUnavailable, match="unreachable"):
        client.last_anchored_seq(ADMIN)
    with pytest.raises(ChainUnavailable):
        client.anchor(_root(1), 1, 1, 1)


def test_invalid_private_key_rejected_without_echo(deployment):
    with pytest.raises(InvalidInput) as caught:
        ChainClient("http://127.0.0.1:1", deployment, "0x1234abcd")
    assert "1234abcd" not in str(caught.value)


def test_non_http_url_rejected(deployment):
    with pytest.raises(InvalidInput, match="http"):
        ChainClient("ws://127.0.0.1:8546", deployment)


def test_chain_error_base_class(admin):
    _, node = _new_node(admin, "hull")
    with pytest.raises(ChainError):
        node.anchor(_root(300), 5, 5, 1)


def test_concurrent_senders_no_nonce_clash(admin, rpc_url):
    threads_count, per_thread = 4, 6
    w3 = _w3(rpc_url)
    start_nonce = w3.eth.get_transaction_count(ADMIN)
    recipients = [Account.create().address for _ in range(threads_count)]
    shared = ChainClient(rpc_url, admin.deployment, ADMIN_KEY)

    def send(index: int) -> list[str]:
        # Half the threads share one client; the others each build their own.
        client = (
            shared if index % 2 else ChainClient(rpc_url, admin.deployment, ADMIN_KEY)
        )
        return [client.fund(recipients[index], 1000) for _ in range(per_thread)]

    with ThreadPoolExecutor(max_workers=threads_count) as pool:
        futures = [pool.submit(send, i) for i in range(threads_count)]
        hashes = [h for future in futures for h in future.result(timeout=120)]

    total = threads_count * per_thread
    assert len(set(hashes)) == total
    nonces = sorted(w3.eth.get_transaction(h)["nonce"] for h in hashes)
    assert nonces == list(range(start_nonce, start_nonce + total))
    balances = [w3.eth.get_balance(r) for r in recipients]
    assert balances == [1000 * per_thread] * threads_count


def test_concurrent_nodes_anchor_in_parallel(admin):
    nodes = [_new_node(admin, f"city{i}") for i in range(3)]

    def anchor_batches(node: ChainClient, base: int) -> None:
        for batch in range(4):
            node.anchor(_root(base + batch), batch * 10 + 1, batch * 10 + 10, 10)

    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = [
            pool.submit(anchor_batches, client, 1000 * (i + 1))
            for i, (_, client) in enumerate(nodes)
        ]
        for future in futures:
            future.result(timeout=120)

    for account, _ in nodes:
        assert admin.last_anchored_seq(account.address) == 40
        assert [a.from_seq for a in admin.anchors(account.address)] == [1, 11, 21, 31]


def test_anchor_dataclass_fields(admin):
    account, node = _new_node(admin, "oulu")
    tx = node.anchor(_root(400), 1, 2, 2)
    (anchor,) = admin.anchors(account.address)
    assert isinstance(anchor, Anchor)
    assert anchor.tx == tx
    assert anchor.count == 2


def test_deployment_without_code_raises_chain_mismatch(rpc_url, deployment):
    empty = Account.create().address
    other = Deployment(**{**json.loads(deployment.to_json()), "usage_anchor": empty})
    with pytest.raises(ChainMismatch, match="no contract code"):
        ChainClient(rpc_url, other, ADMIN_KEY).anchor(_root(1), 1, 1, 1)
