"""Ethereum JSON-RPC over HTTP for the embedded py-evm chain.

``serve`` runs the server in the foreground until SIGINT or SIGTERM, and
``ChainServer`` also runs it in a background thread (tests, demos). From a shell:
``python -m citymesh.ledger.evm_server --state chain.sqlite --prefund 0xADDR=WEI``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Self

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from citymesh.errors import CitymeshError, InvalidInput

from .evm_chain import (
    DEFAULT_CHAIN_ID,
    DEFAULT_GAS_LIMIT,
    DEFAULT_NONCE_WAIT,
    EmbeddedChain,
)
from .evm_rpc import RpcHandler

logger = logging.getLogger("citymesh.ledger")

DEFAULT_PORT = 8545
MAX_BODY_BYTES = 8 * 1024 * 1024
SERVER_START_TIMEOUT = 10.0


def create_app(
    chain: EmbeddedChain, nonce_wait: float = DEFAULT_NONCE_WAIT
) -> Starlette:
    """Build the ASGI app: JSON-RPC requests are POSTed to ``/``."""
    handler = RpcHandler(chain, nonce_wait)

    async def rpc(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return PlainTextResponse(
                f"request body of {len(body)} bytes exceeds {MAX_BODY_BYTES}",
                status_code=413,
            )
        # The chain blocks on its lock (and on nonce gaps), so run it off the loop.
        answer = await run_in_threadpool(handler.handle_body, body)
        if answer is None:
            return Response(status_code=204)
        return Response(answer, media_type="application/json")

    app = Starlette(routes=[Route("/", rpc, methods=["POST"])])
    app.state.rpc = handler
    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise InvalidInput(
            f"cannot listen on {host}:{port}: {error.strerror}; "
            "pick a free port or stop the other server"
        ) from None
    sock.listen(128)
    return sock


def _warn_if_exposed(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        logger.warning(
            "JSON-RPC on %s is reachable from other hosts and has no authentication",
            host,
        )


class _UvicornServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT and SIGTERM to ``ChainServer.run``.

    uvicorn re-raises a captured signal after its shutdown, which would kill the
    process before the chain is closed and exit with the signal's status.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ChainServer:
    """Serves an ``EmbeddedChain`` over HTTP on ``host:port`` (port 0 picks a free one).

    The socket is bound in the constructor, so ``url`` is valid at once. Use ``run``
    in the main thread (it handles SIGINT and SIGTERM), or ``start``/``stop`` (or a
    ``with`` block) to serve from a background thread. The chain stays open when
    the server stops; its owner closes it.
    """

    def __init__(
        self,
        chain: EmbeddedChain,
        host: str = "127.0.0.1",
        port: int = 0,
        nonce_wait: float = DEFAULT_NONCE_WAIT,
    ) -> None:
        self.chain = chain
        _warn_if_exposed(host)
        self._socket = _bind(host, port)
        self.host = host
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            create_app(chain, nonce_wait),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            # Keep idle connections for 2 minutes, so that the pooled connections
            # of a polling client rarely close under its next request.
            timeout_keep_alive=120,
        )
        self._server = _UvicornServer(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve until SIGINT, SIGTERM or ``stop``, blocking the calling thread."""
        logger.info(
            "serving chain id %d at %s (state %s, head block %d)",
            self.chain.chain_id,
            self.url,
            self.chain.state_path,
            self.chain.head_number,
        )
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous_handlers = {}
        if in_main_thread:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous_handlers[sig] = signal.signal(sig, self._handle_signal)
        try:
            self._server.run(sockets=[self._socket])
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self._socket.close()
            logger.info("stopped serving %s", self.url)

    def _handle_signal(self, sig: int, frame: FrameType | None) -> None:
        logger.info(
            "received %s: finishing requests in flight", signal.Signals(sig).name
        )
        if self._server.should_exit and sig == signal.SIGINT:
            self._server.force_exit = True  # a second Ctrl-C skips the wait
        self._server.should_exit = True

    def start(self) -> None:
        """Serve from a daemon thread and return once the server accepts connections."""
        self._thread = threading.Thread(
            target=self.run, name=f"chain-server-{self.port}", daemon=True
        )
        self._thread.start()
        for _ in range(int(SERVER_START_TIMEOUT / 0.01)):
            if self._server.started or not self._thread.is_alive():
                break
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError(
                f"chain server on {self.url} did not start within "
                f"{SERVER_START_TIMEOUT} s; see the log for the error"
            )

    def stop(self) -> None:
        """Stop serving and wait for the thread started by ``start``."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    state_path: Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    prefund: dict[str, int] | None = None,
    chain_id: int = DEFAULT_CHAIN_ID,
    *,
    durable: bool = True,
) -> None:
    """Open (or create) the chain in ``state_path`` and serve it until a signal.

    ``prefund`` maps hex addresses to wei and applies only when the file is new.
    ``durable=False`` skips the fsync per block. A killed process then loses nothing,
    but a power loss may lose the last blocks. SIGINT and SIGTERM finish the requests
    in flight, then close the state file.
    """
    with EmbeddedChain(
        Path(state_path), prefund=prefund, chain_id=chain_id, durable=durable
    ) as chain:
        ChainServer(chain, host, port).run()


def parse_prefund(items: Sequence[str]) -> dict[str, int]:
    """Parse ``ADDRESS=WEI`` strings into a prefund mapping."""
    prefund: dict[str, int] = {}
    for item in items:
        address, separator, wei = item.partition("=")
        if not separator or not wei.strip().isdigit():
            raise InvalidInput(
                f"prefund {item!r} is invalid; write it as 0xADDRESS=WEI with WEI a "
                "non-negative integer"
            )
        prefund[address.strip()] = int(wei)
    return prefund


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m citymesh.ledger.evm_server",
        description="Serve the embedded py-evm chain over Ethereum JSON-RPC.",
    )
    parser.add_argument(
        "--state", required=True, type=Path, help="SQLite file that stores the chain"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="TCP port (0 picks a free one)"
    )
    parser.add_argument(
        "--chain-id", type=int, default=DEFAULT_CHAIN_ID, help="EIP-155 chain id"
    )
    parser.add_argument(
        "--prefund",
        action="append",
        default=[],
        metavar="ADDRESS=WEI",
        help="fund an account in the genesis block of a new file (repeatable)",
    )
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="skip the fsync per block: survives a killed process, not a power loss",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="logging level (DEBUG logs every block)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _argument_parser().parse_args(argv)
    logging.basicConfig(
        level=arguments.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        serve(
            arguments.state,
            host=arguments.host,
            port=arguments.port,
            prefund=parse_prefund(arguments.prefund),
            chain_id=arguments.chain_id,
            durable=not arguments.no_fsync,
        )
    except CitymeshError as error:
        logger.error("chain server failed: %s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DEFAULT_GAS_LIMIT",
    "ChainServer",
    "EmbeddedChain",
    "create_app",
    "main",
    "parse_prefund",
    "serve",
]
