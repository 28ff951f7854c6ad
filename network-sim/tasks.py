"""Tasks: the unit of work that a placement policy puts on a pool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .pools import Pool
    from .specs import WorkloadSpec


class TaskOwner(Protocol):
    """The stream or job that created a task and records what becomes of it."""

    name: str

    def finish(self, task: Task, pool: Pool) -> None: ...

    def drop(self, task: Task, reason: str) -> None: ...


class Task:
    """One inference request, training job or federated round's local training.

    ``origin`` is the site of the department the work belongs to, and
    ``district`` that department's district. A placement policy may set
    ``speedup`` and ``compressed`` when it serves a compressed model.
    """

    __slots__ = (
        "stream",
        "workload",
        "origin",
        "city",
        "district",
        "realtime",
        "top",
        "created",
        "work_factor",
        "units",
        "service_s",
        "speedup",
        "compressed",
        "enqueued",
        "started",
        "max_wait_s",
        "return_s",
        "network_s",
        "index",
    )

    def __init__(
        self,
        stream: TaskOwner,
        workload: WorkloadSpec,
        origin: str,
        city: str,
        district: str,
        created: float,
        work_factor: float = 1.0,
        *,
        top: bool = True,
        index: int = 0,
    ) -> None:
        self.stream = stream
        self.workload = workload
        self.origin = origin
        self.city = city
        self.district = district
        self.realtime = workload.kind == "inference"
        self.top = top
        self.created = created
        self.work_factor = work_factor
        self.units = workload.units
        self.service_s = 0.0
        self.speedup = 1.0
        self.compressed = False
        self.enqueued = created
        self.started = created
        self.max_wait_s = workload.max_wait_ms / 1000
        self.return_s = 0.0
        self.network_s = 0.0
        self.index = index  # arrival number within the stream, for traces

    @property
    def label(self) -> str:
        return f"{self.stream.name}#{self.index}"

    @property
    def memory_gb(self) -> float:
        return self.workload.memory_gb

    def work_on(self, pool: Pool) -> float:
        """Return the service time in seconds on one of the pool's units."""
        return (
            self.workload.work_s[pool.kind]
            * self.work_factor
            / (pool.speed * self.speedup)
        )
