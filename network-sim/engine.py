"""The simulation engine: builds one run from a scenario and an architecture.

The same seed gives the same arrivals and work sizes in every architecture,
because each workload draws from its own generator seeded by the scenario
seed and the workload's full name. Events run in SimPy's order, which is
deterministic, so a run with the same inputs gives the same result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator

import numpy as np
import simpy

from .arrivals import SECONDS_PER_HOUR, arrival_times, stream_seed, work_factors
from .cluster import Cluster
from .fields import ScenarioError
from .metrics import RunResult, build_result
from .network import FlowNetwork
from .policies import ARCHITECTURE_NAMES, Architecture, default_architectures
from .scenario import resolve_site
from .specs import Scenario, SurgeSpec
from .streams import (
    FederatedStream,
    InferenceStream,
    Stream,
    TrainingStream,
    TransferStream,
)
from .topology import Topology

logger = logging.getLogger("citymesh.netsim")

ProgressCallback = Callable[[float, float], None]

_STREAM_CLASSES = {
    "inference": InferenceStream,
    "training": TrainingStream,
    "transfer": TransferStream,
    "federated": FederatedStream,
}


def resolve_architecture(
    scenario: Scenario, architecture: Architecture | str
) -> Architecture:
    """Return the architecture object for a name in ARCHITECTURE_NAMES."""
    if isinstance(architecture, Architecture):
        return architecture
    for candidate in default_architectures(scenario):
        if candidate.name == architecture:
            return candidate
    raise ScenarioError(
        f"unknown architecture {architecture!r}; "
        f"use one of {', '.join(ARCHITECTURE_NAMES)}"
    )


def check_hours(hours: float | None) -> None:
    """Raise ScenarioError unless ``hours`` is None or a positive number."""
    if hours is not None and not hours > 0:
        raise ScenarioError(f"hours must be greater than 0, got {hours!r}")


class Simulation:
    """One run: a SimPy environment with the pools, network and streams.

    With ``trace=True``, ``trace`` lists ``(time_s, event, request, site)`` for
    every arrival, submit, start, finish, drop, transfer and federated round.
    """

    def __init__(
        self,
        scenario: Scenario,
        architecture: Architecture,
        *,
        seed: int | None = None,
        hours: float | None = None,
        trace: bool = False,
    ) -> None:
        check_hours(hours)
        self.scenario = scenario
        self.architecture = architecture
        self.seed = scenario.seed if seed is None else seed
        self.hours = scenario.hours if hours is None else hours
        self.horizon_s = self.hours * SECONDS_PER_HOUR
        self.env = simpy.Environment()
        self.tally = [0, 0, 0]
        self.events = 0
        # (time_s, event, request, site or pool) for every step of every request
        self.trace: list[tuple[float, str, str, str]] | None = [] if trace else None

        self.topology = Topology(scenario)
        self.placement = architecture.placement
        self.cluster = Cluster(
            self.env,
            self.topology,
            self.placement.sites(self.topology),
            self.tally,
            self.placement.batch_share,
            self.placement.queue_limit,
        )
        self.placement.bind(self.cluster)
        for pool in self.cluster.pools:
            pool.trace = self.trace
        self.network = FlowNetwork(self.env)
        self.streams = self._build_streams()
        if architecture.scaler is not None:
            architecture.scaler.start(self.env, self.cluster.pools)
        self.env.process(self._arrivals())
        self.bin_s = scenario.bin_minutes * 60
        self.env.process(self._sample_bins())

    def _surges_for(self, city: str, category: str, kind: str) -> list[SurgeSpec]:
        return [
            surge
            for surge in self.scenario.surges
            if category in surge.categories
            and kind in surge.kinds
            and (not surge.cities or city in surge.cities)
        ]

    def _build_streams(self) -> list[Stream]:
        scenario = self.scenario
        departments = {
            f"{city.name}/{dept.name}": (city.name, dept.name, dept.district)
            for city in scenario.cities
            for dept in city.departments
        }
        streams: list[Stream] = []
        for city in scenario.cities:
            for dept in city.departments:
                for workload in dept.workloads:
                    name = f"{city.name}/{dept.name}/{workload.name}"
                    rng = stream_seed(self.seed, name)
                    arrivals = arrival_times(
                        workload,
                        scenario.patterns[workload.pattern],
                        self._surges_for(city.name, dept.category, workload.kind),
                        self.horizon_s,
                        scenario.start_hour,
                        rng,
                    )
                    cv = (
                        workload.size_cv
                        if workload.kind == "transfer"
                        else workload.work_cv
                    )
                    factors = work_factors(len(arrivals), cv, rng)
                    extra = {}
                    origin = f"{city.name}/{dept.name}"
                    if workload.kind == "transfer":
                        destination = resolve_site(
                            workload.destination, city.name, scenario
                        )
                        self.topology.route(
                            origin, destination
                        )  # fail early if unreachable
                        extra["destination"] = destination
                    if workload.kind == "federated":
                        partners = []
                        for partner in workload.partners:
                            full = (
                                partner if "/" in partner else f"{city.name}/{partner}"
                            )
                            self.topology.route(origin, full)
                            partners.append(departments[full])
                        extra["partners"] = partners
                    stream_class = _STREAM_CLASSES[workload.kind]
                    streams.append(
                        stream_class(
                            self,
                            workload,
                            city.name,
                            dept.name,
                            dept.district,
                            dept.category,
                            arrivals,
                            factors,
                            **extra,
                        )
                    )
        return streams

    def _arrivals(self) -> Generator:
        """Feed every stream's arrivals, merged in time order, into the model."""
        times = [stream.arrivals for stream in self.streams]
        if not any(len(t) for t in times):
            return
        all_times = np.concatenate(times)
        owners = np.concatenate(
            [np.full(len(t), i, dtype=np.int64) for i, t in enumerate(times)]
        )
        indexes = np.concatenate([np.arange(len(t)) for t in times])
        order = np.argsort(all_times, kind="stable")
        handlers = [stream.arrive for stream in self.streams]

        env = self.env
        for at, owner, index in zip(
            all_times[order].tolist(),
            owners[order].tolist(),
            indexes[order].tolist(),
            strict=True,
        ):
            delay = at - env.now
            if delay > 0:
                yield env.timeout(delay)
            handlers[owner](index)

    def _sample_bins(self) -> Generator:
        """Close each full time bin of the utilization timeline."""
        bins = int(self.horizon_s // self.bin_s)
        if bins * self.bin_s >= self.horizon_s:
            bins -= 1  # the run's end closes the last bin
        for _ in range(bins):
            yield self.env.timeout(self.bin_s)
            for pool in self.cluster.pools:
                pool.sample()

    def run(self, on_progress: ProgressCallback | None = None) -> RunResult:
        """Run to the horizon and return the result.

        ``on_progress(now_s, horizon_s)`` is called about 200 times. Events at
        exactly the horizon do not run.
        """
        env = self.env
        horizon = self.horizon_s
        step = env.step
        peek = env.peek
        report_every = horizon / 200
        next_report = report_every
        events = 0

        logger.info(
            "run started: scenario %s, architecture %s, seed %s, %s h",
            self.scenario.name,
            self.architecture.name,
            self.seed,
            self.hours,
        )
        started = time.perf_counter()
        # Step by hand, not env.run(until=...), to count events and report progress.
        while True:
            now = peek()
            if now >= horizon:
                break
            if on_progress is not None and now >= next_report:
                on_progress(now, horizon)
                next_report = now + report_every
            step()
            events += 1
        env.run(until=horizon)  # no event is left before the horizon: this sets now
        for pool in self.cluster.pools:
            pool.sample()
        wall_s = time.perf_counter() - started
        self.events = events

        if on_progress is not None:
            on_progress(horizon, horizon)
        logger.info(
            "run finished: architecture %s, %s events in %.2f s",
            self.architecture.name,
            events,
            wall_s,
        )
        return build_result(self, wall_s)


def simulate(
    scenario: Scenario,
    architecture: Architecture | str = "hub_edge",
    *,
    seed: int | None = None,
    hours: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Run one architecture on a scenario; ``seed`` and ``hours`` override the file."""
    chosen = resolve_architecture(scenario, architecture)
    return Simulation(scenario, chosen, seed=seed, hours=hours).run(on_progress)
