"""Throughput of the embedded chain server through web3.py over HTTP.

Starts ``python -m citymesh.ledger.evm_server`` on 127.0.0.1 in a fresh temporary
state file, sends transactions signed in advance with ``eth_sendRawTransaction``
(each call returns once its block is committed) and prints one ``name: value`` line
per figure::

    python -m citymesh.ledger.evm_bench --transactions 500

The client runs in this process and the server in another, so on a 2-core machine
they compete with each other and with anything else running.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3

CHAIN_ID = 1337
PREFUND_WEI = 10**24
START_TIMEOUT = 60.0
HTTP_TIMEOUT = 60
MAX_FEE_PER_GAS = 10**10
PRIORITY_FEE = 10**9
URL_PATTERN = re.compile(r"serving chain id \d+ at (http://127\.0\.0\.1:\d+)")

# A 12-byte contract that logs its calldata with the caller as topic 0 and stores
# the block number in slot 0: CALLDATASIZE PUSH0 PUSH0 CALLDATACOPY CALLER
# CALLDATASIZE PUSH0 LOG1 NUMBER PUSH0 SSTORE STOP, behind a CODECOPY/RETURN
# constructor.
LOGGER_RUNTIME = "365f5f3733365fa1435f5500"
LOGGER_INITCODE = "600c600a5f39600c5ff3" + LOGGER_RUNTIME


def _start_server(state_path: Path, accounts: Sequence[LocalAccount], fsync: bool):
    command = [
        sys.executable,
        "-m",
        "citymesh.ledger.evm_server",
        "--state",
        str(state_path),
        "--port",
        "0",
    ]
    if not fsync:
        command.append("--no-fsync")
    for account in accounts:
        command += ["--prefund", f"{account.address}={PREFUND_WEI}"]
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            match = URL_PATTERN.search(lines.get(timeout=0.5))
        except queue.Empty:
            continue
        if match:
            return process, match.group(1)
    process.kill()
    raise RuntimeError(
        f"chain server did not start within {START_TIMEOUT} s: {' '.join(command)}"
    )


def _sign(account: LocalAccount, nonce: int, **fields: object) -> bytes:
    transaction = {
        "nonce": nonce,
        "chainId": CHAIN_ID,
        "maxFeePerGas": MAX_FEE_PER_GAS,
        "maxPriorityFeePerGas": PRIORITY_FEE,
        "value": 0,
        **fields,
    }
    return bytes(account.sign_transaction(transaction).raw_transaction)


def _rate(count: int, send: Callable[[], None]) -> float:
    started = time.perf_counter()
    send()
    return count / (time.perf_counter() - started)


def _send_all(w3: Web3, raws: Sequence[bytes]) -> None:
    for raw in raws:
        w3.eth.send_raw_transaction(raw)


def run(transactions: int, senders: int, fsync: bool) -> dict[str, float]:
    """Run the workloads on a fresh chain and return the figures by name."""
    accounts = [
        Account.from_key(keccak(text=f"citymesh bench {i}")) for i in range(senders + 1)
    ]
    owner, workers = accounts[0], accounts[1:]
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        state_path = Path(folder) / "chain.sqlite"
        process, url = _start_server(state_path, accounts, fsync)
        try:
            w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": HTTP_TIMEOUT}))
            recipient = "0x" + "22" * 20
            transfers = [
                _sign(owner, nonce, to=recipient, value=1, gas=21_000)
                for nonce in range(transactions)
            ]
            figures["transfer_tx_per_s"] = _rate(
                transactions, lambda: _send_all(w3, transfers)
            )

            nonce = transactions
            deploy = _sign(owner, nonce, data="0x" + LOGGER_INITCODE, gas=100_000)
            receipt = w3.eth.wait_for_transaction_receipt(
                w3.eth.send_raw_transaction(deploy)
            )
            logger_address = receipt["contractAddress"]
            calls = [
                _sign(
                    owner,
                    nonce + 1 + i,
                    to=logger_address,
                    data="0x" + keccak(i.to_bytes(32, "big")).hex(),
                    gas=60_000,
                )
                for i in range(transactions)
            ]
            figures["event_tx_per_s"] = _rate(
                transactions, lambda: _send_all(w3, calls)
            )

            per_worker = max(1, transactions // len(workers))
            batches = [
                [
                    _sign(worker, nonce, to=recipient, value=1, gas=21_000)
                    for nonce in range(per_worker)
                ]
                for worker in workers
            ]

            def send_concurrently() -> None:
                threads = [
                    threading.Thread(
                        target=_send_all,
                        args=(
                            Web3(
                                Web3.HTTPProvider(
                                    url, request_kwargs={"timeout": HTTP_TIMEOUT}
                                )
                            ),
                            batch,
                        ),
                    )
                    for batch in batches
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()

            figures[f"concurrent_{len(workers)}_senders_tx_per_s"] = _rate(
                per_worker * len(workers), send_concurrently
            )

            started = time.perf_counter()
            logs = w3.eth.get_logs({"fromBlock": 0, "address": logger_address})
            figures["get_logs_all_events_s"] = time.perf_counter() - started
            figures["get_logs_all_events_count"] = len(logs)
            started = time.perf_counter()
            w3.eth.get_logs(
                {
                    "fromBlock": 0,
                    "address": logger_address,
                    "topics": ["0x" + bytes(32).hex()],
                }
            )
            figures["get_logs_no_match_s"] = time.perf_counter() - started
            blocks = w3.eth.block_number
        finally:
            process.terminate()
            process.wait(timeout=START_TIMEOUT)
        size = sum(path.stat().st_size for path in Path(folder).iterdir())
        figures["state_bytes_per_tx"] = size / blocks
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m citymesh.ledger.evm_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--transactions", type=int, default=500, help="transactions per workload"
    )
    parser.add_argument(
        "--senders", type=int, default=4, help="client threads in the concurrent run"
    )
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="skip the fsync per block: survives kill -9, not a power loss",
    )
    arguments = parser.parse_args(argv)
    figures = run(arguments.transactions, arguments.senders, not arguments.no_fsync)
    for name, value in figures.items():
        print(f"{name}: {value:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
