"""Security checks of the node service: body limits, target binding, replay,
federated consumers, rejection logs, the signer cache and home validation."""

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from citymesh.errors import AuthError, InvalidInput, NotFound
from citymesh.node import signing
from citymesh.node.app import create_app
from citymesh.node.client import NodeClient
from citymesh.node.home import init_home
from citymesh.node.identity import NodeIdentity, load_operator_token
from citymesh.node.service import serve
from citymesh.node.settings import NodeSettings
from citymesh.node.signing import (
    NODE_ACCOUNT_HEADER,
    NonceStore,
    RejectionLog,
    RequestVerifier,
    dict_resolver,
    sign_headers,
)

CHUNK = b"x" * 65_536
CHUNKS = 64  # a 4 MiB body


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def asgi_call(app, method: str, path: str, headers: dict, chunks: list[bytes]):
    """Send one request straight to an ASGI app.

    Returns the status, the JSON body and how many body chunks the app read.
    """
    path_only, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), str(v).encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    pending = list(chunks) or [b""]
    read = 0
    sent: dict = {"body": b""}

    async def receive():
        nonlocal read
        if not pending:
            await asyncio.sleep(3600)
        read += 1
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
            sent["headers"] = {
                k.decode().lower(): v.decode() for k, v in message["headers"]
            }
        elif message["type"] == "http.response.body":
            sent["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return sent["status"], json.loads(sent["body"] or b"null"), read, sent["headers"]


@pytest.fixture
def node(tmp_path: Path):
    """A node home, its app with a small body limit, a peer and a regulator."""
    settings = init_home(tmp_path / "ewr", "ewr")
    settings = NodeSettings(home=settings.home, max_request_bytes=100_000)
    peer = NodeIdentity.generate()
    regulator = NodeIdentity.generate()
    resolver = dict_resolver(
        {
            peer.account: (peer.public_key, 1, True, "jfk"),
            regulator.account: (regulator.public_key, 3, True, "audit"),
        }
    )
    app = create_app(settings, resolve_signer=resolver)
    yield app, settings, peer, regulator, resolver
    app.state.context.close()


def account_of(app) -> str:
    return app.state.context.identity.account


def test_unsigned_body_not_read(node):
    app, *_ = node
    status, body, read, _ = asgi_call(
        app, "POST", "/exchange/abc/receipt", {}, [CHUNK] * CHUNKS
    )
    assert status == 401
    assert "unsigned request" in body["detail"]
    assert read == 0


def test_unknown_signer_body_not_read(node):
    app, *_ = node
    stranger = NodeIdentity.generate()
    headers = sign_headers(
        stranger, "POST", b"/exchange/abc/receipt", b"", target_account=account_of(app)
    )
    status, body, read, _ = asgi_call(
        app, "POST", "/exchange/abc/receipt", headers, [CHUNK] * CHUNKS
    )
    assert status == 401
    assert "unknown signer" in body["detail"]
    assert read == 0


def test_stale_signature_body_not_read(node):
    app, _settings, peer, *_ = node
    headers = sign_headers(
        peer,
        "POST",
        b"/exchange/abc/receipt",
        b"",
        now=1.0,
        target_account=account_of(app),
    )
    status, body, read, _ = asgi_call(
        app, "POST", "/exchange/abc/receipt", headers, [CHUNK] * CHUNKS
    )
    assert status == 401
    assert "stale request" in body["detail"]
    assert read == 0


def test_signed_body_over_limit_declared(node):
    app, _settings, peer, *_ = node
    headers = sign_headers(
        peer, "POST", b"/exchange/abc/receipt", b"", target_account=account_of(app)
    )
    headers["content-length"] = str(len(CHUNK) * CHUNKS)
    status, body, read, _ = asgi_call(
        app, "POST", "/exchange/abc/receipt", headers, [CHUNK] * CHUNKS
    )
    assert status == 413
    assert "over the limit of 100000 bytes" in body["detail"]
    assert "max_request_bytes" in body["detail"]
    assert read == 0


def test_signed_body_over_limit_streamed(node):
    app, _settings, peer, *_ = node
    headers = sign_headers(
        peer, "POST", b"/exchange/abc/receipt", b"", target_account=account_of(app)
    )
    status, body, read, _ = asgi_call(
        app, "POST", "/exchange/abc/receipt", headers, [CHUNK] * CHUNKS
    )
    assert status == 413
    assert "max_request_bytes" in body["detail"]
    assert read == 2


def test_signed_body_within_limit_reaches_route(node):
    app, _settings, peer, *_ = node
    payload = json.dumps({"signature": "00"}).encode()
    headers = sign_headers(
        peer, "POST", b"/exchange/abc/receipt", payload, target_account=account_of(app)
    )
    status, body, _read, _ = asgi_call(
        app, "POST", "/exchange/abc/receipt", headers, [payload]
    )
    assert status == 404
    assert "abc" in body["detail"]


def test_max_request_bytes_default():
    assert NodeSettings(home=Path("/x"), city="ewr").max_request_bytes == 1024**2


def test_request_bound_to_target_node(tmp_path, serve_app):
    peer = NodeIdentity.generate()
    regulator = NodeIdentity.generate()
    resolver = dict_resolver(
        {
            peer.account: (peer.public_key, 1, True, "jfk"),
            regulator.account: (regulator.public_key, 3, True, "audit"),
        }
    )
    ewr = create_app(init_home(tmp_path / "ewr", "ewr"), resolve_signer=resolver)
    jfk = create_app(init_home(tmp_path / "jfk", "jfk"), resolve_signer=resolver)
    ewr_url = serve_app(ewr)
    jfk_url = serve_app(jfk)
    headers = sign_headers(
        regulator, "GET", b"/ledger/events", b"", target_account=account_of(ewr)
    )
    at_ewr = httpx.get(f"{ewr_url}/ledger/events", headers=headers, timeout=10)
    at_jfk = httpx.get(f"{jfk_url}/ledger/events", headers=headers, timeout=10)
    assert at_ewr.status_code == 200
    assert at_jfk.status_code == 401
    assert "wrong target" in at_jfk.json()["detail"]
    assert at_jfk.headers[NODE_ACCOUNT_HEADER] == account_of(jfk)
    unbound = sign_headers(regulator, "GET", b"/ledger/events", b"")
    response = httpx.get(f"{jfk_url}/ledger/events", headers=unbound, timeout=10)
    assert response.status_code == 401
    assert "X-Citymesh-Target" in response.json()["detail"]
    for url in (ewr_url, jfk_url):
        with NodeClient(url, regulator) as client:
            assert client.events() == []


def test_client_relearns_replaced_target(running_node):
    origin = signing._origin(httpx.URL(running_node.url))
    stale = NodeIdentity.generate().account
    with signing._target_lock:
        signing._target_accounts[origin] = stale
    with NodeClient(running_node.url, running_node.regulator) as client:
        assert client.events() == []
    assert signing._target_accounts[origin] == running_node.identity.account


def test_nonce_survives_restart(tmp_path):
    settings = init_home(tmp_path / "ewr", "ewr")
    regulator = NodeIdentity.generate()
    resolver = dict_resolver({regulator.account: (regulator.public_key, 3, True)})
    first = create_app(settings, resolve_signer=resolver)
    headers = sign_headers(
        regulator, "GET", b"/ledger/events", b"", target_account=account_of(first)
    )
    status, _body, _read, _ = asgi_call(first, "GET", "/ledger/events", headers, [])
    first.state.context.close()
    second = create_app(settings, resolve_signer=resolver)
    again, body, _read, _ = asgi_call(second, "GET", "/ledger/events", headers, [])
    second.state.context.close()
    assert status == 200
    assert again == 401
    assert "replayed request" in body["detail"]


def test_nonce_store_prunes_old(tmp_path):
    store = NonceStore(window_s=10, path=tmp_path / "nonces.db")
    assert store.add("0xA", "n1", now=100.0)
    assert not store.add("0xa", "n1", now=101.0)
    assert store.add("0xA", "n2", now=200.0)
    assert store.count() == 1
    store.close()


def test_federated_requires_signature(tmp_path):
    settings = init_home(tmp_path / "jfk", "jfk")
    settings = NodeSettings(home=settings.home, require_signed_catalog=True)
    app = create_app(settings, resolve_signer=dict_resolver({}))
    status, body, _read, _ = asgi_call(app, "GET", "/catalog/federated", {}, [])
    app.state.context.close()
    assert status == 401
    assert "unsigned request" in body["detail"]


def test_federated_names_original_caller(tmp_path, serve_app):
    caller = NodeIdentity.generate()
    ewr_settings = init_home(tmp_path / "ewr", "ewr")
    jfk_settings = init_home(tmp_path / "jfk", "jfk")
    jfk_identity = NodeIdentity.load(jfk_settings.keys_dir)
    resolver = dict_resolver(
        {
            caller.account: (caller.public_key, 1, True, "lga"),
            jfk_identity.account: (jfk_identity.public_key, 1, True, "jfk"),
        }
    )
    ewr = create_app(ewr_settings, resolve_signer=resolver)
    ewr_url = serve_app(ewr)

    source = tmp_path / "counts.csv"
    source.write_text("hour,count\n1,2\n")
    token = load_operator_token(ewr_settings.keys_dir)
    with NodeClient(ewr_url, operator_token=token) as client:
        client.ingest(source, name="counts", code="04.5.4", title="Counts")

    jfk_settings = NodeSettings(
        home=jfk_settings.home, peers=[ewr_url], require_signed_catalog=True
    )
    jfk_url = serve_app(create_app(jfk_settings, resolve_signer=resolver))
    auth = signing.SignedRequestAuth(caller)
    response = httpx.get(
        f"{jfk_url}/catalog/federated", params={"code": "04.5"}, auth=auth, timeout=10
    )
    assert response.status_code == 200
    assert [item["id"] for item in response.json()["items"]] == ["ewr:counts"]

    queries = [
        entry.event
        for entry in ewr.state.context.usage.log.entries(1, None)
        if entry.event.kind == "query"
    ]
    assert len(queries) == 1
    assert queries[0].consumer == jfk_identity.account
    assert queries[0].detail["on_behalf_of"] == caller.account


def test_search_on_behalf_of_needs_signature(node):
    app, *_ = node
    status, body, _read, _ = asgi_call(
        app, "GET", "/catalog/search?on_behalf_of=0xabc", {}, []
    )
    assert status == 400
    assert "signed request" in body["detail"]


def test_rejections_logged_rate_limited(caplog):
    peer = NodeIdentity.generate()
    clock = FakeClock()
    verifier = RequestVerifier(
        dict_resolver({}),
        node_account="0xnode",
        rejections=RejectionLog(interval_s=10, clock=clock),
    )
    sent = [
        sign_headers(peer, "GET", b"/ledger/events", b"", target_account="0xnode")
        for _ in range(4)
    ]
    caplog.set_level(logging.WARNING, logger="citymesh.node")
    for headers in sent[:3]:
        with pytest.raises(AuthError, match="unknown signer"):
            verifier.verify("GET", b"/ledger/events", headers, b"")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1
    assert "unknown signer" in lines[0]
    assert peer.account in lines[0]
    assert all(h[signing.SIGNATURE_HEADER] not in lines[0] for h in sent)
    clock.now += 11
    with pytest.raises(AuthError):
        verifier.verify("GET", b"/ledger/events", sent[3], b"")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2
    assert "2 more rejections" in lines[1]


def test_oversize_rejection_logged(node, caplog):
    app, _settings, peer, *_ = node
    headers = sign_headers(
        peer, "POST", b"/exchange/abc/receipt", b"", target_account=account_of(app)
    )
    caplog.set_level(logging.WARNING, logger="citymesh.node")
    asgi_call(app, "POST", "/exchange/abc/receipt", headers, [CHUNK] * CHUNKS)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("request too large" in line and peer.account in line for line in lines)


def test_signer_cache_bounded():
    calls: list[str] = []

    def resolve(account: str):
        calls.append(account)
        return None

    verifier = RequestVerifier(resolve, cache_max=3, negative_cache_s=60)
    strangers = [NodeIdentity.generate() for _ in range(5)]
    for stranger in strangers:
        headers = sign_headers(stranger, "GET", b"/ledger/events", b"")
        with pytest.raises(AuthError, match="unknown signer"):
            verifier.verify("GET", b"/ledger/events", headers, b"")
    assert verifier.cached_signers() == 3
    headers = sign_headers(strangers[-1], "GET", b"/ledger/events", b"")
    with pytest.raises(AuthError, match="unknown signer"):
        verifier.verify("GET", b"/ledger/events", headers, b"")
    assert len(calls) == 5


def test_unknown_signer_cached_briefly():
    calls: list[str] = []
    stranger = NodeIdentity.generate()

    def resolve(account: str):
        calls.append(account)
        return None

    verifier = RequestVerifier(resolve, cache_s=60, negative_cache_s=0)
    for _ in range(2):
        headers = sign_headers(stranger, "GET", b"/ledger/events", b"")
        with pytest.raises(AuthError):
            verifier.verify("GET", b"/ledger/events", headers, b"")
    assert len(calls) == 2


def test_init_rejects_bad_port(tmp_path):
    for port in (0, 99999):
        with pytest.raises(InvalidInput, match="invalid port"):
            init_home(tmp_path / f"p{port}", "ewr", port=port)
        assert not (tmp_path / f"p{port}").exists()
    with pytest.raises(ValidationError):
        NodeSettings(home=tmp_path, city="ewr", port=99999)


def test_init_rejects_nonempty_folder(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not empty"):
        init_home(home, "ewr")
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert init_home(empty, "ewr").city == "ewr"


def test_serve_missing_home(tmp_path):
    missing = tmp_path / "nonexistent"
    with pytest.raises(NotFound, match="citymesh node init") as caught:
        serve(missing)
    assert str(missing) in str(caught.value)
