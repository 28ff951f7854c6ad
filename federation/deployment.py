"""Run jobs on a real Flower deployment: one SuperLink and one SuperNode per city.

``LocalFederation`` starts ``flower-superlink`` and one ``flower-supernode`` per
city as subprocesses on 127.0.0.1, each in its own process group, and stops them
again. A job is submitted with ``flwr run`` as a Flower App whose components are
this package's ServerApp and ClientApp (``citymesh.federation.server_app:app``
and ``citymesh.federation.client_app:app``). Each SuperNode's node config carries
the city's name, data path and usage log path, so the ClientApp reads only its
own file.

Security (``tls=True``, the default): citymesh creates a certificate authority
and a server certificate for 127.0.0.1 in ``workspace/credentials`` (see
``credentials``). The SuperLink serves TLS and requires SuperNode
authentication: each city's SuperNode gets its own ECDSA key, whose public half
is registered with ``flwr supernode register`` before the node starts, and the
SuperLink rejects a node whose key it does not know.

Speed (``clientapp_workers=True``, the default): each SuperNode runs with
``--isolation process`` and citymesh starts one long-running ClientApp process
per city (``worker``), which a supervisor thread restarts when it dies. The
ServerApp polls for replies every ``grids.REPLY_POLL_S`` seconds instead of
Flower's 3 s, and ``flower-superexec`` polls for new runs every
``SUPEREXEC_POLL_S`` seconds. The SuperNode still waits 3 s after a poll that
finds no message (fixed in Flower 1.42's ``start_client_internal``), so each
exchange between hub and city takes up to 3 s more than the work.

Flower 1.42 serves the SuperLink's Fleet, Control and Runtime APIs on one HTTP
port. It has no Python call that returns a run's result. So ``flwr run --format
json`` returns the run id, ``flwr ls --run-id`` its status, and the ServerApp
writes its result files into the run config's ``output-dir``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from citymesh.errors import AuthError, CitymeshError, InvalidInput

from .credentials import NodeKey, TlsFiles, make_node_key, make_tls_files
from .server_app import RESULT_FILE
from .spec import JobSpec

log = logging.getLogger("citymesh.federation")

HOST = "127.0.0.1"
CONNECTION_NAME = "citymesh"
APP_NAME = "citymesh-job"
STARTUP_TIMEOUT_S = 60.0
# How often ``wait`` looks for the result file, and how often it requests the
# run's status from the SuperLink (each ``flwr ls`` starts a Python process).
RESULT_POLL_S = 0.2
STATUS_POLL_S = 5.0
# Read by flower-superexec (Flower 1.42, run_superexec.py); its default is 1 s.
SUPEREXEC_POLL_S = 0.2
SUPERVISE_INTERVAL_S = 0.5
# A worker that dies this many times, each within RESTART_WINDOW_S of its
# start, is left stopped, because restarting it again would only repeat the
# failure.
MAX_QUICK_RESTARTS = 5
RESTART_WINDOW_S = 30.0

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
contribution-method = ""
"""


class DeploymentError(CitymeshError):
    """A SuperLink, SuperNode or Flower run failed."""


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Worker:
    """A city's long-running ClientApp process and how to start it again."""

    city: str
    command: list[str]
    process: _Process
    restarts: int = 0
    quick_failures: int = 0
    keep_running: bool = True


