"""Placement and scaling policies, and the architectures built from them.

A placement policy chooses the sites whose hardware an architecture powers
(and pays for) and, for each task, the pool that runs it. To try another
policy, subclass ``PlacementPolicy``, implement ``sites`` and ``place``, and
pass it inside an ``Architecture`` to ``simulate``::

    class EdgeFirst(PlacementPolicy):
        name = "edge_first"

        def sites(self, topology):
            return [s.name for s in topology.sites.values() if s.kind != "department"]

        def place(self, task):
            edge = self.cluster.edge_of(task.city, task.district)
            hub = self.cluster.hub_of(task.city)
            return self.fastest(task, self.cluster.pools_at(edge)) or self.fastest(
                task, self.cluster.pools_at(hub)
            )
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass

import simpy

from .cluster import Cluster
from .pools import Pool
from .specs import AutoscalingSpec, CompressionSpec, Scenario
from .tasks import Task
from .topology import Topology


class PlacementPolicy(ABC):
    """Chooses the powered sites and the pool for each task.

    ``batch_share`` is the largest share of a pool's active units that batch
    tasks (training, federated rounds) may hold; the rest stays free for
    real-time inference. ``queue_limit`` bounds each pool's real-time queue.
    """

    name = "policy"
    batch_share = 0.75
    queue_limit = 10_000

    def bind(self, cluster: Cluster) -> None:
        """Attach the run's cluster; the engine calls this before the run starts."""
        self.cluster = cluster
        self._network: dict[tuple[int, str, str], float] = {}

    @abstractmethod
    def sites(self, topology: Topology) -> list[str]:
        """Return the names of the sites whose pools this architecture powers."""

    @abstractmethod
    def place(self, task: Task) -> Pool | None:
        """Return the pool for the task, or None to drop it as unplaceable."""

    # Helpers for subclasses ---------------------------------------------------

    def can_run(self, task: Task, pool: Pool, memory_factor: float = 1.0) -> bool:
        """Return whether the pool has the kind, memory and units the task needs."""
        return (
            pool.kind in task.workload.work_s
            and task.memory_gb * memory_factor <= pool.memory_gb
            and task.units <= pool.count
        )

    def estimate_s(self, task: Task, pool: Pool, speedup: float = 1.0) -> float:
        """Estimate the task's response (inference) or turnaround (batch) time."""
        workload = task.workload
        key = (id(workload), task.origin, pool.name)
        network = self._network.get(key)
        if network is None:
            network = self._network[key] = self.network_s(task, pool)
        work = workload.work_s[pool.kind] * task.work_factor / (pool.speed * speedup)
        return network + pool.estimate_wait_s(task.realtime) + work

    def network_s(self, task: Task, pool: Pool) -> float:
        """Return the network time between the task's origin and the pool: the
        round trip and payloads for inference, the dataset upload for batch."""
        route = self.cluster.route(task.origin, pool.site.name)
        workload = task.workload
        if task.realtime:
            size = (workload.payload_kb + workload.response_kb) * 1e3
            return route.rtt_s + route.serialization_s(size)
        return route.serialization_s(workload.dataset_gb * 1e9)

    def fastest(self, task: Task, pools: list[Pool]) -> Pool | None:
        """Return the eligible pool with the lowest estimated time, if any."""
        best = None
        best_time = math.inf
        for pool in pools:
            if not self.can_run(task, pool):
                continue
            time = self.estimate_s(task, pool)
            if time < best_time:
                best, best_time = pool, time
        return best


class StaticPartition(PlacementPolicy):
    """Each department computes only on its own servers (isolated departments)."""

    name = "static_partition"

    def sites(self, topology: Topology) -> list[str]:
        return [
            site.name for site in topology.sites.values() if site.kind == "department"
        ]

    def place(self, task: Task) -> Pool | None:
        return self.fastest(task, self.cluster.pools_at(task.origin))


class CentralQueue(PlacementPolicy):
    """All work queues at the city's hub; districts' edge nodes are not built."""

    name = "central_queue"

    def sites(self, topology: Topology) -> list[str]:
        return [site.name for site in topology.sites.values() if site.kind == "hub"]

    def place(self, task: Task) -> Pool | None:
        return self.fastest(task, self.cluster.pools_at(self.cluster.hub_of(task.city)))


