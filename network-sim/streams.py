"""Workload streams: how each kind of request moves through the network and
pools, and what the run records about it.

A top-level request is an inference request, training job, transfer or
federated job. Each ends in exactly one of three ways: it completes, it is
dropped with a reason, or it is still in progress (in transit, queued or
running) when the run ends. The shared tally counts the requests in progress
by state.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np
import simpy

from .pools import IN_TRANSIT, RUNNING, Pool
from .tasks import Task

if TYPE_CHECKING:
    from .engine import Simulation
    from .specs import WorkloadSpec

DROP_NO_POOL = "no_eligible_pool"


class Stream:
    """One workload of one department, with its outcomes."""

    def __init__(
        self,
        sim: Simulation,
        workload: WorkloadSpec,
        city: str,
        department: str,
        district: str,
        category: str,
        arrivals: np.ndarray,
        factors: np.ndarray,
    ) -> None:
        self.sim = sim
        self.workload = workload
        self.city = city
        self.department = department
        self.district = district
        self.category = category
        self.origin = f"{city}/{department}"
        self.arrivals = arrivals
        self.factors = factors.tolist()
        self.arrived = 0
        self.completed = 0
        self.dropped: Counter[str] = Counter()
        self.durations = array("d")  # seconds: response, turnaround or transfer time
        self.network = array("d")  # seconds of network time per completed request
        self.within_target = 0
        self.compressed = 0

    @property
    def name(self) -> str:
        return f"{self.origin}/{self.workload.name}"

    def arrive(self, index: int) -> None:
        raise NotImplementedError

    def finish(self, task: Task, pool: Pool) -> None:
        raise NotImplementedError

    def drop(self, task: Task | None, reason: str) -> None:
        self.dropped[reason] += 1
        trace = self.sim.trace
        if trace is not None and task is not None:
            trace.append((self.sim.env.now, f"drop:{reason}", task.label, task.origin))


class InferenceStream(Stream):
    """Real-time requests: out over the network, queue, compute, response back."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._legs: dict[str, tuple[float, float]] = {}

    def arrive(self, index: int) -> None:
        sim = self.sim
        self.arrived += 1
        task = Task(
            self,
            self.workload,
            self.origin,
            self.city,
            self.district,
            sim.env.now,
            self.factors[index],
            index=index,
        )
        if sim.trace is not None:
            sim.trace.append((sim.env.now, "arrive", task.label, self.origin))
        pool = sim.placement.place(task)
        if pool is None:
            self.drop(task, DROP_NO_POOL)
            return

        task.service_s = task.work_on(pool)
        legs = self._legs.get(pool.name)
        if legs is None:
            legs = self._legs[pool.name] = self._network_legs(pool)
        outbound, task.return_s = legs
        task.network_s = outbound + task.return_s
        if outbound > 0:
            sim.tally[IN_TRANSIT] += 1
            timer = sim.env.timeout(outbound, (task, pool))
            timer.callbacks.append(self._reach_pool)
        else:
            pool.submit(task)

    def _network_legs(self, pool: Pool) -> tuple[float, float]:
        """Return the request's and the response's network time to this pool."""
        route = self.sim.cluster.route(self.origin, pool.site.name)
        half_rtt = route.rtt_s / 2
        outbound = half_rtt + route.serialization_s(self.workload.payload_kb * 1e3)
        response = half_rtt + route.serialization_s(self.workload.response_kb * 1e3)
        return outbound, response

    def _reach_pool(self, event: simpy.Event) -> None:
        task, pool = event.value
        self.sim.tally[IN_TRANSIT] -= 1
        pool.submit(task)

    def finish(self, task: Task, pool: Pool) -> None:
        # The response leg is fixed once the pool is chosen, so the request
        # counts as complete when its computation ends.
        response_s = self.sim.env.now + task.return_s - task.created
        self.completed += 1
        self.durations.append(response_s)
        self.network.append(task.network_s)
        if response_s <= task.workload.target_ms / 1000 + 1e-12:
            self.within_target += 1
        if task.compressed:
            self.compressed += 1


class TrainingStream(Stream):
    """Batch jobs: the dataset travels to the compute site, then the job runs."""

    def arrive(self, index: int) -> None:
        sim = self.sim
        self.arrived += 1
        task = Task(
            self,
            self.workload,
            self.origin,
            self.city,
            self.district,
            sim.env.now,
            self.factors[index],
            index=index,
        )
        if sim.trace is not None:
            sim.trace.append((sim.env.now, "arrive", task.label, self.origin))
        pool = sim.placement.place(task)
        if pool is None:
            self.drop(task, DROP_NO_POOL)
            return

        task.service_s = task.work_on(pool)
        route = sim.cluster.route(self.origin, pool.site.name)
        size = self.workload.dataset_gb * 1e9
        if size > 0 and route.links:
            sim.tally[IN_TRANSIT] += 1

            def dataset_sent() -> None:
                sim.tally[IN_TRANSIT] -= 1
                pool.submit(task)

            sim.network.send(route, size, dataset_sent)
        else:
            pool.submit(task)

    def finish(self, task: Task, pool: Pool) -> None:
        turnaround = self.sim.env.now - task.created
        self.completed += 1
        self.durations.append(turnaround)
        self.network.append(task.enqueued - task.created)