@dataclass
class LocalFederation:
    """A SuperLink and one SuperNode per city, as subprocesses on 127.0.0.1.

    ``nodes`` maps a city to its node config (``data-path``, optionally
    ``usage-log``, ``dataset-id`` and the other keys ``client_app`` reads;
    ``city`` is added). Use as a context manager, or call ``start`` and
    ``stop``. ``tls`` turns on TLS and SuperNode authentication;
    ``clientapp_workers`` runs one long-running ClientApp process per city
    instead of a fresh ``flwr-clientapp`` process per message.
    """

    workspace: Path
    nodes: dict[str, dict[str, object]]
    port: int = 0
    tls: bool = True
    clientapp_workers: bool = True
    processes: list[_Process] = field(default_factory=list)
    workers: dict[str, _Worker] = field(default_factory=dict)
    node_ids: dict[str, int] = field(default_factory=dict)
    tls_files: TlsFiles | None = None

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace)
        if not self.nodes:
            raise InvalidInput("a federation needs at least one city node")
        self._outputs: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    # Lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink, then the SuperNodes, and wait until all are up."""
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port()
        self._stopping.clear()
        command = [
            "flower-superlink",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--database",
            str(self.workspace / "superlink.db"),
        ]
        if self.tls:
            self.tls_files = make_tls_files(self.credentials_dir, (HOST,))
            command += [
                "--ssl-ca-certfile",
                str(self.tls_files.ca_certificate),
                "--ssl-certfile",
                str(self.tls_files.certificate),
                "--ssl-keyfile",
                str(self.tls_files.private_key),
                "--enable-supernode-auth",
            ]
        else:
            command.append("--insecure")
        self._write_flower_config()
        superlink = self._spawn("superlink", command)
        _wait_for_port(HOST, self.port, superlink)
        log.info(
            "SuperLink started on %s:%d (%s)",
            HOST,
            self.port,
            "TLS, SuperNode authentication" if self.tls else "insecure",
        )

        # The nodes start in parallel, because each spends seconds starting Python.
        with ThreadPoolExecutor(
            len(self.nodes), thread_name_prefix="supernode"
        ) as pool:
            starts = [
                pool.submit(self.add_node, city, config)
                for city, config in sorted(self.nodes.items())
            ]
            for started in starts:
                started.result()
        if self.clientapp_workers:
            self._supervisor = threading.Thread(
                target=self._supervise, name="clientapp-supervisor", daemon=True
            )
            self._supervisor.start()

    @property
    def credentials_dir(self) -> Path:
        """Folder of the CA, the server certificate and the SuperNode keys."""
        return self.workspace / "credentials"

    def add_node(
        self, city: str, config: dict[str, object], *, register: bool = True
    ) -> None:
        """Start a SuperNode for ``city`` and wait until the SuperLink accepted it.

        With TLS, the node's public key is registered first, unless ``register``
        is False: the SuperLink then rejects the node and this method raises
        AuthError.
        """
        config_path = self.workspace / f"node-{city}.toml"
        config_path.write_text(_toml_table({**config, "city": city}))
        runtime_port = _free_port()
        command = [
            "flower-supernode",
            "--superlink",
            f"{HOST}:{self.port}",
            "--host",
            HOST,
            "--port",
            str(runtime_port),
            "--node-config",
            str(config_path),
        ]
        if self.tls:
            assert self.tls_files is not None
            key = make_node_key(self.credentials_dir, f"supernode-{city}")
            if register:
                self.node_ids[city] = self._register(city, key)
            command += [
                "--root-certificates",
                str(self.tls_files.ca_certificate),
                "--auth-supernode-private-key",
                str(key.private_key),
            ]
        else:
            command.append("--insecure")
        secret_path = self.credentials_dir / f"superexec-{city}.secret"
        if self.clientapp_workers:
            _write_secret(secret_path)
            command += [
                "--isolation",
                "process",
                "--superexec-auth-secret-file",
                str(secret_path),
            ]
        node = self._spawn(f"supernode-{city}", command)
        try:
            _wait_for_log(node, "SuperNode ID")
        except DeploymentError as exc:
            if self.tls and not register:
                raise AuthError(
                    f"the SuperLink rejected the SuperNode of city {city!r}, whose "
                    "key is not registered; register it with `flwr supernode "
                    f"register`:\n{node.tail()}"
                ) from exc
            raise
        self.nodes[city] = dict(config)
        log.info("SuperNode for city %s registered", city)
        if self.clientapp_workers:
            self._start_worker(city, runtime_port, secret_path)

    def stop_node(self, city: str) -> None:
        """Stop the SuperNode of ``city`` and its ClientApp process."""
        with self._lock:
            worker = self.workers.get(city)
            if worker is not None:
                worker.keep_running = False
                _terminate(worker.process)
        for process in self.processes:
            if process.name == f"supernode-{city}":
                _terminate(process)

    def stop(self) -> None:
        """Stop every process this federation started, SuperNodes first."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5.0)
            self._supervisor = None
        with self._lock:
            for worker in self.workers.values():
                worker.keep_running = False
            workers = [worker.process for worker in self.workers.values()]
            self.workers.clear()
        # ClientApp processes and SuperNodes stop together, then the SuperLink.
        nodes = [p for p in self.processes if p.name != "superlink"]
        _terminate_all([*workers, *nodes])
        _terminate_all([p for p in self.processes if p.name == "superlink"])
        self.processes.clear()

    # Runs ---------------------------------------------------------------------------

    def submit(
        self,
        spec: JobSpec,
        output_dir: Path,
        max_update_norm: float | None = None,
        extra_config: dict[str, object] | None = None,
    ) -> str:
        """Start the job as a Flower run and return its run id.

        ``extra_config`` adds run config keys that the app declares (see
        ``APP_PYPROJECT``), such as ``contribution-method``.
        """
        app_dir = self.workspace / "app"
        app_dir.mkdir(parents=True, exist_ok=True)
        (app_dir / "pyproject.toml").write_text(APP_PYPROJECT.format(name=APP_NAME))
        overrides = self.workspace / f"run-{_file_safe(spec.id)}.toml"
        output_dir = Path(output_dir).resolve()
        run_config: dict[str, object] = {
            **(extra_config or {}),
            "job-spec": spec.to_json(),
            "output-dir": str(output_dir),
            "max-update-norm": float(max_update_norm or 0.0),
        }
        overrides.write_text(_toml_table(run_config))
        output = self._flwr(
            ["run", str(app_dir), CONNECTION_NAME, "--run-config", str(overrides)]
        )
        run_id = str(output.get("run-id") or "")
        if not output.get("success") or not run_id:
            raise DeploymentError(f"flwr run did not start the job: {output!r}")
        self._outputs[run_id] = output_dir
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
        """Wait until the run finishes; raise DeploymentError unless it completed.

        The ServerApp writes its result file last, so this method watches for
        the file and requests the status from the SuperLink only every
        ``STATUS_POLL_S`` seconds until then.
        """
        deadline = time.monotonic() + timeout
        result = self._outputs.get(run_id, Path("/nonexistent")) / RESULT_FILE
        next_status = time.monotonic()
        while True:
            finished = result.exists()
            if finished or time.monotonic() >= next_status:
                status = self.status(run_id)
                if status.startswith("finished"):
                    break
                next_status = time.monotonic() + (
                    RESULT_POLL_S if finished else STATUS_POLL_S
                )
            if time.monotonic() > deadline:
                self._flwr_plain(["stop", run_id, CONNECTION_NAME])
                raise DeploymentError(
                    f"Flower run {run_id} timed out after {timeout:.0f} s "
                    f"(status {status!r}); it was stopped"
                )
            time.sleep(RESULT_POLL_S)
        if status != "finished:completed":
            logs = self._flwr_plain(["log", run_id, CONNECTION_NAME, "--show"])
            tail = "\n".join(logs.splitlines()[-30:])
            raise DeploymentError(
                f"Flower run {run_id} ended with status {status!r}. Last log lines:\n"
                f"{tail}"
            )

    def list_nodes(self) -> list[dict[str, object]]:
        """Return the SuperLink's SuperNodes as ``flwr supernode list`` shows them."""
        output = self._flwr(["supernode", "list", CONNECTION_NAME])
        return list(output.get("nodes") or [])  # type: ignore[call-overload]

    # ClientApp workers --------------------------------------------------------------

    def worker_pid(self, city: str) -> int | None:
        """Return the process id of the city's ClientApp worker, if it runs."""
        with self._lock:
            worker = self.workers.get(city)
            if worker is None or worker.process.popen.poll() is not None:
                return None
            return worker.process.popen.pid

    def worker_restarts(self, city: str) -> int:
        """Return how often the supervisor restarted the city's worker."""
        with self._lock:
            worker = self.workers.get(city)
            return worker.restarts if worker is not None else 0

    def _start_worker(self, city: str, runtime_port: int, secret_path: Path) -> None:
        command = [
            sys.executable,
            "-m",
            "citymesh.federation.worker",
            "--runtime-api-address",
            f"{HOST}:{runtime_port}",
            "--auth-secret-file",
            str(secret_path),
            "--parent-pid",
            str(os.getpid()),
            "--preload",
            "citymesh.federation.client_app",
        ]
        process = self._spawn(f"clientapp-{city}", command, track=False)
        with self._lock:
            self.workers[city] = _Worker(city, command, process)
        log.info(
            "ClientApp worker for city %s started (pid %d)", city, process.popen.pid
        )

    def _supervise(self) -> None:
        """Restart ClientApp workers that exited while their SuperNode runs."""
        while not self._stopping.wait(SUPERVISE_INTERVAL_S):
            with self._lock:
                for worker in self.workers.values():
                    self._check_worker(worker)

    def _check_worker(self, worker: _Worker) -> None:
        code = worker.process.popen.poll()
        if code is None or not worker.keep_running or self._stopping.is_set():
            return
        lived = time.monotonic() - worker.process.started
        worker.quick_failures = (
            worker.quick_failures + 1 if lived < RESTART_WINDOW_S else 0
        )
        if worker.quick_failures > MAX_QUICK_RESTARTS:
            log.error(
                "ClientApp worker for city %s exited with code %s %d times in a "
                "row within %.0f s of its start; it stays stopped:\n%s",
                worker.city,
                code,
                worker.quick_failures,
                RESTART_WINDOW_S,
                worker.process.tail(),
            )
            worker.keep_running = False
            return
        worker.restarts += 1
        log.warning(
            "ClientApp worker for city %s exited with code %s; restarting it "
            "(restart %d)",
            worker.city,
            code,
            worker.restarts,
        )
        worker.process = self._spawn(
            f"clientapp-{worker.city}", worker.command, track=False
        )

    # Helpers ------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """Return the environment of every Flower process this federation starts."""
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.workspace / "flwr-home")
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(SUPEREXEC_POLL_S)
        env["OMP_NUM_THREADS"] = "1"
        # The Flower executables live next to this interpreter, also when the
        # virtual environment is not activated.
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        return env

    def _register(self, city: str, key: NodeKey) -> int:
        """Register the city's public key with the SuperLink; return the node id."""
        output = self._flwr(
            [
                "supernode",
                "register",
                str(key.public_key),
                CONNECTION_NAME,
                "--name",
                city,
            ]
        )
        node_id = output.get("node-id")
        if not output.get("success") or node_id is None:
            raise DeploymentError(
                f"flwr supernode register failed for city {city!r}: {output!r}"
            )
        log.info("registered the SuperNode key of city %s as node %s", city, node_id)
        return int(node_id)  # type: ignore[call-overload]

    def _write_flower_config(self) -> None:
        home = self.workspace / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        lines = [
            "[superlink]",
            f'default = "{CONNECTION_NAME}"',
            "",
            f"[superlink.{CONNECTION_NAME}]",
            f'address = "{HOST}:{self.port}"',
        ]
        if self.tls_files is not None:
            lines.append(
                f"root-certificates = {json.dumps(str(self.tls_files.ca_certificate))}"
            )
        else:
            lines.append("insecure = true")
        (home / "config.toml").write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, command: list[str], track: bool = True) -> _Process:
        executable = shutil.which(command[0], path=self.environment()["PATH"])
        if executable is None:
            raise DeploymentError(
                f"{command[0]!r} not found; install flwr in this Python environment"
            )
        log_path = self.workspace / f"{name}.log"
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                [executable, *command[1:]],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.workspace,
                start_new_session=True,
            )
        process = _Process(name, popen, log_path)
        if track:
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


def _write_secret(path: Path) -> None:
    """Write 32 random bytes to ``path`` with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(secrets.token_bytes(32))


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


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
    _terminate_all([process], grace)


def _terminate_all(processes: list[_Process], grace: float = 10.0) -> None:
    """Send SIGTERM to each process group, then wait; SIGKILL after ``grace`` s."""
    running = [p for p in processes if p.popen.poll() is None]
    for process in running:
        try:
            os.killpg(process.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning(
                "%s ignored SIGTERM for %.0f s; killing it", process.name, grace
            )
            try:
                os.killpg(process.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            process.popen.wait(timeout=grace)
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
