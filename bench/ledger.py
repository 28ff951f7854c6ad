"""Benchmark the usage ledger: logging with Merkle anchors against per-event on chain.

Prints one ``name: value`` line per figure:

- ``events_per_s``: events appended durably (one SQLite transaction per
  ``--commit-size`` events, WAL with synchronous=FULL) and anchored on chain in
  Merkle batches of ``--batch-size``, counted from the first append to the last
  anchor receipt. Building the UsageEvent objects is not timed.
- ``ratio_vs_onchain``: ``events_per_s`` over ``onchain_events_per_s``, the rate of
  per-event ``recordUsage`` transactions, each waiting for its receipt, measured in
  the same run on the same chain.
- ``proofs_per_s``: inclusion proofs of anchored entries verified per second
  against the roots read from the chain.

Extra lines: ``append_per_s`` and ``anchor_per_s`` (the two phases of
``events_per_s`` alone), ``single_append_per_s`` (one transaction per event, the
rate a node gets without grouping), ``onchain_events_per_s``, ``audit_events_per_s``
(``verify_node`` over the whole log with its proofs) and the run's parameters.
The chain is the embedded py-evm JSON-RPC server in a subprocess on 127.0.0.1.
Run: ``python bench/ledger.py [--events N]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from eth_account import Account

from citymesh.ledger.anchoring import Anchorer
from citymesh.ledger.audit import verify_node
from citymesh.ledger.chain import ChainClient, deploy
from citymesh.ledger.events import UsageEvent
from citymesh.ledger.log import UsageLog
from citymesh.ledger.proofs import verify_event_proof

# Anvil's first development key, a public test key: never use it elsewhere.
ADMIN_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ETHER = 10**18
SERVER_START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_chain(folder: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    admin = Account.from_key(ADMIN_KEY).address
    log = (folder / "chain.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "citymesh.ledger.evm_server",
            "--state",
            str(folder / "chain.sqlite"),
            "--port",
            str(port),
            "--prefund",
            f"{admin}={10**6 * ETHER}",
            "--log-level",
            "WARNING",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"chain server exited; see {folder / 'chain.log'}")
        try:
            requests.post(
                url,
                json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
                timeout=2,
            )
            return server, url
        except requests.ConnectionError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"chain server did not start within {SERVER_START_TIMEOUT_S} s")


def _events(count: int, start: int = 0) -> list[UsageEvent]:
    return [
        UsageEvent(
            kind="query",
            dataset_id=f"bcn-traffic-{i % 50}",
            provider="barcelona",
            consumer=f"city-{i % 7}",
            purpose="mobility-planning",
            rows=i % 5000,
            bytes=(i % 5000) * 64,
            time=1_700_000_000 + i / 1000,
            detail={"columns": ["hour", "count"]},
        )
        for i in range(start, start + count)
    ]


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def run(events: int, commit_size: int, batch_size: int, onchain: int) -> None:
    with tempfile.TemporaryDirectory(prefix="citymesh-bench-") as tmp:
        folder = Path(tmp)
        server, url = _start_chain(folder)
        try:
            deployment = deploy(url, ADMIN_KEY)
            admin = ChainClient(url, deployment, ADMIN_KEY)
            node = Account.create()
            admin.fund(node.address, 100 * ETHER)
            admin.register_node("bench", node.address, os.urandom(32), "", 1)
            client = ChainClient(url, deployment, node.key.hex())

            log = UsageLog(folder / "usage.db")
            pending = _events(events)
            started = time.perf_counter()
            for offset in range(0, events, commit_size):
                log.append_many(pending[offset : offset + commit_size])
            appended_s = time.perf_counter() - started
            batches = Anchorer(log, client, batch_size=batch_size).anchor_all()
            logged_s = time.perf_counter() - started
            assert sum(b.count for b in batches) == events

            singles = _events(min(2000, events), start=events)
            started = time.perf_counter()
            for event in singles:
                log.append(event)
            single_s = time.perf_counter() - started

            hashes = [entry.event_hash for entry in log.entries(1, onchain)]
            started = time.perf_counter()
            for digest in hashes:
                client.record_usage(digest)
            onchain_s = time.perf_counter() - started

            anchors = client.anchors(client.account)
            entry_hashes = [e.entry_hash for e in log.entries(1, events)]
            proofs = log.proofs(1, events)
            by_start = {a.from_seq: a for a in anchors}
            checks = [
                (entry_hashes[seq - 1], proof, by_start[proof.from_seq])
                for seq, proof in proofs.items()
            ]
            started = time.perf_counter()
            verified = sum(verify_event_proof(h, p, a) for h, p, a in checks)
            proof_s = time.perf_counter() - started
            assert verified == events

            entries = log.entries(1, events)
            started = time.perf_counter()
            verdict = verify_node(entries, anchors, proofs=proofs, to_seq=events)
            audit_s = time.perf_counter() - started
            assert verdict.ok, verdict.reason
        finally:
            server.terminate()
            server.wait(timeout=30)

    events_per_s = _rate(events, logged_s)
    onchain_per_s = _rate(len(hashes), onchain_s)
    print(f"events_per_s: {events_per_s:.0f}")
    print(f"ratio_vs_onchain: {events_per_s / onchain_per_s:.1f}")
    print(f"proofs_per_s: {_rate(verified, proof_s):.0f}")
    print(f"append_per_s: {_rate(events, appended_s):.0f}")
    print(f"anchor_per_s: {_rate(events, logged_s - appended_s):.0f}")
    print(f"single_append_per_s: {_rate(len(singles), single_s):.0f}")
    print(f"onchain_events_per_s: {onchain_per_s:.1f}")
    print(f"audit_events_per_s: {_rate(events, audit_s):.0f}")
    print(f"events: {events}")
    print(f"commit_size: {commit_size}")
    print(f"batch_size: {batch_size}")
    print(f"anchor_transactions: {len(batches)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events to log")
    parser.add_argument(
        "--commit-size", type=int, default=1_000, help="events per SQLite transaction"
    )
    parser.add_argument(
        "--batch-size", type=int, default=10_000, help="events per Merkle anchor"
    )
    parser.add_argument(
        "--onchain", type=int, default=300, help="per-event transactions to time"
    )
    arguments = parser.parse_args()
    run(
        arguments.events, arguments.commit_size, arguments.batch_size, arguments.onchain
    )


if __name__ == "__main__":
    main()
