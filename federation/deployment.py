"""Run jobs on a real Flower deployment: one SuperLink and one SuperNode per city.

``LocalFederation`` starts ``flower-superlink`` and one ``flower-supernode`` per city
as subprocesses on 127.0.0.1, each in its own process group, and stops them again.
A job is submitted with ``flwr run`` as a Flower App whose components are this
package's ServerApp and ClientApp (``citymesh.federation.server_app:app`` and
``citymesh.federation.client_app:app``). Each SuperNode's node config carries the
city's name, data path and usage log path, so the ClientApp reads only its own file.

Flower 1.42 serves the SuperLink's Fleet, Control and Runtime APIs on one HTTP port.
It has no Python call that returns a run's result. So ``flwr run --format json``
returns the run id, ``flwr ls --run-id`` its status, and the ServerApp writes its
result files into the run config's ``output-dir``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from citymesh.errors import CitymeshError, InvalidInput

from .spec import JobSpec

log = logging.getLogger("citymesh.federation")

HOST = "127.0.0.1"
CONNECTION_NAME = "citymesh"
APP_NAME = "citymesh-job"
STARTUP_TIMEOUT_S = 60.0
STATUS_POLL_S = 1.0

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "citymesh federated job"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "citymesh"

[tool.flwr.app.components]
serverapp = "citymesh.federation.server_app:app"
clientapp = "citymesh.federation.client_app:app"

[tool.flwr.app.config]
job-spec = ""
output-dir = ""
max-update-norm = 0.0
"""


