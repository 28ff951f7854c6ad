"""A long-running ClientApp process for one SuperNode.

A SuperNode started with ``--isolation process`` runs no ClientApp itself: it
queues one task per message and waits for an outside process to claim it
through its Runtime API. Flower's own executor, ``flower-superexec``, starts a
fresh ``flwr-clientapp`` process per task, so every message pays for a Python
start, the torch import and reading the city's Parquet file again.

This worker claims the tasks itself and runs each one in its own process, one
after another. It does per task what ``flwr-clientapp`` does, with Flower's own
functions (``flwr.supernode.runtime.run_clientapp``): pull the message, context,
run and FAB; load the ClientApp the FAB names; call it; push the reply and the
updated context. The ClientApp module stays imported, so its per-job cache of
the city's split and encoded rows survives from round to round.

Because the worker keeps the code it imported, it exits with code
``CODE_CHANGED_EXIT`` when a source file of this package changes on disk, and
its supervisor (``deployment.LocalFederation``) starts it again. Otherwise a
node would check an operator's approval against the new code (see
``approval.code_digest``) while it runs the old.

Flower internals used (Flower 1.42): ``RuntimeHttpClient``, the Runtime API
request types, and ``pull_task_input``, ``push_message`` and
``push_task_output`` of ``run_clientapp``; the same calls ``flwr-clientapp``
makes.

Run: python -m citymesh.federation.worker --runtime-api-address 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import (
    pull_task_input,
    push_message,
    push_task_output,
)

log = logging.getLogger("citymesh.federation")

DEFAULT_POLL_INTERVAL_S = 0.2
CODE_CHANGED_EXIT = 3
PACKAGE_DIR = Path(__file__).resolve().parent
# The Runtime API method that hands out task tokens, which a SuperNode started
# with --superexec-auth-secret-file accepts only when signed with the secret.
ACQUIRE_TASK_METHOD = "/flwr.proto.Runtime/AcquireTask"


class ClientAppWorker:
    """Claim ClientApp tasks from a SuperNode's Runtime API and run them here."""

    def __init__(
        self,
        runtime_api_address: str,
        *,
        root_certificates: bytes | None = None,
        auth_secret: bytes | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> None:
        self.address = runtime_api_address
        self.root_certificates = root_certificates
        self.poll_interval_s = poll_interval_s
        self.stopping = threading.Event()
        self.tasks = 0
        interceptors: list[object] = [
            RuntimeVersionHttpInterceptor(component_name="SuperExec")
        ]
        if auth_secret:
            interceptors.append(
                SuperExecAuthHttpInterceptor(
                    master_secret=auth_secret,
                    protected_methods={ACQUIRE_TASK_METHOD},
                )
            )
        self._client = self._runtime_client(interceptors)
        self._load_client_app = get_load_client_app_fn(
            default_app_ref="", app_path=None, multi_app=True
        )
        self._installed: set[str] = set()
        self._code_version = code_version()
        self.code_changed = False

    def serve(self) -> None:
        """Run tasks until ``stop`` is called; a running task finishes first.

        Returns early, with ``code_changed`` set, when this package's source
        files change on disk.
        """
        log.info("ClientApp worker polling %s", self.address)
        try:
            while not self.stopping.is_set():
                if code_version() != self._code_version:
                    log.warning("federation code changed on disk; the worker exits")
                    self.code_changed = True
                    return
                response = self._client.AcquireTask(
                    AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
                )
                if response.HasField("task") and response.token:
                    self.run_task(response.token)
                else:
                    self.stopping.wait(self.poll_interval_s)
        finally:
            self._client.close()
            log.info("ClientApp worker stopped after %d task(s)", self.tasks)

    def stop(self) -> None:
        """Ask ``serve`` to return after the current task."""
        self.stopping.set()

    def run_task(self, token: str) -> None:
        """Run one ClientApp task, as one ``flwr-clientapp`` process would."""
        client = self._runtime_client(
            [
                RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                RuntimeTokenHttpInterceptor(token),
            ]
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message: Message | None = None
        context: Context | None = None
        reply: Message | None = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, run, fab = pull_task_input(client)
            if fab.hash_str not in self._installed:
                install_from_fab(fab.content, skip_prompt=True)
                self._installed.add(fab.hash_str)
            client_app: ClientApp = self._load_client_app(
                run.fab_id, run.fab_version, fab.hash_str
            )
            reply = client_app(message=message, context=context)
            sub_status, details = SubStatus.COMPLETED, ""
        # As flwr-clientapp does, any ClientApp failure becomes an error reply.
        except Exception as exc:  # noqa: BLE001
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            if isinstance(exc, LoadClientAppError):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            details = f"{type(exc)}:<'{exc}'>"
            log.warning("ClientApp task failed: %r", exc)
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client, context, sub_status, details)
        finally:
            heartbeat.stop()
            client.close()
            self.tasks += 1

    def _runtime_client(self, interceptors: list[object]) -> RuntimeHttpClient:
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.root_certificates is None,
            root_certificates=self.root_certificates,
            interceptors=interceptors,
            retry_invoker=make_simple_http_retry_invoker(),
        )


def code_version() -> tuple[tuple[str, int, int], ...]:
    """Return name, size and modification time of this package's source files."""
    files = sorted(PACKAGE_DIR.glob("*.py"))
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def main(argv: list[str] | None = None) -> None:
    """Start a worker from the command line; SIGTERM or SIGINT stop it."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO, several a second while the worker polls.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for module in args.preload:
        importlib.import_module(module)

    worker = ClientAppWorker(
        args.runtime_api_address,
        root_certificates=(
            args.root_certificates.read_bytes() if args.root_certificates else None
        ),
        auth_secret=(
            args.auth_secret_file.read_bytes() if args.auth_secret_file else None
        ),
        poll_interval_s=args.poll_interval,
    )
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: worker.stop())
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)

    log.info("ClientApp worker started (pid %d)", os.getpid())
    worker.serve()
    if worker.code_changed:
        sys.exit(CODE_CHANGED_EXIT)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runtime-api-address",
        required=True,
        help="host:port of the SuperNode's Runtime API",
    )
    parser.add_argument(
        "--root-certificates",
        type=Path,
        help="PEM file of the CA that signed the Runtime API's certificate; "
        "without it the worker connects without TLS",
    )
    parser.add_argument(
        "--auth-secret-file",
        type=Path,
        help="file with the secret the SuperNode was given in "
        "--superexec-auth-secret-file",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL_S,
        help="seconds between requests for a new task",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="stop when the process with this id exits",
    )
    parser.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module at start (repeatable), so the first task does "
        "not pay for it",
    )
    return parser


if __name__ == "__main__":
    main()
