"""A federated job's folder in a network folder: ``<network>/jobs/<job_id>/``.

The folder holds::

    spec.toml           the job spec as submitted
    status.json         state (queued, running, succeeded, failed), round, error
    job.log             the run's log lines
    metrics.json        pooled and per-city metrics of every round
    privacy.json        the (epsilon, delta) spent, per job and per dataset
    contributions.json  per-city size share, leave-one-out and Shapley values
    model.pt            the final torch state dict
    model.onnx          the exported model (model.ts: TorchScript, without onnx)
    encoding.json       the feature encoding the exported model expects
    settlement.json     the on-chain settlement of the job's budget
    result.json         a summary of all of the above

Every file is written to a temporary file in the folder and renamed into place,
so a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from citymesh.errors import InvalidInput, NotFound

__all__ = [
    "FINAL_STATES",
    "JOB_STATES",
    "JobFolder",
    "atomic_write_bytes",
    "atomic_write_json",
]

JOB_STATES = ("queued", "running", "succeeded", "failed")
FINAL_STATES = ("succeeded", "failed")
JOBS_DIR = "jobs"
STATUS_FILE = "status.json"
LOG_FILE = "job.log"
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Loggers whose records a job's log keeps: citymesh's components and Flower.
LOGGED_NAMES = ("citymesh", "flwr")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(path, text.encode())


def utc_now() -> str:
    """Return the current time as ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it can name a folder, else raise InvalidInput."""
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidInput(
            f"job id {job_id!r} is invalid: use 1 to 128 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit; set job_id in the spec"
        )
    return job_id


class JobFolder:
    """The files of one job in a network folder."""

    def __init__(self, network_dir: Path, job_id: str) -> None:
        self.job_id = check_job_id(job_id)
        self.path = Path(network_dir) / JOBS_DIR / job_id

    @classmethod
    def find(cls, network_dir: Path, job_id: str) -> JobFolder:
        """Return the folder of an existing job, or raise NotFound."""
        folder = cls(network_dir, job_id)
        if not (folder.path / STATUS_FILE).is_file():
            raise NotFound(
                f"job {job_id!r} not found in {str(network_dir)!r}; list the jobs "
                f"in {str(Path(network_dir) / JOBS_DIR)!r}"
            )
        return folder

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    def file(self, name: str) -> Path:
        return self.path / name

    def create(self) -> None:
        """Create the folder for a new run.

        A failed job's folder is reused: its files go, except job.log, which the
        new run appends to. Raises InvalidInput when the job exists in any other
        state.
        """
        if (self.path / STATUS_FILE).is_file():
            state = self.status().get("state")
            if state != "failed":
                raise InvalidInput(
                    f"job {self.job_id!r} already exists with state {state!r}; "
                    "give the spec a new job_id"
                )
            for path in self.path.iterdir():
                if path.is_file() and path.name not in (LOG_FILE, STATUS_FILE):
                    path.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def status(self) -> dict[str, Any]:
        """Return the contents of status.json."""
        return dict(json.loads((self.path / STATUS_FILE).read_text()))

    def set_state(self, state: str, **fields: Any) -> dict[str, Any]:
        """Update status.json with ``state`` and ``fields``, and return it."""
        if state not in JOB_STATES:
            raise InvalidInput(f"job state {state!r} is unknown; use {JOB_STATES!r}")
        path = self.path / STATUS_FILE
        status = self.status() if path.is_file() else {"job_id": self.job_id}
        if state == "queued":
            # A new run starts from a clean record, also after a failed run.
            status = {"job_id": self.job_id, "created": utc_now()}
        status.update(fields)
        status["state"] = state
        status["updated"] = utc_now()
        if state == "running" and "started" not in fields:
            status.setdefault("started", status["updated"])
        if state in FINAL_STATES:
            status["finished"] = status["updated"]
        atomic_write_json(path, status)
        return status

    def update(self, **fields: Any) -> None:
        """Add ``fields`` to status.json without changing the state."""
        status = self.status()
        self.set_state(str(status["state"]), **fields)

    def write_json(self, name: str, data: Any) -> Path:
        """Write one of the job's JSON files atomically and return its path."""
        path = self.path / name
        atomic_write_json(path, data)
        return path

    def read_json(self, name: str) -> Any:
        """Return one of the job's JSON files, or raise NotFound."""
        path = self.path / name
        if not path.is_file():
            raise NotFound(f"job {self.job_id!r} has no {name}")
        return json.loads(path.read_text())

    @contextmanager
    def logging(self) -> Iterator[logging.Logger]:
        """Copy citymesh's and Flower's log records into job.log while in the block.

        Yields the ``citymesh.jobs`` logger for the job's own lines.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
        handler.addFilter(_skip_flower_info)
        loggers = [logging.getLogger(name) for name in LOGGED_NAMES]
        for logger in loggers:
            logger.addHandler(handler)
        # citymesh's own INFO lines always reach the file.
        own = logging.getLogger("citymesh")
        own_level = own.level
        if own.getEffectiveLevel() > logging.INFO:
            own.setLevel(logging.INFO)
        try:
            yield logging.getLogger("citymesh.jobs")
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
            own.setLevel(own_level)
            handler.close()


def _skip_flower_info(record: logging.LogRecord) -> bool:
    """Keep Flower's warnings and errors only: its INFO lines repeat every round."""
    return not record.name.startswith("flwr") or record.levelno >= logging.WARNING