class DeploymentError(CitymeshError):
    """A SuperLink, SuperNode or Flower run failed."""


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class LocalFederation:
    """A SuperLink and one SuperNode per city, as subprocesses on 127.0.0.1.

    ``nodes`` maps a city to its node config (``data-path``, optionally
    ``usage-log`` and ``dataset-id``; ``city`` is added). Use as a context manager,
    or call ``start`` and ``stop``.
    """

    workspace: Path
    nodes: dict[str, dict[str, object]]
    port: int = 0
    processes: list[_Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace)
        if not self.nodes:
            raise InvalidInput("a federation needs at least one city node")

    # Lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink, then the SuperNodes, and wait until all are up."""
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port()
        self._write_flower_config()
        superlink = self._spawn(
            "superlink",
            [
                "flower-superlink",
                "--insecure",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--database",
                str(self.workspace / "superlink.db"),
            ],
        )
        _wait_for_port(HOST, self.port, superlink)
        log.info("SuperLink started on %s:%d", HOST, self.port)

        for city, config in sorted(self.nodes.items()):
            self.add_node(city, config)

    def add_node(self, city: str, config: dict[str, object]) -> None:
        """Start a SuperNode for ``city`` and wait until it has registered."""
        self.nodes[city] = dict(config)
        config_path = self.workspace / f"node-{city}.toml"
        node_config = {**config, "city": city}
        config_path.write_text(_toml_table(node_config))
        node = self._spawn(
            f"supernode-{city}",
            [
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"{HOST}:{self.port}",
                "--host",
                HOST,
                "--port",
                str(_free_port()),
                "--node-config",
                str(config_path),
            ],
        )
        _wait_for_log(node, "SuperNode ID")
        log.info("SuperNode for city %s registered", city)

    def stop_node(self, city: str) -> None:
        """Stop the SuperNode of ``city`` (to simulate a node failure)."""
        for process in self.processes:
            if process.name == f"supernode-{city}":
                _terminate(process)

    def stop(self) -> None:
        """Stop every process this federation started, SuperNodes first."""
        for process in reversed(self.processes):
            _terminate(process)
        self.processes.clear()

    # Runs ---------------------------------------------------------------------------

    def submit(
        self,
        spec: JobSpec,
        output_dir: Path,
        max_update_norm: float | None = None,
    ) -> str:
        """Start the job as a Flower run and return its run id."""
        app_dir = self.workspace / "app"
        app_dir.mkdir(parents=True, exist_ok=True)
        (app_dir / "pyproject.toml").write_text(APP_PYPROJECT.format(name=APP_NAME))
        overrides = self.workspace / f"run-{spec.id}.toml"
        run_config: dict[str, object] = {
            "job-spec": spec.to_json(),
            "output-dir": str(Path(output_dir).resolve()),
            "max-update-norm": float(max_update_norm or 0.0),
        }
        overrides.write_text(_toml_table(run_config))
        output = self._flwr(
            ["run", str(app_dir), CONNECTION_NAME, "--run-config", str(overrides)]
        )
        run_id = str(output.get("run-id") or "")
        if not output.get("success") or not run_id:
            raise DeploymentError(f"flwr run did not start the job: {output!r}")
        log.info("job %s started as Flower run %s", spec.id, run_id)
        return run_id

    def status(self, run_id: str) -> str:
        """Return the run's status, such as ``running`` or ``finished:completed``."""
        output = self._flwr(["ls", "--run-id", run_id])
        runs = output.get("runs") or []
        if not runs:
            raise DeploymentError(f"Flower run {run_id!r} not found: {output!r}")
        return str(runs[0]["status"])

    def wait(self, run_id: str, timeout: float) -> None:
        """Wait until the run finishes; raise DeploymentError unless it completed."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(run_id)
            if status.startswith("finished"):
                break
            if time.monotonic() > deadline:
                self._flwr_plain(["stop", run_id, CONNECTION_NAME])
                raise DeploymentError(
                    f"Flower run {run_id} timed out after {timeout:.0f} s "
                    f"(status {status!r}); it was stopped"
                )
            time.sleep(STATUS_POLL_S)
        if status != "finished:completed":
            logs = self._flwr_plain(["log", run_id, CONNECTION_NAME, "--show"])
            tail = "\n".join(logs.splitlines()[-30:])
            raise DeploymentError(
                f"Flower run {run_id} ended with status {status!r}. Last log lines:\n"
                f"{tail}"
            )

    # Helpers ------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """Return the environment of every Flower process this federation starts."""
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.workspace / "flwr-home")
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env["OMP_NUM_THREADS"] = "1"
        # The Flower executables live next to this interpreter, also when the
        # virtual environment is not activated.
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        return env

    def _write_flower_config(self) -> None:
        home = self.workspace / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{CONNECTION_NAME}"\n\n'
            f"[superlink.{CONNECTION_NAME}]\n"
            f'address = "{HOST}:{self.port}"\n'
            "insecure = true\n"
        )

    def _spawn(self, name: str, command: list[str]) -> _Process:
        executable = shutil.which(command[0], path=self.environment()["PATH"])
        if executable is None:
            raise DeploymentError(
                f"{command[0]!r} not found; install flwr in this Python environment"
            )
        log_path = self.workspace / f"{name}.log"
        with log_path.open("wb") as log_file:
            popen = subprocess.Popen(
                [executable, *command[1:]],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.workspace,
                start_new_session=True,
            )
        process = _Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def _flwr(self, arguments: list[str]) -> dict[str, object]:
        text = self._flwr_plain([*arguments, "--format", "json"])
        start = text.find("{")
        try:
            return dict(json.loads(text[start:]))
        except (ValueError, TypeError) as exc:
            raise DeploymentError(
                f"flwr {' '.join(arguments)} returned no JSON: {text[-2000:]!r}"
            ) from exc

    def _flwr_plain(self, arguments: list[str]) -> str:
        completed = subprocess.run(
            ["flwr", *arguments],
            capture_output=True,
            env=self.environment(),
            cwd=self.workspace,
            timeout=120,
            check=False,
        )
        return completed.stdout.decode(errors="replace")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _wait_for_port(host: str, port: int, process: _Process) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise DeploymentError(
                f"{process.name} exited with code {process.popen.returncode}:\n"
                f"{process.tail()}"
            )
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise DeploymentError(
        f"{process.name} did not listen on {host}:{port} within "
        f"{STARTUP_TIMEOUT_S:.0f} s:\n{process.tail()}"
    )


def _wait_for_log(process: _Process, marker: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if marker in process.tail(200):
            return
        if process.popen.poll() is not None:
            raise DeploymentError(
                f"{process.name} exited with code {process.popen.returncode}:\n"
                f"{process.tail()}"
            )
        time.sleep(0.2)
    raise DeploymentError(
        f"{process.name} did not log {marker!r} within {STARTUP_TIMEOUT_S:.0f} s:\n"
        f"{process.tail()}"
    )


def _terminate(process: _Process, grace: float = 10.0) -> None:
    """Stop a process and its children (its own process group)."""
    if process.popen.poll() is not None:
        return
    try:
        os.killpg(process.popen.pid, signal.SIGTERM)
        process.popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("%s ignored SIGTERM for %.0f s; killing it", process.name, grace)
        os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=grace)
    except ProcessLookupError:
        return
    log.info("%s stopped", process.name)


def _toml_table(values: dict[str, object]) -> str:
    """Write flat key-value pairs as TOML. JSON string escapes are valid TOML ones."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
