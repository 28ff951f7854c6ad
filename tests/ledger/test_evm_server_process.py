"""The chain server as a separate process: SIGTERM, kill -9 and restart on one file."""

from __future__ import annotations

import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3

from citymesh.ledger.evm_chain import EmbeddedChain

CHAIN_ID = 1337
PREFUND_WEI = 10**24
START_TIMEOUT = 60.0
HTTP_TIMEOUT = 30
URL_PATTERN = re.compile(r"serving chain id \d+ at (http://127\.0\.0\.1:\d+)")


class ServerProcess:
    """``python -m citymesh.ledger.evm_server`` on a free port, its log collected."""

    def __init__(self, state_path: Path, accounts: list[LocalAccount]) -> None:
        command = [
            sys.executable,
            "-m",
            "citymesh.ledger.evm_server",
            "--state",
            str(state_path),
            "--port",
            "0",
        ]
        for account in accounts:
            command += ["--prefund", f"{account.address}={PREFUND_WEI}"]
        environment = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, text=True, env=environment
        )
        self.log: list[str] = []
        lines: queue.Queue[str] = queue.Queue()

        def drain() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line)
                lines.put(line)

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                self.process.kill()
                raise AssertionError("server did not start:\n" + "".join(self.log))
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            match = URL_PATTERN.search(line)
            if match:
                self.url = match.group(1)
                return

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=START_TIMEOUT)


def connect(url: str) -> Web3:
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": HTTP_TIMEOUT}))


def make_accounts(count: int) -> list[LocalAccount]:
    return [
        Account.from_key(keccak(text=f"citymesh process {i}")) for i in range(count)
    ]


def transfer(account: LocalAccount, nonce: int) -> bytes:
    signed = account.sign_transaction(
        {
            "to": "0x" + "33" * 20,
            "value": 1,
            "gas": 21_000,
            "nonce": nonce,
            "chainId": CHAIN_ID,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
        }
    )
    return bytes(signed.raw_transaction)


def test_evm_server_process_sigterm_stops_cleanly(tmp_path: Path) -> None:
    state_path = tmp_path / "chain.sqlite"
    accounts = make_accounts(1)
    server = ServerProcess(state_path, accounts)
    w3 = connect(server.url)
    tx_hash = w3.eth.send_raw_transaction(transfer(accounts[0], 0))

    assert server.stop(signal.SIGTERM) == 0
    log = "".join(server.log)
    assert "stopped serving" in log
    assert "closed chain" in log
    with EmbeddedChain(state_path) as chain:
        assert chain.head_number == 1
        assert chain.receipt(bytes(tx_hash))["status"] == "0x1"


def test_evm_server_process_kill9_keeps_acknowledged(tmp_path: Path) -> None:
    state_path = tmp_path / "chain.sqlite"
    accounts = make_accounts(2)
    acknowledged: dict[str, list[bytes]] = {account.address: [] for account in accounts}

    def send_until_killed(url: str, account: LocalAccount) -> None:
        w3 = connect(url)
        nonce = w3.eth.get_transaction_count(account.address, "pending")
        while True:
            try:
                tx_hash = w3.eth.send_raw_transaction(transfer(account, nonce))
            except requests.exceptions.RequestException:
                return  # the server died under the request
            acknowledged[account.address].append(bytes(tx_hash))
            nonce += 1

    for _ in range(3):
        server = ServerProcess(state_path, accounts)
        senders = [
            threading.Thread(target=send_until_killed, args=(server.url, account))
            for account in accounts
        ]
        for sender in senders:
            sender.start()
        time.sleep(1.0)
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        for sender in senders:
            sender.join(timeout=HTTP_TIMEOUT)

    reader = sqlite3.connect(state_path)
    try:
        assert reader.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        reader.close()

    server = ServerProcess(state_path, accounts)
    try:
        w3 = connect(server.url)
        total = 0
        for account in accounts:
            hashes = acknowledged[account.address]
            assert len(hashes) > 0
            nonce = w3.eth.get_transaction_count(account.address)
            # Each kill may cut off the reply of a transaction that was committed.
            assert len(hashes) <= nonce <= len(hashes) + 3
            total += nonce
            for tx_hash in hashes:
                assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
        assert w3.eth.block_number == total
    finally:
        assert server.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("argument", ["--prefund", "--state"])
def test_evm_server_process_rejects_bad_arguments(
    tmp_path: Path, argument: str
) -> None:
    command = [sys.executable, "-m", "citymesh.ledger.evm_server", "--port", "0"]
    if argument == "--prefund":
        command += ["--state", str(tmp_path / "chain.sqlite"), "--prefund", "0x12=5"]
    else:
        command += ["--state", str(tmp_path)]  # a directory, not a file
    finished = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=START_TIMEOUT
    )
    assert finished.returncode == 2
    assert "chain server failed" in finished.stderr
