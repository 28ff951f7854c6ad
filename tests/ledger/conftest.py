"""Fixtures shared by the ledger tests: a second EVM implementation (anvil)."""

import glob
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ANVIL_CHAIN_ID = 1337


def anvil_binary() -> str | None:
    """Return anvil's path: $CITYMESH_ANVIL, the npm package in contracts/, or PATH."""
    configured = os.environ.get("CITYMESH_ANVIL")
    if configured:
        return configured
    pattern = str(ROOT / "contracts/node_modules/@foundry-rs/anvil-*/bin/anvil")
    found = sorted(glob.glob(pattern))
    return found[0] if found else shutil.which("anvil")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def anvil_url(tmp_path_factory):
    """Start anvil on a free loopback port; its first development account is funded."""
    binary = anvil_binary()
    if binary is None:
        pytest.skip(
            "anvil is not installed: run `npm ci` in contracts/ "
            "(installs @foundry-rs/anvil) or set CITYMESH_ANVIL to its path"
        )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("anvil") / "anvil.log"
    command = [
        binary,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(ANVIL_CHAIN_ID),
        "--accounts",
        "1",
        "--silent",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"anvil exited with {process.returncode}: {log.read_text()}"
                )
            try:
                if httpx.post(url, json=body, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"anvil at {url} not ready after 30 s: {log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