class LatencyAware(PlacementPolicy):
    """Placement between the district's edge node and the hub.

    Inference goes to the edge node while its estimate meets the target, and
    otherwise to the pool (edge or hub) with the lowest estimated response
    time. Batch work goes to the hub.

    With compression enabled, inference at an edge node runs a compressed model:
    ``speedup`` times faster, ``memory_factor`` times the memory, at an accuracy
    cost that the run reports.
    """

    name = "latency_aware"

    def __init__(self, compression: CompressionSpec | None = None) -> None:
        self.compression = compression or CompressionSpec()

    def sites(self, topology: Topology) -> list[str]:
        return [
            site.name
            for site in topology.sites.values()
            if site.kind in ("hub", "edge")
        ]

    def place(self, task: Task) -> Pool | None:
        hub_pools = self.cluster.pools_at(self.cluster.hub_of(task.city))
        if not task.realtime:
            return self.fastest(task, hub_pools)

        compression = self.compression
        speedup = compression.speedup if compression.enabled else 1.0
        memory_factor = compression.memory_factor if compression.enabled else 1.0
        target_s = task.workload.target_ms / 1000

        best, best_time, best_edge = None, math.inf, False
        edge_pools = self.cluster.pools_at(
            self.cluster.edge_of(task.city, task.district)
        )
        for pool in edge_pools:
            if self.can_run(task, pool, memory_factor):
                time = self.estimate_s(task, pool, speedup)
                if time <= target_s and time < best_time:
                    best, best_time, best_edge = pool, time, True
        if best is None:
            for pool in edge_pools:
                if self.can_run(task, pool, memory_factor):
                    time = self.estimate_s(task, pool, speedup)
                    if time < best_time:
                        best, best_time, best_edge = pool, time, True
            for pool in hub_pools:
                if self.can_run(task, pool):
                    time = self.estimate_s(task, pool)
                    if time < best_time:
                        best, best_time, best_edge = pool, time, False

        if best_edge and compression.enabled:
            task.speedup = speedup
            task.compressed = True
        return best


class QueueAutoscaler:
    """Starts and stops units of scalable pools (``min_active`` set) on queue length.

    Every ``interval_s``, a pool with queued tasks and no free unit starts one
    unit per ``scale_up_queue`` queued tasks, minus the units already starting.
    Units that stayed idle throughout the last ``scale_down_idle_s`` seconds
    are stopped, down to ``min_active``. A started unit costs from the moment
    it is started but takes tasks only after ``startup_s``.
    """

    def __init__(self, spec: AutoscalingSpec) -> None:
        self.spec = spec

    def start(self, env: simpy.Environment, pools: list[Pool]) -> None:
        """Set scalable pools to their minimum and start the control loop."""
        scalable = [pool for pool in pools if pool.spec.scalable]
        for pool in scalable:
            pool.active = pool.spec.min_active or 0
            pool.startup_s = self.spec.startup_s
        if scalable:
            env.process(self._loop(env, scalable))

    def _loop(self, env: simpy.Environment, pools: list[Pool]) -> Generator:
        spec = self.spec
        windows = max(1, math.ceil(spec.scale_down_idle_s / spec.interval_s))
        recent_peaks: dict[str, list[int]] = {pool.name: [] for pool in pools}
        while True:
            yield env.timeout(spec.interval_s)
            for pool in pools:
                peaks = recent_peaks[pool.name]
                peaks.append(max(pool.interval_max_busy, pool.busy))
                del peaks[:-windows]
                pool.interval_max_busy = pool.busy

                provisioned = pool.active + pool.starting
                wanted = math.ceil(pool.queued / spec.scale_up_queue)
                if pool.queued and pool.free <= 0 and wanted > pool.starting:
                    pool.add_units(wanted - pool.starting, spec.startup_s)
                elif not pool.queued and len(peaks) == windows:
                    idle = provisioned - max(peaks)
                    if idle > 0:
                        pool.stop_units(idle, pool.spec.min_active or 0)


@dataclass
class Architecture:
    """A named placement policy with an optional autoscaler."""

    name: str
    label: str
    placement: PlacementPolicy
    scaler: QueueAutoscaler | None = None


def default_architectures(scenario: Scenario) -> list[Architecture]:
    """Return the three architectures that ``compare`` runs, in order."""
    return [
        Architecture("isolated", "isolated departments", StaticPartition()),
        Architecture(
            "hub", "hub only", CentralQueue(), QueueAutoscaler(scenario.autoscaling)
        ),
        Architecture(
            "hub_edge",
            "hub plus edge",
            LatencyAware(scenario.compression),
            QueueAutoscaler(scenario.autoscaling),
        ),
    ]


ARCHITECTURE_NAMES = ("isolated", "hub", "hub_edge")
