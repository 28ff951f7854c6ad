"""Compute pools at run time: queues, units, and the busy and active time.

A pool has ``count`` identical units; each runs one task at a time (a training
job may take several units at once). Real-time tasks wait in their own queue,
which is served first. A batch task starts only if the batch tasks then use at
most ``batch_share`` of the active units, so long training jobs cannot take
every unit from real-time inference. Units are interchangeable, so
the pool keeps counts, not unit objects.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import TYPE_CHECKING

import simpy

from .specs import PoolSpec

if TYPE_CHECKING:
    from .tasks import Task
    from .topology import SiteSpec

# Indexes into the shared tally of top-level requests by state.
IN_TRANSIT, QUEUED, RUNNING = 0, 1, 2


class Pool:
    """One pool of units at one site during one run."""

    def __init__(
        self,
        env: simpy.Environment,
        site: SiteSpec,
        spec: PoolSpec,
        tally: list[int],
        *,
        batch_share: float = 0.75,
        queue_limit: int = 10_000,
    ) -> None:
        self.env = env
        self.site = site
        self.spec = spec
        self.name = f"{site.name}/{spec.name}"
        self.kind = spec.kind
        self.speed = spec.speed
        self.memory_gb = spec.memory_gb
        self.count = spec.count
        self.active = spec.count
        self.starting = 0  # units started by the autoscaler, not yet ready
        self.startup_s = math.inf  # set by an autoscaler that may start units
        self.busy = 0
        self.batch_busy = 0
        self.batch_share = batch_share
        self.queue_limit = queue_limit
        self.tally = tally
        self.trace: list[tuple[float, str, str, str]] | None = None

        self.realtime_queue: deque[Task] = deque()
        self.batch_queue: deque[Task] = deque()
        self.realtime_backlog_s = 0.0
        self.batch_backlog_s = 0.0
        self._finish_times: list[float] = []

        self.busy_s = 0.0  # unit-seconds
        self.active_s = 0.0  # unit-seconds, including units still starting
        self.started_tasks = 0
        self.interval_max_busy = 0
        self._last = 0.0
        self.bin_busy: list[float] = []  # unit-seconds per time bin
        self.bin_active: list[float] = []
        self._sampled_busy = 0.0
        self._sampled_active = 0.0

    # Accounting -----------------------------------------------------------

    def advance(self) -> None:
        """Add busy and active unit-seconds up to now."""
        now = self.env.now
        elapsed = now - self._last
        if elapsed > 0:
            self.busy_s += elapsed * self.busy
            self.active_s += elapsed * (self.active + self.starting)
            self._last = now

    def sample(self) -> None:
        """Close a time bin: record the busy and active unit-seconds since the last."""
        self.advance()
        self.bin_busy.append(self.busy_s - self._sampled_busy)
        self.bin_active.append(self.active_s - self._sampled_active)
        self._sampled_busy = self.busy_s
        self._sampled_active = self.active_s

    @property
    def free(self) -> int:
        return self.active - self.busy

    @property
    def queued(self) -> int:
        return len(self.realtime_queue) + len(self.batch_queue)

    def batch_limit(self) -> int:
        return math.ceil(self.batch_share * self.active - 1e-9)

    # Estimates for placement policies ----------------------------------------

    def estimate_wait_s(self, realtime: bool) -> float:
        """Estimate how long a task submitted now would wait before it starts."""
        now = self.env.now
        if self.active <= 0:
            backlog = self.realtime_backlog_s if realtime else self.batch_backlog_s
            return self.startup_s + backlog
        next_free = (self._finish_times[0] - now) if self._finish_times else 0.0
        if realtime:
            if self.free > 0 and not self.realtime_queue:
                return 0.0
            return next_free + self.realtime_backlog_s / self.active
        limit = max(1, self.batch_limit())
        if self.free > 0 and self.batch_busy < limit and not self.batch_queue:
            return 0.0
        return next_free + self.batch_backlog_s / limit

    # Tasks ----------------------------------------------------------------

    def submit(self, task: Task) -> None:
        """Start the task now, or queue it; drop it if the real-time queue is full."""
        task.enqueued = self.env.now
        if self.trace is not None:
            self.trace.append((self.env.now, "submit", task.label, self.name))
        if task.realtime:
            if self.free > 0 and not self.realtime_queue:
                self._start(task)
            elif len(self.realtime_queue) >= self.queue_limit:
                task.stream.drop(task, "queue_full")
            else:
                self.realtime_queue.append(task)
                self.realtime_backlog_s += task.service_s
                if task.top:
                    self.tally[QUEUED] += 1
            return
        self.batch_queue.append(task)
        self.batch_backlog_s += task.service_s * task.units
        if task.top:
            self.tally[QUEUED] += 1
        self._dispatch()

    def _start(self, task: Task) -> None:
        self.advance()
        self.busy += task.units
        if self.busy > self.interval_max_busy:
            self.interval_max_busy = self.busy
        if not task.realtime:
            self.batch_busy += task.units
        self.started_tasks += 1
        if task.top:
            self.tally[RUNNING] += 1
        finish = self.env.now + task.service_s
        heapq.heappush(self._finish_times, finish)
        task.started = self.env.now
        if self.trace is not None:
            self.trace.append((self.env.now, "start", task.label, self.name))
        timer = self.env.timeout(task.service_s, task)
        timer.callbacks.append(self._on_finish)

    def _on_finish(self, event: simpy.Event) -> None:
        task: Task = event.value
        self.advance()
        heapq.heappop(self._finish_times)
        self.busy -= task.units
        if not task.realtime:
            self.batch_busy -= task.units
        if task.top:
            self.tally[RUNNING] -= 1
        if self.trace is not None:
            self.trace.append((self.env.now, "finish", task.label, self.name))
        task.stream.finish(task, self)
        self._dispatch()

    def _dispatch(self) -> None:
        """Start queued tasks while units are free: real-time first, then batch."""
        now = self.env.now
        queue = self.realtime_queue
        while queue and self.free > 0:
            task = queue.popleft()
            self.realtime_backlog_s -= task.service_s
            if task.top:
                self.tally[QUEUED] -= 1
            if now - task.enqueued > task.max_wait_s:
                task.stream.drop(task, "timed_out")
                continue
            self._start(task)
        if not queue:
            self.realtime_backlog_s = 0.0  # clear rounding drift

        batch = self.batch_queue
        limit = self.batch_limit()
        while batch and self.free > 0:
            task = batch[0]
            if task.units > self.free or self.batch_busy + task.units > max(
                limit, task.units
            ):
                break
            batch.popleft()
            self.batch_backlog_s -= task.service_s * task.units
            if task.top:
                self.tally[QUEUED] -= 1
            self._start(task)

    # Autoscaling ------------------------------------------------------------

    def add_units(self, units: int, startup_s: float) -> None:
        """Start ``units`` stopped units; they take tasks after ``startup_s``."""
        units = min(units, self.count - self.active - self.starting)
        if units <= 0:
            return
        self.advance()
        self.starting += units
        timer = self.env.timeout(startup_s, units)
        timer.callbacks.append(self._on_started)

    def _on_started(self, event: simpy.Event) -> None:
        self.advance()
        self.starting -= event.value
        self.active += event.value
        self._dispatch()

    def stop_units(self, units: int, minimum: int) -> None:
        """Stop up to ``units`` idle units, keeping at least ``minimum`` active."""
        units = min(units, self.free, self.active - minimum)
        if units <= 0:
            return
        self.advance()
        self.active -= units