class TransferStream(Stream):
    """Data exchanges: a bulk flow from the department to a destination site."""

    def __init__(self, *args, destination: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.destination = destination

    def arrive(self, index: int) -> None:
        sim = self.sim
        self.arrived += 1
        created = sim.env.now
        route = sim.cluster.route(self.origin, self.destination)
        sim.tally[IN_TRANSIT] += 1
        label = f"{self.name}#{index}"
        if sim.trace is not None:
            sim.trace.append((created, "send", label, self.destination))

        def delivered() -> None:
            sim.tally[IN_TRANSIT] -= 1
            self.completed += 1
            elapsed = sim.env.now - created
            self.durations.append(elapsed)
            self.network.append(elapsed)
            if sim.trace is not None:
                sim.trace.append((sim.env.now, "delivered", label, self.destination))

        sim.network.send(
            route, self.workload.size_gb * 1e9 * self.factors[index], delivered
        )

    def finish(self, task: Task, pool: Pool) -> None:
        raise AssertionError("transfers run no tasks")


class FederatedStream(Stream):
    """Federated jobs: each round sends the model to every participant, trains
    there, returns the update and waits for all participants."""

    def __init__(self, *args, partners: list[tuple[str, str, str]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.partners = partners  # (city, department, district) of each partner
        self.round_times = array("d")

    def arrive(self, index: int) -> None:
        sim = self.sim
        self.arrived += 1
        sim.tally[RUNNING] += 1
        sim.env.process(self._job(index, sim.env.now, self.factors[index]))

    def _job(self, index: int, created: float, factor: float) -> Generator:
        sim = self.sim
        job = Task(
            self,
            self.workload,
            self.origin,
            self.city,
            self.district,
            created,
            factor,
            index=index,
        )
        if sim.trace is not None:
            sim.trace.append((created, "arrive", job.label, self.origin))
        participants = [(self.city, self.department, self.district), *self.partners]
        coordinator = sim.placement.place(job)
        for number in range(self.workload.rounds):
            if coordinator is None:
                break
            round_start = sim.env.now
            rounds = [
                sim.env.process(
                    self._client(
                        job.label, number, coordinator, city, dept, district, factor
                    )
                )
                for city, dept, district in participants
            ]
            results = yield sim.env.all_of(rounds)
            if not all(results.values()):
                coordinator = None
                break
            self.round_times.append(sim.env.now - round_start)
            if sim.trace is not None:
                sim.trace.append((sim.env.now, "round", job.label, coordinator.name))

        sim.tally[RUNNING] -= 1
        if coordinator is None:
            self.drop(job, DROP_NO_POOL)
            return
        self.completed += 1
        self.durations.append(sim.env.now - created)
        if sim.trace is not None:
            sim.trace.append((sim.env.now, "finish", job.label, coordinator.name))

    def _client(
        self,
        job: str,
        number: int,
        coordinator: Pool,
        city: str,
        department: str,
        district: str,
        factor: float,
    ) -> Generator:
        sim = self.sim
        origin = f"{city}/{department}"
        owner = _RoundOwner(sim.env, f"{job}/round{number}/{origin}")
        task = Task(
            owner, self.workload, origin, city, district, sim.env.now, factor, top=False
        )
        pool = sim.placement.place(task)
        if pool is None:
            return False
        task.service_s = task.work_on(pool)
        route = sim.cluster.route(coordinator.site.name, pool.site.name)
        size = self.workload.model_mb * 1e6

        yield _send(sim, route, size)
        pool.submit(task)
        yield task.stream.done
        yield _send(sim, route, size)
        return True

    def finish(self, task: Task, pool: Pool) -> None:
        raise AssertionError("federated rounds finish through their own owner")


class _RoundOwner:
    """Owner of one participant's local training in a federated round."""

    def __init__(self, env: simpy.Environment, name: str) -> None:
        self.done = env.event()
        self.name = name

    def finish(self, task: Task, pool: Pool) -> None:
        self.done.succeed()

    def drop(self, task: Task, reason: str) -> None:
        self.done.fail(RuntimeError(reason))


def _send(sim: Simulation, route, size: float) -> simpy.Event:
    """Return an event that fires when a bulk transfer of ``size`` bytes completes."""
    event = sim.env.event()
    sim.network.send(route, size, event.succeed)
    return event
