"""Anchoring a usage log over JSON-RPC on 127.0.0.1, on py-evm and on anvil."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
from eth_account import Account

from citymesh.ledger.anchoring import Anchorer, AnchorMismatch
from citymesh.ledger.audit import verify_node, verify_segment
from citymesh.ledger.chain import ChainClient, deploy
from citymesh.ledger.chain_errors import AccessDenied
from citymesh.ledger.events import UsageEvent
from citymesh.ledger.evm_chain import EmbeddedChain
from citymesh.ledger.evm_server import ChainServer
from citymesh.ledger.log import LogIntegrityError, UsageLog
from citymesh.ledger.merkle import merkle_root

# Anvil's first development key, a public test key: never use it elsewhere.
ADMIN_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ETHER = 10**18


@pytest.fixture(scope="module", params=["py-evm", "anvil"])
def chain(request, tmp_path_factory):
    """The contracts on the embedded py-evm chain, or on anvil, reached by URL only."""
    if request.param == "anvil":
        url = request.getfixturevalue("anvil_url")
        yield SimpleNamespace(url=url), deploy(url, ADMIN_KEY)
        return
    folder = tmp_path_factory.mktemp("chain")
    admin = Account.from_key(ADMIN_KEY).address
    embedded = EmbeddedChain(folder / "chain.sqlite", prefund={admin: 10**6 * ETHER})
    server = ChainServer(embedded)
    server.start()
    deployment = deploy(server.url, ADMIN_KEY)
    yield server, deployment
    server.stop()
    embedded.close()


def _register(chain, city):
    """Register a fresh node account and return a client that signs with its key."""
    server, deployment = chain
    admin = ChainClient(server.url, deployment, ADMIN_KEY)
    node = Account.create()
    admin.fund(node.address, 10 * ETHER)
    admin.register_node(city, node.address, os.urandom(32), "http://127.0.0.1:1", 1)
    return ChainClient(server.url, deployment, node.key.hex())


def _events(count, start=0):
    return [
        UsageEvent(
            "query",
            "bcn-traffic",
            "barcelona",
            "madrid",
            "planning",
            rows=start + i,
            time=1_700_000_000 + start + i,
        )
        for i in range(count)
    ]


def test_anchoring_batches_by_count(chain, tmp_path):
    client = _register(chain, "anchor-count")
    log = UsageLog(tmp_path / "usage.db")
    log.append_many(_events(25))
    anchorer = Anchorer(log, client, batch_size=10)
    batches = anchorer.anchor_all()
    assert [(b.from_seq, b.to_seq) for b in batches] == [(1, 10), (11, 20), (21, 25)]
    assert all(b.state == "anchored" for b in batches)
    on_chain = client.anchors(client.account)
    assert [(a.from_seq, a.to_seq, a.root) for a in on_chain] == [
        (b.from_seq, b.to_seq, b.root) for b in batches
    ]
    assert client.last_anchored_seq(client.account) == 25
    verdict = verify_node(log.entries(), on_chain)
    assert verdict.ok, verdict.reason
    assert verdict.anchored == 25
    assert anchorer.anchor_pending() is None


def test_anchoring_due_by_count_or_age(chain, tmp_path):
    client = _register(chain, "anchor-due")
    log = UsageLog(tmp_path / "usage.db")
    now = [1_700_000_010.0]
    anchorer = Anchorer(log, client, batch_size=5, max_delay_s=60, clock=lambda: now[0])
    assert not anchorer.due()
    log.append_many(_events(3))  # event times 1_700_000_000..002
    assert not anchorer.due()
    now[0] = 1_700_000_060.0  # the oldest waiting event is 60 s old
    assert anchorer.due()
    now[0] = 1_700_000_010.0
    log.append_many(_events(2, start=3))
    assert anchorer.due()  # 5 waiting
    assert anchorer.anchor_pending().count == 5
    assert not anchorer.due()
    assert anchorer.waiting() == 0


def test_anchoring_chain_down_then_back_in_order(tmp_path):
    admin = Account.from_key(ADMIN_KEY).address
    embedded = EmbeddedChain(tmp_path / "chain.sqlite", prefund={admin: 10**6 * ETHER})
    server = ChainServer(embedded)
    server.start()
    try:
        client = _register((server, deploy(server.url, ADMIN_KEY)), "anchor-outage")
        log = UsageLog(tmp_path / "usage.db")
        anchorer = Anchorer(log, client, batch_size=4)
        log.append_many(_events(6))
        assert anchorer.anchor_pending().to_seq == 4
        server.stop()
        for round_number in range(3):
            log.append_many(_events(3, start=6 + 3 * round_number))
            assert anchorer.anchor_pending() is None
        # A batch recorded as pending just before the outage waits too.
        leaves = log.verified_entry_hashes(5, 7)
        log.add_batch(5, 7, merkle_root(leaves), leaves)
        assert anchorer.anchor_pending() is None
        assert log.batches("pending")[0].from_seq == 5
        server = ChainServer(embedded, port=server.port)
        server.start()
        batches = anchorer.anchor_all()
        assert [(b.from_seq, b.to_seq) for b in batches] == [(5, 7), (8, 11), (12, 15)]
        on_chain = client.anchors(client.account)
        assert [a.from_seq for a in on_chain] == [1, 5, 8, 12]
        assert verify_node(log.entries(), on_chain).ok
    finally:
        server.stop()
        embedded.close()


def test_anchoring_run_loop_anchors_until_stopped(chain, tmp_path):
    client = _register(chain, "anchor-loop")
    log = UsageLog(tmp_path / "usage.db")
    anchorer = Anchorer(log, client, batch_size=5, max_delay_s=3600)
    stop = threading.Event()
    loop = threading.Thread(target=anchorer.run, args=(stop, 0.05))
    loop.start()
    try:
        now = time.time()
        log.append_many([replace(event, time=now) for event in _events(12)])
        deadline = time.monotonic() + 30
        while client.last_anchored_seq(client.account) < 10:
            assert time.monotonic() < deadline, "the loop anchored nothing in 30 s"
            time.sleep(0.05)
    finally:
        stop.set()
        loop.join(timeout=30)
    assert not loop.is_alive()
    assert [(b.from_seq, b.to_seq) for b in log.batches()] == [(1, 5), (6, 10)]
    assert anchorer.waiting() == 2  # fewer than batch_size and younger than an hour


def test_anchoring_adopts_batch_sent_before_crash(chain, tmp_path):
    client = _register(chain, "anchor-adopt")
    log = UsageLog(tmp_path / "usage.db")
    log.append_many(_events(8))
    # The steps of an anchorer that died after sending, before recording the receipt.
    leaves = log.verified_entry_hashes(1, 8)
    batch = log.add_batch(1, 8, merkle_root(leaves), leaves)
    tx = client.anchor(batch.root, 1, 8, 8)
    restarted = Anchorer(log, client)
    assert restarted.anchor_pending() is None  # nothing new to anchor
    adopted = log.batches()[0]
    assert adopted.state == "anchored"
    assert adopted.tx == tx
    assert client.last_anchored_seq(client.account) == 8


def test_anchoring_refuses_root_of_changed_log(chain, tmp_path):
    client = _register(chain, "anchor-tamper")
    log = UsageLog(tmp_path / "usage.db")
    log.append_many(_events(6))
    leaves = log.verified_entry_hashes(1, 6)
    log.add_batch(1, 6, merkle_root(leaves), leaves)
    conn = sqlite3.connect(log.path)
    conn.execute("DROP TRIGGER entries_append_only_update")
    conn.execute(
        "UPDATE entries SET event = replace(event, 'madrid', 'sevill') WHERE seq = 3"
    )
    conn.commit()
    conn.close()
    with pytest.raises(LogIntegrityError) as caught:
        Anchorer(log, client).anchor_pending()
    assert caught.value.seq == 3
    assert client.last_anchored_seq(client.account) == 0


def test_anchoring_mismatch_with_foreign_log(chain, tmp_path):
    client = _register(chain, "anchor-foreign")
    first = UsageLog(tmp_path / "first.db")
    first.append_many(_events(3))
    Anchorer(first, client).anchor_pending()
    other = UsageLog(tmp_path / "other.db")
    other.append_many(_events(3))
    with pytest.raises(AnchorMismatch, match="do not belong together"):
        Anchorer(other, client).anchor_pending()


def test_anchoring_revoked_node_rejected(chain, tmp_path):
    server, deployment = chain
    client = _register(chain, "anchor-revoked")
    log = UsageLog(tmp_path / "usage.db")
    log.append_many(_events(4))
    Anchorer(log, client).anchor_pending()
    ChainClient(server.url, deployment, ADMIN_KEY).revoke_node(client.account)
    log.append_many(_events(2, start=4))
    with pytest.raises(AccessDenied):
        Anchorer(log, client).anchor_pending()
    assert log.batches("pending")[0].from_seq == 5
    assert client.last_anchored_seq(client.account) == 4


def test_anchoring_export_verifies_against_chain(chain, tmp_path):
    client = _register(chain, "anchor-export")
    log = UsageLog(tmp_path / "usage.db")
    log.append_many(_events(30))
    Anchorer(log, client, batch_size=12).anchor_all()
    on_chain = client.anchors(client.account)
    path = tmp_path / "segment.jsonl"
    log.export(path, 5, 30, anchors=on_chain)
    assert verify_segment(path, client.anchors(client.account)).ok
    moved = [replace(on_chain[0], tx="0x" + "00" * 32), *on_chain[1:]]
    assert not verify_segment(path, moved).ok


WORKER = textwrap.dedent(
    """
    import random, sys
    from citymesh.ledger.anchoring import Anchorer
    from citymesh.ledger.chain import ChainClient, Deployment
    from citymesh.ledger.events import UsageEvent
    from citymesh.ledger.log import UsageLog

    log_path, url, deployment_json, key, seed = sys.argv[1:]
    client = ChainClient(url, Deployment.from_json(deployment_json), key)
    log = UsageLog(log_path)
    anchorer = Anchorer(log, client)
    rng = random.Random(int(seed))
    while True:
        events = [
            UsageEvent("query", "ds", "bcn", "mad", "planning", rows=i, time=1.0)
            for i in range(rng.randint(1, 30))
        ]
        print(log.append_many(events)[-1].seq, flush=True)
        anchorer.anchor_pending(max_events=rng.randint(5, 40))
    """
)


def test_anchoring_kill9_repeated_keeps_events_and_roots(chain, tmp_path):
    server, deployment = chain
    client = _register(chain, "anchor-kill9")
    path = tmp_path / "usage.db"
    rng = random.Random(11)
    acknowledged = 0
    for round_number in range(6):
        worker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(path),
                server.url,
                deployment.to_json(),
                client._key.key.hex(),
                str(round_number),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        first = worker.stdout.readline()
        assert first.strip().isdigit(), f"worker failed to start: {first!r}"
        time.sleep(rng.uniform(0.2, 1.5))
        os.kill(worker.pid, signal.SIGKILL)
        acknowledged = int(first)
        for line in worker.stdout:
            acknowledged = int(line)
        worker.wait(timeout=30)
        with UsageLog(path) as log:
            assert log.head() >= acknowledged
    with UsageLog(path) as log:
        Anchorer(log, client).anchor_all()
        assert log.batches("pending") == []
        on_chain = client.anchors(client.account)
        local = [(b.from_seq, b.to_seq, b.root) for b in log.batches()]
        assert [(a.from_seq, a.to_seq, a.root) for a in on_chain] == local
        verdict = verify_node(log.entries(), on_chain)
        assert verdict.ok, verdict.reason
        assert verdict.anchored == log.head()
