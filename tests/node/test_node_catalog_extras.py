import json

import pytest

from citymesh.errors import InvalidInput
from citymesh.node.app import create_app
from citymesh.node.client import NodeClient
from citymesh.node.home import init_home
from citymesh.node.identity import NodeIdentity, load_operator_token
from citymesh.node.registry import file_resolver
from citymesh.node.settings import load_settings

MAPPING = {
    "city": "ewr",
    "code_list_version": "1.0.0",
    "mappings": [
        {"local": "TR-AIR", "target": "04.5.4", "label": "Airports"},
        {"local": "TR-AIR-CARGO", "target": "TR-AIR"},
    ],
}


@pytest.fixture
def counts_csv(tmp_path):
    path = tmp_path / "counts.csv"
    path.write_text("hour,flights\n" + "".join(f"{h},{h * 3}\n" for h in range(24)))
    return path


def test_local_codes_ingest_and_search(tmp_path, serve_app, counts_csv):
    settings = init_home(tmp_path / "ewr", "ewr")
    (settings.home / "codes.map.json").write_text(json.dumps(MAPPING))
    url = serve_app(create_app(settings))
    token = load_operator_token(settings.keys_dir)
    with NodeClient(url, operator_token=token) as client:
        entry = client.ingest(counts_csv, name="cargo", code="TR-AIR-CARGO")
        by_local = client.search(code="TR-AIR")
        by_shared = client.search(code="04.5")
        by_local_field = client.search(local_code="TR-AIR-CARGO")
    assert entry["code"] == "04.5.4"
    assert entry["local_code"] == "TR-AIR-CARGO"
    assert [item["id"] for item in by_local["items"]] == ["ewr:cargo"]
    assert [item["id"] for item in by_shared["items"]] == ["ewr:cargo"]
    assert [item["id"] for item in by_local_field["items"]] == ["ewr:cargo"]


def test_dcat_and_lineage_endpoints(tmp_path, serve_app, counts_csv):
    settings = init_home(tmp_path / "ewr", "ewr", port=8799)
    url = serve_app(create_app(settings))
    token = load_operator_token(settings.keys_dir)
    with NodeClient(url, operator_token=token) as client:
        client.ingest(counts_csv, name="counts", code="04.5.1", title="Road counts")
        dcat = client.http.get("/catalog/dcat").json()
        graph = client.http.get("/catalog/datasets/ewr:counts/lineage").json()
    datasets = dcat["dcat:dataset"]
    assert [d["dct:identifier"] for d in datasets] == ["ewr:counts"]
    assert datasets[0]["@id"] == "http://127.0.0.1:8799/catalog/datasets/ewr:counts"
    assert graph == {
        "root": "ewr:counts",
        "edges": [],
        "nodes": {
            "ewr:counts": {
                "tier": "raw",
                "code": "04.5.1",
                "grade": "general",
                "title": "Road counts",
                "rows": 24,
            }
        },
    }


def test_signers_file_resolves(tmp_path, serve_app):
    peer = NodeIdentity.generate()
    signers = tmp_path / "signers.json"
    signers.write_text(
        json.dumps({peer.account: [peer.public_key.hex(), 1, True, "jfk"]})
    )
    settings = init_home(tmp_path / "ewr", "ewr")
    resolve = file_resolver(signers)
    assert resolve(peer.account) == (peer.public_key, 1, True, "jfk")
    assert resolve(NodeIdentity.generate().account) is None
    settings = load_settings(settings.home, signers_file=signers)
    url = serve_app(create_app(settings))
    with NodeClient(url, peer) as client:
        assert client.events() == []


def test_signers_file_invalid_rejected(tmp_path):
    bad = tmp_path / "signers.json"
    bad.write_text('{"0xabc": ["zz", 1]}')
    with pytest.raises(InvalidInput, match="cannot read signers file"):
        file_resolver(bad)
