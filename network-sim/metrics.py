"""Run results: utilization, latency percentiles, targets met, energy and cost."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .arrivals import HOURS_PER_DAY, SECONDS_PER_HOUR

if TYPE_CHECKING:
    from .engine import Simulation
    from .pools import Pool

JOULES_PER_KWH = 3.6e6
REALTIME_TARGET_MS = 100.0


@dataclass
class PoolReport:
    """Utilization, energy and cost of one pool."""

    name: str
    site_kind: str
    kind: str
    units: int
    active_unit_hours: float
    busy_unit_hours: float
    utilization: float  # busy / active unit-time
    tasks: int
    energy_kwh: float
    cost: float


@dataclass
class WorkloadReport:
    """Outcomes of one department's workload.

    Durations are in seconds. They are response times for inference,
    turnaround (arrival to end of the job) for training and federated jobs,
    and completion times for transfers.
    """

    name: str
    kind: str
    city: str
    department: str
    district: str
    category: str
    arrived: int
    completed: int
    dropped: dict[str, int]
    in_progress: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    target_ms: float | None
    within_target: float | None  # share of arrived requests
    compressed: float | None  # share of completed requests served compressed


@dataclass
class LatencySummary:
    """Response times of all real-time inference requests in a run, in ms.

    Shares count arrived requests, so dropped requests count as late.
    """

    requests: int
    completed: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    within_50ms: float | None
    within_100ms: float | None
    within_target: float | None
    # Requests whose target is 100 ms or less, and their share completed in 100 ms.
    realtime_requests: int
    realtime_within_100ms: float | None


@dataclass
class DistrictReport:
    """Inference latency of the requests sent from one district's departments."""

    name: str
    requests: int
    p99_ms: float | None
    network_p99_ms: float | None  # round trip and payloads, without queue or compute


@dataclass
class Conservation:
    """Final state of every top-level request; ``arrived`` is the sum of the rest."""

    arrived: int
    completed: int
    dropped: int
    in_transit: int
    queued: int
    running: int


@dataclass
class RunResult:
    """Everything one run measured. ``to_dict`` gives the JSON form."""

    scenario: str
    architecture: str
    label: str
    seed: int
    hours: float
    events: int
    wall_s: float
    utilization: float
    utilization_by_kind: dict[str, float]
    energy_kwh: float
    cost: float  # pools plus site costs over the run
    site_cost: float
    cost_per_day: float
    accuracy_cost_pct: float
    inference: LatencySummary
    districts: list[DistrictReport]
    workloads: list[WorkloadReport]
    workload_groups: list[WorkloadReport]  # one per workload name, all departments
    pools: list[PoolReport]
    conservation: Conservation
    network_gb: float
    bin_minutes: float
    utilization_timeline: list[float]
    active_units_timeline: list[float]
    latencies_ms: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latencies_ms"]
        return data


def _percentiles(values: np.ndarray, scale: float = 1.0) -> tuple[float | None, ...]:
    if len(values) == 0:
        return (None, None, None)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return (float(p50) * scale, float(p95) * scale, float(p99) * scale)


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def _pool_report(pool: Pool, energy_price: float, hours: float) -> PoolReport:
    spec = pool.spec
    idle_s = max(0.0, pool.active_s - pool.busy_s)
    joules = pool.busy_s * spec.power_busy_w + idle_s * spec.power_idle_w
    energy_kwh = joules / JOULES_PER_KWH * pool.site.pue
    active_hours = pool.active_s / SECONDS_PER_HOUR
    cost = (
        pool.count * hours * spec.cost_per_hour
        + active_hours * spec.active_cost_per_hour
        + energy_kwh * energy_price
    )
    return PoolReport(
        name=pool.name,
        site_kind=pool.site.kind,
        kind=pool.kind,
        units=pool.count,
        active_unit_hours=pool.active_s / SECONDS_PER_HOUR,
        busy_unit_hours=pool.busy_s / SECONDS_PER_HOUR,
        utilization=pool.busy_s / pool.active_s if pool.active_s else 0.0,
        tasks=pool.started_tasks,
        energy_kwh=energy_kwh,
        cost=cost,
    )


