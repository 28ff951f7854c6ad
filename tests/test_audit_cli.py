"""`citymesh audit` against a real embedded chain, with segments from real logs."""

import hashlib
import json
import subprocess
import sys

import pytest
from eth_account import Account

from citymesh.ledger.anchoring import Anchorer
from citymesh.ledger.chain import ChainClient
from citymesh.ledger.events import KINDS, UsageEvent
from citymesh.ledger.log import UsageLog
from citymesh.network import Network

ANCHORED = 13  # entries 1..13 are anchored in batches of 5, 5 and 3
UNANCHORED = 2  # entries 14..15 wait for the next anchor


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    with Network.create(tmp_path_factory.mktemp("net"), cities=[]) as network:
        network.start_chain()
        yield network


def _register(network, city):
    """Register a funded city node and return a client that signs with its key."""
    admin = network.admin_chain()
    key = Account.create().key.hex()
    account = Account.from_key(key).address
    admin.register_node(city, account, hashlib.sha256(city.encode()).digest(), "", 1)
    admin.fund(account, 10**20)
    return ChainClient(network.chain_url, network.deployment(), private_key=key)


def _events(count, start=0):
    return [
        UsageEvent(
            "query",
            "north:stops-with-a-long-identifier-that-does-not-fit-in-80-columns",
            "north",
            "0x" + "ab" * 20,
            "planning",
            rows=10,
            time=1_767_225_600 + start + i,  # 2026-01-01T00:00:00Z onwards
        )
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def north(network, tmp_path_factory):
    """A city node's log with 13 anchored and 2 unanchored entries, and its client."""
    client = _register(network, "north")
    log = UsageLog(tmp_path_factory.mktemp("north") / "usage.db")
    log.append_many(_events(ANCHORED))
    Anchorer(log, client, batch_size=5).anchor_all()
    log.append_many(_events(UNANCHORED, start=ANCHORED))
    assert client.last_anchored_seq(client.account) == ANCHORED
    return log, client


def _export(north, path, from_seq=1, to_seq=None):
    log, client = north
    anchors = client.anchors(client.account)
    log.export(path, from_seq, to_seq, anchors=anchors, node=client.account)
    return path


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "citymesh.cli", "audit", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _on_chain(network):
    return [
        "--chain-url",
        network.chain_url,
        "--deployment",
        str(network.workdir / "deployment.json"),
    ]


def _verify_json(network, *args):
    result = _cli("verify-bundle", *args, *_on_chain(network), "--format", "json")
    return result, json.loads(result.stdout)["per_city"]


def test_verify_bundle_honest_anchored_passes(network, north, tmp_path):
    path = _export(north, tmp_path / "north.jsonl", to_seq=ANCHORED)

    result, verdicts = _verify_json(network, str(path))

    assert result.returncode == 0, result.stdout + result.stderr
    verdict = verdicts[str(path)]
    assert verdict["ok"]
    assert verdict["events"] == ANCHORED
    assert verdict["anchored"] == ANCHORED
    assert verdict["city"] == "north"
    assert verdict["revoked"] is False


def test_verify_bundle_unanchored_needs_flag(network, north, tmp_path):
    path = _export(north, tmp_path / "north.jsonl")

    rejected, verdicts = _verify_json(network, str(path))
    allowed, allowed_verdicts = _verify_json(network, str(path), "--allow-unanchored")

    assert rejected.returncode == 1
    assert not verdicts[str(path)]["ok"]
    assert "entries 14..15 are not yet anchored" in verdicts[str(path)]["reason"]
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert allowed_verdicts[str(path)]["ok"]
    assert allowed_verdicts[str(path)]["unanchored"] == UNANCHORED
    assert allowed_verdicts[str(path)]["anchored"] == ANCHORED


def test_verify_bundle_unregistered_node_fails(network, tmp_path):
    fake = Account.create().address
    log = UsageLog(tmp_path / "fake.db")
    log.append_many(_events(8))
    path = tmp_path / "fake.jsonl"
    log.export(path, node=fake)  # invented rows, no anchors and no proofs

    offline = _cli("verify-bundle", str(path), "--offline")
    result, verdicts = _verify_json(network, str(path))

    assert offline.returncode == 0, "an internally consistent forgery passes offline"
    assert result.returncode == 1
    assert not verdicts[str(path)]["ok"]
    assert "is not registered on chain" in verdicts[str(path)]["reason"]


def test_verify_bundle_cut_header_fails(network, north, tmp_path):
    path = _export(north, tmp_path / "north.jsonl", to_seq=5)

    result, verdicts = _verify_json(network, str(path))

    assert result.returncode == 1
    assert not verdicts[str(path)]["ok"]
    assert "entries 6..13 are missing" in verdicts[str(path)]["reason"]


def test_verify_bundle_empty_segment_fails(network, north, tmp_path):
    path = _export(north, tmp_path / "north.jsonl", to_seq=0)

    result, verdicts = _verify_json(network, str(path))

    assert result.returncode == 1
    assert not verdicts[str(path)]["ok"]
    assert "entries 1..13 are missing" in verdicts[str(path)]["reason"]


def test_verify_bundle_later_start_needs_from_seq(network, north, tmp_path):
    path = _export(north, tmp_path / "north.jsonl", from_seq=6, to_seq=ANCHORED)

    rejected, verdicts = _verify_json(network, str(path))
    allowed, allowed_verdicts = _verify_json(network, str(path), "--from-seq", "6")

    assert rejected.returncode == 1
    assert "entries 1..5 are missing" in verdicts[str(path)]["reason"]
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert allowed_verdicts[str(path)]["events"] == ANCHORED - 5


def test_verify_bundle_revoked_node_is_named(network, tmp_path):
    client = _register(network, "revoked-town")
    log = UsageLog(tmp_path / "usage.db")
    log.append_many(_events(4))
    Anchorer(log, client, batch_size=4).anchor_all()
    network.admin_chain().revoke_node(client.account)
    path = tmp_path / "revoked.jsonl"
    log.export(path, anchors=client.anchors(client.account), node=client.account)

    result, verdicts = _verify_json(network, str(path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts[str(path)]["revoked"] is True
    assert "revoked" in verdicts[str(path)]["reason"]


def test_verify_bundle_offline_needs_flag(north, tmp_path):
    path = _export(north, tmp_path / "north.jsonl", to_seq=ANCHORED)

    without_flag = _cli("verify-bundle", str(path))
    with_flag = _cli("verify-bundle", str(path), "--offline")

    assert without_flag.returncode == 1
    assert "internal consistency" in without_flag.stdout
    assert "--chain-url" in without_flag.stderr
    assert "--offline" in without_flag.stderr
    assert with_flag.returncode == 0, with_flag.stdout + with_flag.stderr
    assert with_flag.stdout.startswith("warning: offline")


def test_report_on_chain_counts_events(network, north, tmp_path):
    path = _export(north, tmp_path / "north.jsonl", to_seq=ANCHORED)

    result = _cli("report", str(path), *_on_chain(network), "--format", "json")

    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert "warning" not in data
    (row,) = data["rows"]
    assert row["city"] == "north"
    assert row["events"] == ANCHORED
    assert row["rows"] == 10 * ANCHORED


def test_report_rejects_forged_segment(network, north, tmp_path):
    path = _export(north, tmp_path / "north.jsonl", to_seq=5)

    result = _cli("report", str(path), *_on_chain(network))

    assert result.returncode == 1
    assert "entries 6..13 are missing" in result.stderr


def test_report_rejects_same_node_twice(network, north, tmp_path):
    first = _export(north, tmp_path / "a.jsonl", to_seq=ANCHORED)
    second = _export(north, tmp_path / "b.jsonl", to_seq=ANCHORED)

    result = _cli("report", str(first), str(second), *_on_chain(network))

    assert result.returncode == 1
    assert "pass one segment per node" in result.stderr


def test_report_offline_needs_flag(north, tmp_path):
    path = _export(north, tmp_path / "north.jsonl", to_seq=ANCHORED)

    rejected = _cli("report", str(path))
    allowed = _cli("report", str(path), "--offline")

    assert rejected.returncode == 1
    assert "--chain-url" in rejected.stderr
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert allowed.stdout.splitlines()[0].startswith("warning: offline")


def test_report_table_full_ids_and_iso_times(network, north, tmp_path):
    path = _export(north, tmp_path / "north.jsonl", to_seq=ANCHORED)

    result = _cli("report", str(path), *_on_chain(network))

    assert result.returncode == 0, result.stdout + result.stderr
    header, row = result.stdout.splitlines()
    columns = dict(zip(header.split("\t"), row.split("\t"), strict=True))
    assert columns["dataset_id"] == _events(1)[0].dataset_id
    assert columns["consumer"] == "0x" + "ab" * 20
    assert columns["first_time"] == "2026-01-01T00:00:00.000Z"
    assert columns["last_time"] == "2026-01-01T00:00:12.000Z"


def test_report_rejects_unknown_kind(north, tmp_path):
    path = _export(north, tmp_path / "north.jsonl", to_seq=ANCHORED)

    result = _cli("report", str(path), "--offline", "--kind", "bogus")

    assert result.returncode == 1
    assert "unknown event kind 'bogus'" in result.stderr
    for kind in KINDS:
        assert kind in result.stderr


def test_verify_unknown_city_lists_registered(network, north):
    keys = network.workdir / "regulator" / "keys"
    assert network.regulator_identity.account  # creates the keys on first use

    result = _cli("verify", *_on_chain(network), "--keys", str(keys), "--city", "NOPE")

    assert result.returncode == 1
    assert "no registered city node is named 'NOPE'" in result.stderr
    assert "north" in result.stderr
