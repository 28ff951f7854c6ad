"""Start and stop the network's services as child processes on loopback."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from citymesh.errors import CitymeshError

logger = logging.getLogger("citymesh.processes")

__all__ = ["Service", "ServiceFailed", "free_port", "quiet_env"]


class ServiceFailed(CitymeshError, RuntimeError):
    """A child service exited or did not become ready in time."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quiet_env() -> dict[str, str]:
    """Return this environment with Flower's network calls off and one torch thread."""
    env = dict(os.environ)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


class Service:
    """One child process whose output goes to a log file.

    ``ready_url`` is polled until it returns a status below 500. For a chain
    endpoint, ``ready_rpc`` is polled with a JSON-RPC ``eth_chainId`` call instead.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        ready_url: str | None = None,
        ready_rpc: str | None = None,
    ) -> None:
        self.name = name
        self.args = [sys.executable, "-m", "citymesh.cli", *args]
        self.log_path = log_path
        self.ready_url = ready_url
        self.ready_rpc = ready_rpc
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Service:
        """Start the process and wait until it is ready or ``timeout`` seconds pass."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=quiet_env(),
            start_new_session=True,
        )
        log.close()
        logger.info("started %s (pid %s)", self.name, self.process.pid)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServiceFailed(
                    f"{self.name} exited with code {self.process.returncode} before it "
                    f"was ready; see {self.log_path}"
                )
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise ServiceFailed(
            f"{self.name} was not ready after {timeout:.0f} s; see {self.log_path}"
        )

    def _answers(self) -> bool:
        try:
            if self.ready_rpc:
                body = {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "eth_chainId",
                    "params": [],
                }
                response = httpx.post(self.ready_rpc, json=body, timeout=2.0)
            elif self.ready_url:
                response = httpx.get(self.ready_url, timeout=2.0)
            else:
                return True
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    def stop(self, timeout: float = 15.0) -> None:
        """Send SIGTERM, then SIGKILL after ``timeout`` seconds."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s ignored SIGTERM for %.0f s; killing it", self.name, timeout
            )
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
        logger.info("stopped %s", self.name)
