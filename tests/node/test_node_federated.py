import asyncio
import socket
import ssl

import httpx
import pytest
from fastapi import FastAPI, Request

from citymesh.catalog.codes import shared_codes
from citymesh.errors import InvalidInput
from citymesh.node.app import create_app
from citymesh.node.client import NodeClient
from citymesh.node.federated import federated_search, tls_context
from citymesh.node.home import init_home
from citymesh.node.identity import load_operator_token


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node(tmp_path, serve_app, city: str, titles: list[str]) -> str:
    settings = init_home(tmp_path / city, city)
    url = serve_app(create_app(settings))
    source = tmp_path / f"{city}.csv"
    source.write_text("hour,count\n1,2\n")
    token = load_operator_token(settings.keys_dir)
    with NodeClient(url, operator_token=token) as client:
        for index, title in enumerate(titles):
            code = "04.5.4" if index % 2 == 0 else "04.5.1"
            client.ingest(source, name=f"set{index}", code=code, title=title)
    return url


def odd_peer(delay_s: float, version: str = "") -> FastAPI:
    app = FastAPI()

    @app.get("/catalog/search")
    async def search() -> dict:
        await asyncio.sleep(delay_s)
        info = shared_codes().info()
        if version:
            info = {"version": version, "sha256": "00" * 32}
        return {"items": [], "total": 0, "code_list": info}

    return app


def test_federated_search_merges_and_reports(tmp_path, serve_app):
    ewr = start_node(tmp_path, serve_app, "ewr", ["Air traffic", "Road counts"])
    jfk = start_node(tmp_path, serve_app, "jfk", ["Air cargo", "Air noise"])
    slow = serve_app(odd_peer(delay_s=3))
    other = serve_app(odd_peer(delay_s=0, version="0.9"))
    dead = f"http://127.0.0.1:{closed_port()}"
    result = federated_search(
        [ewr, jfk, slow, other, dead], code="04.5", keyword="air", deadline_s=1.0
    )
    ids = [item["id"] for item in result.items]
    assert ids == ["ewr:set0", "jfk:set0", "jfk:set1"]
    assert result.total == 3
    status = {outcome.url: outcome.status for outcome in result.peers}
    assert status == {
        ewr: "ok",
        jfk: "ok",
        slow: "timeout",
        other: "code_list_mismatch",
        dead: "error",
    }
    mismatch = next(p for p in result.peers if p.url == other)
    assert "'0.9'" in mismatch.detail
    assert next(p for p in result.peers if p.url == slow).ms < 2000


def test_federated_search_pages(tmp_path, serve_app):
    ewr = start_node(tmp_path, serve_app, "ewr", ["a", "b", "c"])
    jfk = start_node(tmp_path, serve_app, "jfk", ["d", "e"])
    first = federated_search([ewr, jfk], code="04.5", limit=2)
    second = federated_search([ewr, jfk], code="04.5", limit=2, offset=2)
    assert first.total == 5
    assert [i["id"] for i in first.items] == ["ewr:set0", "ewr:set1"]
    assert [i["id"] for i in second.items] == ["ewr:set2", "jfk:set0"]
    exact = federated_search([ewr, jfk], code="04.5.1")
    assert [i["id"] for i in exact.items] == ["ewr:set1", "jfk:set1"]


def port_recording_peer(ports: list[int]) -> FastAPI:
    app = FastAPI()

    @app.get("/catalog/search")
    async def search(request: Request) -> dict:
        ports.append(request.client.port)
        return {"items": [], "total": 0, "code_list": shared_codes().info()}

    return app


def test_federated_search_reuses_connections(serve_app):
    ports: list[int] = []
    url = serve_app(port_recording_peer(ports))
    for _ in range(3):
        result = federated_search([url], code="04.5")
        assert [outcome.status for outcome in result.peers] == ["ok"]
    assert len(ports) == 3
    assert len(set(ports)) == 1


def test_federated_search_logs_each_query(tmp_path, serve_app):
    ewr = start_node(tmp_path, serve_app, "ewr", ["Air traffic", "Road counts"])
    before = httpx.get(f"{ewr}/health", timeout=10).json()["usage_head"]
    for _ in range(2):
        result = federated_search([ewr], keyword="air")
        assert [item["id"] for item in result.items] == ["ewr:set0"]
    after = httpx.get(f"{ewr}/health", timeout=10).json()["usage_head"]
    assert after == before + 2


def test_peer_tls_context_verifies_certificates():
    context = tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert tls_context() is context


@pytest.mark.parametrize(("offset", "limit"), [(-1, 10), (0, 0), (995, 10), (0, 1001)])
def test_federated_search_rejects_bad_page(offset, limit):
    with pytest.raises(InvalidInput, match=f"offset {offset}, limit {limit}"):
        federated_search(["http://127.0.0.1:1"], offset=offset, limit=limit)
