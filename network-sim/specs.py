"""Scenario specifications: the validated, immutable form of a scenario file.

Units are fixed by field names: ``_ms`` milliseconds, ``_s`` seconds, ``_hours``
hours, ``_gb`` gigabytes (10**9 bytes), ``_kb`` kilobytes (10**3 bytes), ``_mb``
megabytes, ``_gbps`` gigabits per second, ``_w`` watts. Money has no unit of its
own: ``cost_per_hour`` and ``energy_price_per_kwh`` use the scenario's currency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WORKLOAD_KINDS = ("inference", "training", "transfer", "federated")


@dataclass(frozen=True)
class PoolSpec:
    """A set of identical compute units (CPU, GPU or NPU instances) at one site.

    Each unit runs one task at a time. ``cost_per_hour`` is paid for every unit
    for the whole run (owned or leased hardware); ``active_cost_per_hour`` only
    while a unit is started (rented instances). ``min_active`` below ``count``
    lets an autoscaling policy stop idle units, which then draw no power.
    ``name`` defaults to ``kind`` and must be unique within a site.
    """

    kind: str
    count: int
    name: str = ""
    speed: float = 1.0
    memory_gb: float = 16.0
    power_busy_w: float = 300.0
    power_idle_w: float = 60.0
    cost_per_hour: float = 1.0
    active_cost_per_hour: float = 0.0
    min_active: int | None = None

    @property
    def scalable(self) -> bool:
        return self.min_active is not None and self.min_active < self.count


@dataclass(frozen=True)
class WorkloadSpec:
    """One stream of requests or jobs that a department sends.

    ``work_s`` maps a unit kind to the service time in seconds on a unit of speed
    1.0; the kinds it names are the only kinds the work can run on. Arrivals
    follow a Poisson process whose hourly rate is ``rate_per_hour`` times the
    daily pattern's multiplier for that hour, or are the fixed times ``at_s``.
    """

    name: str
    kind: str
    rate_per_hour: float = 0.0
    pattern: str = "flat"
    at_s: tuple[float, ...] | None = None
    work_s: dict[str, float] = field(default_factory=dict)
    work_cv: float = 0.0
    memory_gb: float = 0.0
    units: int = 1
    # inference
    target_ms: float = 100.0
    max_wait_ms: float = 1000.0
    payload_kb: float = 0.0
    response_kb: float = 0.0
    # training: data sent from the department to the compute site first
    dataset_gb: float = 0.0
    # transfer
    size_gb: float = 0.0
    size_cv: float = 0.0
    destination: str = "hub"
    # federated
    rounds: int = 1
    partners: tuple[str, ...] = ()
    model_mb: float = 0.0


@dataclass(frozen=True)
class DepartmentSpec:
    """A department attached to a district.

    In the isolated architecture it computes only on its own ``local_pools``.
    """

    name: str
    district: str
    category: str
    workloads: tuple[WorkloadSpec, ...]
    local_pools: tuple[PoolSpec, ...] = ()
    scale: float = 1.0


@dataclass(frozen=True)
class DistrictSpec:
    """A district with its edge node and the link from the edge node to the hub.

    ``latency_ms`` values are round-trip times. Departments reach the district's
    edge node over an access link of ``access_latency_ms`` and
    ``access_bandwidth_gbps``.
    """

    name: str
    latency_ms: float
    bandwidth_gbps: float
    access_latency_ms: float = 2.0
    access_bandwidth_gbps: float = 1.0
    edge_pools: tuple[PoolSpec, ...] = ()
    edge_pue: float = 1.5
    edge_site_cost_per_hour: float = 0.0


@dataclass(frozen=True)
class CitySpec:
    """One city: its hub, districts and departments.

    A site's ``site_cost_per_hour`` (rooms, cooling, maintenance contracts) is
    paid when the architecture uses the site's compute; PUE (power usage
    effectiveness) multiplies the site's IT energy.
    """

    name: str
    hub_pools: tuple[PoolSpec, ...]
    districts: tuple[DistrictSpec, ...]
    departments: tuple[DepartmentSpec, ...]
    hub_pue: float = 1.3
    department_pue: float = 1.8
    hub_site_cost_per_hour: float = 0.0
    department_site_cost_per_hour: float = 0.0


@dataclass(frozen=True)
class LinkSpec:
    """An extra link between two sites named ``city/site`` (hub, district or
    department)."""

    a: str
    b: str
    latency_ms: float
    bandwidth_gbps: float


@dataclass(frozen=True)
class SurgeSpec:
    """A period that multiplies the arrival rate of some departments' workloads."""

    name: str
    start_hour: float
    hours: float
    multiplier: float
    categories: tuple[str, ...]
    kinds: tuple[str, ...] = ("inference",)
    cities: tuple[str, ...] = ()


@dataclass(frozen=True)
class AutoscalingSpec:
    """Parameters of the queue-length autoscaler for pools with ``min_active``."""

    interval_s: float = 60.0
    scale_up_queue: float = 2.0
    scale_down_idle_s: float = 900.0
    startup_s: float = 120.0


@dataclass(frozen=True)
class CompressionSpec:
    """Model compression for inference served at edge nodes.

    ``speedup`` divides the service time and ``memory_factor`` multiplies the
    model's memory; ``accuracy_cost_pct`` is the accuracy lost, in percentage
    points, for each request served compressed.
    """

    enabled: bool = False
    speedup: float = 2.0
    accuracy_cost_pct: float = 1.0
    memory_factor: float = 0.5


@dataclass(frozen=True)
class Scenario:
    """A validated scenario: topology, workloads and simulation settings."""

    name: str
    description: str
    cities: tuple[CitySpec, ...]
    patterns: dict[str, tuple[float, ...]]
    links: tuple[LinkSpec, ...] = ()
    surges: tuple[SurgeSpec, ...] = ()
    autoscaling: AutoscalingSpec = AutoscalingSpec()
    compression: CompressionSpec = CompressionSpec()
    hours: float = 24.0
    seed: int = 1
    start_hour: float = 0.0
    energy_price_per_kwh: float = 0.15
    bin_minutes: float = 15.0

    def city(self, name: str) -> CitySpec:
        for city in self.cities:
            if city.name == name:
                return city
        raise KeyError(name)