def build_result(sim: Simulation, wall_s: float) -> RunResult:
    """Collect the measurements of a finished simulation."""
    price = sim.scenario.energy_price_per_kwh
    pools = [_pool_report(pool, price, sim.hours) for pool in sim.cluster.pools]
    site_cost = sum(
        pools_at_site[0].site.site_cost_per_hour * sim.hours
        for pools_at_site in sim.cluster.pools_by_site.values()
        if pools_at_site
    )

    busy = sum(pool.busy_s for pool in sim.cluster.pools)
    active = sum(pool.active_s for pool in sim.cluster.pools)
    by_kind: dict[str, list[float]] = {}
    for pool in sim.cluster.pools:
        sums = by_kind.setdefault(pool.kind, [0.0, 0.0])
        sums[0] += pool.busy_s
        sums[1] += pool.active_s
    utilization_by_kind = {
        kind: (b / a if a else 0.0) for kind, (b, a) in sorted(by_kind.items())
    }

    bins = len(sim.cluster.pools[0].bin_busy) if sim.cluster.pools else 0
    timeline, active_units = [], []
    for index in range(bins):
        bin_busy = sum(pool.bin_busy[index] for pool in sim.cluster.pools)
        bin_active = sum(pool.bin_active[index] for pool in sim.cluster.pools)
        timeline.append(bin_busy / bin_active if bin_active else 0.0)
        width = min(sim.bin_s, sim.horizon_s - index * sim.bin_s)
        active_units.append(bin_active / width if width > 0 else 0.0)

    workloads = [_workload_report([stream]) for stream in sim.streams]
    groups: dict[tuple[str, str], list] = {}
    for stream in sim.streams:
        groups.setdefault((stream.workload.kind, stream.workload.name), []).append(
            stream
        )
    workload_groups = [
        _workload_report(members) for _, members in sorted(groups.items())
    ]
    inference = [s for s in sim.streams if s.workload.kind == "inference"]
    latencies = (
        np.concatenate([np.frombuffer(s.durations, dtype=float) for s in inference])
        if inference
        else np.empty(0)
    )
    requests = sum(s.arrived for s in inference)
    realtime = [s for s in inference if s.workload.target_ms <= REALTIME_TARGET_MS]
    completed = sum(s.completed for s in inference)
    p50, p95, p99 = _percentiles(latencies, 1000)
    summary = LatencySummary(
        requests=requests,
        completed=completed,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        within_50ms=_share(int(np.sum(latencies <= 0.050 + 1e-12)), requests),
        within_100ms=_share(int(np.sum(latencies <= 0.100 + 1e-12)), requests),
        within_target=_share(sum(s.within_target for s in inference), requests),
        realtime_requests=sum(s.arrived for s in realtime),
        realtime_within_100ms=_share(
            sum(
                int(np.sum(np.frombuffer(s.durations) <= 0.100 + 1e-12))
                for s in realtime
            ),
            sum(s.arrived for s in realtime),
        ),
    )
    compressed = sum(s.compressed for s in inference)
    accuracy_cost = (
        compressed * sim.scenario.compression.accuracy_cost_pct / completed
        if completed
        else 0.0
    )

    energy = sum(pool.energy_kwh for pool in pools)
    cost = sum(pool.cost for pool in pools) + site_cost
    tally = sim.tally
    conservation = Conservation(
        arrived=sum(s.arrived for s in sim.streams),
        completed=sum(s.completed for s in sim.streams),
        dropped=sum(sum(s.dropped.values()) for s in sim.streams),
        in_transit=tally[0],
        queued=tally[1],
        running=tally[2],
    )
    return RunResult(
        scenario=sim.scenario.name,
        architecture=sim.architecture.name,
        label=sim.architecture.label,
        seed=sim.seed,
        hours=sim.hours,
        events=sim.events,
        wall_s=wall_s,
        utilization=busy / active if active else 0.0,
        utilization_by_kind=utilization_by_kind,
        energy_kwh=energy,
        cost=cost,
        site_cost=site_cost,
        cost_per_day=cost * HOURS_PER_DAY / sim.hours,
        accuracy_cost_pct=accuracy_cost,
        inference=summary,
        districts=_district_reports(inference),
        workloads=workloads,
        workload_groups=workload_groups,
        pools=pools,
        conservation=conservation,
        network_gb=sim.network.bytes_sent / 1e9,
        bin_minutes=sim.scenario.bin_minutes,
        utilization_timeline=timeline,
        active_units_timeline=active_units,
        latencies_ms=latencies * 1000,
    )


def _workload_report(streams: list) -> WorkloadReport:
    """Summarize one stream, or several streams of one workload name."""
    first = streams[0]
    single = len(streams) == 1
    durations = np.concatenate(
        [np.frombuffer(s.durations, dtype=float) for s in streams]
    )
    p50, p95, p99 = _percentiles(durations)
    realtime = first.workload.kind == "inference"

    dropped: Counter[str] = Counter()
    for stream in streams:
        dropped.update(stream.dropped)
    arrived = sum(s.arrived for s in streams)
    completed = sum(s.completed for s in streams)
    targets = {s.workload.target_ms for s in streams}

    return WorkloadReport(
        name=first.name if single else first.workload.name,
        kind=first.workload.kind,
        city=first.city if single else "",
        department=first.department if single else "",
        district=first.district if single else "",
        category=first.category if single else "",
        arrived=arrived,
        completed=completed,
        dropped=dict(sorted(dropped.items())),
        in_progress=arrived - completed - sum(dropped.values()),
        p50_s=p50,
        p95_s=p95,
        p99_s=p99,
        target_ms=first.workload.target_ms if realtime and len(targets) == 1 else None,
        within_target=(
            _share(sum(s.within_target for s in streams), arrived) if realtime else None
        ),
        compressed=(
            _share(sum(s.compressed for s in streams), completed) if realtime else None
        ),
    )


def _district_reports(streams) -> list[DistrictReport]:
    grouped: dict[str, list] = {}
    for stream in streams:
        grouped.setdefault(f"{stream.city}/{stream.district}", []).append(stream)
    reports = []
    for name, members in sorted(grouped.items()):
        latencies = np.concatenate(
            [np.frombuffer(s.durations, dtype=float) for s in members]
        )
        network = np.concatenate(
            [np.frombuffer(s.network, dtype=float) for s in members]
        )
        reports.append(
            DistrictReport(
                name=name,
                requests=sum(s.arrived for s in members),
                p99_ms=_percentiles(latencies, 1000)[2],
                network_p99_ms=_percentiles(network, 1000)[2],
            )
        )
    return reports
